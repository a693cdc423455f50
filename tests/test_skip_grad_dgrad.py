"""A residual block's skip gradient added in the dgrad epilogue of its first conv
(conv2d_dgrad(add=...), nn.fusion.add_skip_grads_in_dgrad: ResNet, MobileNetV2), and the
previous block's final ReLU backward applied there too (conv2d_dgrad(relu_out=...),
nn.fusion.fold_block_relu_grads: ResNet): the input gradient equals the conv's own plus the
skip's (masked by the ReLU), against torch in float64, and the models train as with the
separate accumulate and ReLU backward kernels."""

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    DGRAD_CASES,
    assert_close,
    assert_same_step,
    f64,
    full_width_step,
    randn,
    training_step,
)

from tritoncnn import models
from tritoncnn.kernels import conv as K
from tritoncnn.kernels import elementwise as ew
from tritoncnn.kernels import norm, norm_fusion
from tritoncnn.kernels.elementwise import ACT_RELU
from tritoncnn.nn.fusion import (
    add_skip_grads_in_dgrad,
    fold_block_relu_grads,
    separate_skip_grads,
    unfold_block_relu_grads,
)


def _problem(case, dtype, add_channels_last=False, seed=0):
    n, c_in, size, c_out, k, s, p, groups = case
    x_shape = (n, c_in, size, size)
    weight = randn(c_out, c_in // groups, k, k, seed=seed + 1)
    ho = (size + 2 * p - k) // s + 1
    g = randn(n, c_out, ho, ho, dtype=dtype, channels_last=True, seed=seed + 2)
    # the skip gradient in another layout than dx (NCHW): read through its own strides
    add = randn(*x_shape, dtype=dtype, channels_last=add_channels_last, seed=seed + 3)
    xr = torch.zeros(x_shape, dtype=torch.float64, requires_grad=True)
    F.conv2d(xr, f64(weight), None, s, p, 1, groups).backward(f64(g))
    return (g, weight, x_shape, s, p, 1, groups), add, xr.grad + f64(add)


@pytest.mark.parametrize("case", DGRAD_CASES.values(), ids=DGRAD_CASES.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_dgrad_adds_the_skip_gradient(case, dtype):
    args, add, ref = _problem(case, dtype)
    before = add.clone()
    dx = K.conv2d_dgrad(*args, add=add)
    assert dx.dtype == dtype
    assert_close(dx, ref, dtype, what="dgrad + add")
    assert torch.equal(add, before), "add is read only"
    plain = K.conv2d_dgrad(*args)
    assert not torch.equal(dx, plain), "the skip gradient was added"


def test_dgrad_add_into_out_and_in_place():
    """Into a given ``out``, and with ``out`` the add tensor itself (each tile reads its add
    values before it writes them)."""
    args, add, ref = _problem(DGRAD_CASES["3x3_s2_phases"], torch.float32, add_channels_last=True)
    out = torch.empty_like(add)
    assert K.conv2d_dgrad(*args, out=out, add=add) is out
    assert_close(out, ref, what="into out")
    assert K.conv2d_dgrad(*args, out=add, add=add) is add
    assert_close(add, ref, what="in place")


def test_dgrad_grad_sums_cover_the_whole_gradient():
    """With a batch norm's sums requested too, they are the sums of dgrad + add."""
    case = DGRAD_CASES["3x3_flat_k"]
    args, add, ref = _problem(case, torch.float32)
    x = randn(*args[2], channels_last=True, seed=9) * 2 + 1
    w, b = randn(case[1], seed=10), randn(case[1], seed=11)
    _, mean, invstd = norm.batch_norm_forward_train(
        x, w, b, None, None, None, 0.1, 1e-5, act=ACT_RELU
    )
    bn = norm_fusion.PendingNorm(mean, invstd, w, b, ACT_RELU, 0.0)
    dx, sums = K.conv2d_dgrad_grad_sums(*args, bn_input=x, bn=bn, add=add)
    assert_close(dx, ref, what="dgrad + add")
    kw = dict(bias=b, act=ACT_RELU)
    own = norm.batch_norm_backward(dx, x, w, mean, invstd, **kw)
    linked = norm.batch_norm_backward(dx, x, w, mean, invstd, **kw, sums=sums)
    for name, a, r in zip(("grad_in", "grad_weight", "grad_bias"), linked, own, strict=True):
        assert_close(a, r, what=name)


@pytest.mark.parametrize("case", ["3x3_s2_phases", "3x3_flat_k", "1x1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_dgrad_applies_the_input_relu_backward(case, dtype):
    """relu_out: the conv's input as a ReLU wrote it (exact zeros where the ReLU clipped):
    (dgrad + add) * (relu_out > 0), with and without add."""
    args, add, ref = _problem(DGRAD_CASES[case], dtype)
    relu_out = torch.relu(randn(*args[2], dtype=dtype, channels_last=True, seed=5))
    keep = f64(relu_out) > 0
    assert 0 < keep.double().mean() < 1
    dx = K.conv2d_dgrad(*args, add=add, relu_out=relu_out)
    assert_close(dx, torch.where(keep, ref, 0.0), dtype, what="(dgrad + add) * relu'")
    assert torch.equal(dx[~keep.to(dx.device)], torch.zeros_like(dx[~keep.to(dx.device)]))
    own = f64(K.conv2d_dgrad(*args))
    dx = K.conv2d_dgrad(*args, relu_out=relu_out)
    assert_close(dx, torch.where(keep, own, 0.0), dtype, what="dgrad * relu'")


def test_dgrad_add_errors():
    args, add, _ = _problem(DGRAD_CASES["1x1"], torch.float32)
    with pytest.raises(ValueError, match="add"):
        K.conv2d_dgrad(*args, add=add[:1])
    with pytest.raises(ValueError, match="add"):
        K.conv2d_dgrad(*args, add=add.half())
    with pytest.raises(ValueError, match="relu_out"):
        K.conv2d_dgrad(*args, relu_out=add[:, :3])


RESNETS = {"resnet18": dict(widths=(4, 6, 8, 10)), "resnet34": dict(widths=(4, 4, 6, 6))}
# 3 InvertedResidual blocks, the third (stride 1, 8 -> 8) with a skip connection
MOBILENET = dict(
    width_mult=0.25, dropout=0.0, inverted_residual_setting=[[1, 8, 1, 1], [6, 8, 2, 2]]
)
MODELS = {**RESNETS, "mobilenetv2": MOBILENET}


# the reference: skip gradients added and ReLU backward applied by kernels of their own (off
# what models.build defaults to), the forward's add in a kernel of its own
SEPARATE = dict(skip_grad_in_dgrad=False, fuse_residual=False)


def _step(name: str, **options):
    torch.manual_seed(0)
    model = models.build(name, num_classes=5, image_size=8, **options, **MODELS[name])
    return model, training_step(model, evaluate=True)


@pytest.mark.parametrize("name", MODELS)
def test_model_trains_as_with_the_accumulate_kernel(name, monkeypatch):
    calls = []
    accumulate = ew.accumulate_
    monkeypatch.setattr(ew, "accumulate_", lambda *a: calls.append(1) or accumulate(*a))
    _, ref = _step(name, **SEPARATE)
    separate = len(calls)
    model, out = _step(name, skip_grad_in_dgrad=True, fuse_residual=False)
    # every residual block whose first conv is a GEMM conv skips its accumulate kernel (the
    # MobileNetV2's t=1 block starts with a depthwise conv, which still runs one)
    fewer = {"resnet18": 8, "resnet34": 16, "mobilenetv2": 2}[name]
    assert separate - (len(calls) - separate) == fewer, "accumulate kernels left"
    blocks = sum(1 for m in model.modules() if getattr(m, "skip_grad_in_dgrad", False))
    assert blocks == {"resnet18": 8, "resnet34": 16, "mobilenetv2": 3}[name]
    assert_same_step(out, ref, name)
    assert separate_skip_grads(model) == blocks and add_skip_grads_in_dgrad(model) == blocks


def test_with_the_other_fusions():
    """With the forward's add + ReLU in bn2's apply and bn1's backward sums from conv2's
    dgrad too: the backward's skip add and ReLU in the dgrad epilogues still give the step."""
    _, ref = _step("resnet18", **SEPARATE)
    _, out = _step("resnet18", fuse_residual=True, bn_grad_sums=True, relu_grad_in_dgrad=True)
    assert_same_step(out, ref, "resnet18")


@pytest.mark.parametrize("name", RESNETS)
def test_model_trains_as_with_the_relu_backward_kernel(name):
    """Every block but the last leaves its ReLU backward to the next block's conv1 dgrad
    (across stages, stride-2 downsample blocks included)."""
    _, ref = _step(name, **SEPARATE)
    model, out = _step(name, relu_grad_in_dgrad=True, **SEPARATE)
    blocks = [m for m in model.modules() if hasattr(type(m), "relu_grad_by_next")]
    assert [b.relu_grad_by_next for b in blocks] == [True] * (len(blocks) - 1) + [False]
    assert [b.conv1.relu_input_grad for b in blocks] == [False] + [True] * (len(blocks) - 1)
    assert [b.skip_grad_in_dgrad for b in blocks] == [False] + [True] * (len(blocks) - 1)
    assert_same_step(out, ref, name)
    assert unfold_block_relu_grads(model) == len(blocks) - 1
    assert fold_block_relu_grads(model) == len(blocks) - 1
    separate_skip_grads(model)
    assert not any(b.relu_grad_by_next or b.conv1.relu_input_grad for b in blocks)


# --- GPU tier --------------------------------------------------------------------------------


GPU_CASES = {
    "r18_layer1": (128, 64, 32, 64, 3, 1, 1, 1),
    "r18_layer3_down": (128, 128, 16, 256, 3, 2, 1, 1),
    "1x1_s2": (128, 256, 8, 512, 1, 2, 0, 1),
}


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES.values(), ids=GPU_CASES.keys())
def test_gpu_dgrad_adds_the_skip_gradient(case):
    """ResNet-18's first convs of a block at batch 128, fp16 (the tuned tile)."""
    args, add, ref = _problem(case, torch.float16, add_channels_last=True)
    assert_close(K.conv2d_dgrad(*args, add=add), ref, torch.float16, what=str(case))


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES.values(), ids=GPU_CASES.keys())
def test_gpu_dgrad_applies_the_input_relu_backward(case):
    args, add, ref = _problem(case, torch.float16, add_channels_last=True)
    relu_out = torch.relu(randn(*args[2], dtype=torch.float16, channels_last=True, seed=5))
    dx = K.conv2d_dgrad(*args, add=add, relu_out=relu_out)
    assert_close(dx, torch.where(f64(relu_out) > 0, ref, 0.0), torch.float16, what=str(case))


GPU_OPTIONS = {
    "resnet18_skip": ("resnet18", dict(skip_grad_in_dgrad=True)),
    "resnet18_relu": ("resnet18", dict(relu_grad_in_dgrad=True)),
    "resnet18_relu_fused": ("resnet18", dict(relu_grad_in_dgrad=True, fuse_residual=True)),
    "mobilenetv2_skip": ("mobilenetv2", dict(skip_grad_in_dgrad=True)),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name,options", GPU_OPTIONS.values(), ids=GPU_OPTIONS.keys())
def test_gpu_model_step(name, options):
    """Whole-width models, fp32, batch 16 at 32x32: one step equals the one with the
    accumulate and ReLU backward kernels."""
    ref = full_width_step(name, **SEPARATE)
    assert_same_step(full_width_step(name, **{**SEPARATE, **options}), ref, name)
