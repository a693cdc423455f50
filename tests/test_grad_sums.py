"""A training batch norm's backward sums stored by the dgrad of the conv that reads its output
(norm_fusion.GradSums, nn.fusion.link_bn_grad_sums): the conv's epilogue adds sum(g') and
sum(g' * xhat) over each tile it just wrote, so the batch norm's backward skips its reduction
pass over g and x. The sums must be those of the reduction pass (float64 reference), and the
whole backward the same as without them."""

import pytest
import torch
from helpers import (
    DEVICE,
    DGRAD_CASES,
    assert_close,
    assert_same_step,
    f64,
    full_width_step,
    randn,
    training_step,
)

from tritoncnn.kernels import conv as K
from tritoncnn.kernels import depthwise as DW
from tritoncnn.kernels import norm, norm_fusion
from tritoncnn.kernels.elementwise import ACT_NONE, ACT_RELU, ACT_RELU6

EPS = 1e-5


def _bn(x: torch.Tensor, act: int, affine: bool) -> norm_fusion.PendingNorm:
    """x's batch statistics and random affine parameters, as a training forward keeps them."""
    c = x.shape[1]
    w = randn(c, seed=11) if affine else None
    b = randn(c, seed=12) * 0.5 if affine else None
    _, mean, invstd = norm.batch_norm_forward_train(x, w, b, None, None, None, 0.1, EPS, act=act)
    return norm_fusion.PendingNorm(mean, invstd, w, b, act, 0.0)


def _reference_sums(g: torch.Tensor, x: torch.Tensor, bn: norm_fusion.PendingNorm):
    """(sum over N,H,W of g', of g' * xhat) in float64, g' = g * act'(z) (torch's kinks)."""
    xhat = (f64(x) - f64(bn.mean)[None, :, None, None]) * f64(bn.invstd)[None, :, None, None]
    w = f64(bn.weight) if bn.weight is not None else torch.ones(x.shape[1], dtype=torch.float64)
    b = f64(bn.bias) if bn.bias is not None else torch.zeros(x.shape[1], dtype=torch.float64)
    z = xhat * w[None, :, None, None] + b[None, :, None, None]
    g = f64(g)
    if bn.act == ACT_RELU:
        g = torch.where(z > 0, g, 0.0)
    elif bn.act == ACT_RELU6:
        g = torch.where((z > 0) & (z < 6), g, 0.0)
    return g.sum(dim=(0, 2, 3)), (g * xhat).sum(dim=(0, 2, 3))


def _check_sums(sums: norm_fusion.GradSums, g, x, bn, what: str) -> None:
    ref_g, ref_gx = _reference_sums(g, x, bn)
    total = f64(sums.partials).sum(dim=1)
    assert_close(total[0], ref_g, what=f"{what}: sum(g')")
    assert_close(total[1], ref_gx, what=f"{what}: sum(g' * xhat)")


def _check_backward(sums: norm_fusion.GradSums, g, x, bn, what: str) -> None:
    """batch_norm_backward from the sums equals the one with its own reduction pass."""
    args = (g, x, bn.weight, bn.mean, bn.invstd)
    kw = dict(bias=bn.bias, has_bias=bn.bias is not None, act=bn.act)
    ref = norm.batch_norm_backward(*args, **kw)
    out = norm.batch_norm_backward(*args, **kw, sums=sums)
    for name, a, r in zip(("grad_in", "grad_weight", "grad_bias"), out, ref, strict=True):
        if r is None:
            assert a is None, f"{what}: {name} should be None"
        else:
            # fp32 sums in two orders; a 16-bit grad_in moves by an ulp where a mean does
            tol = 2e-5 if a.dtype == torch.float32 else 1e-3
            assert_close(a, r, tol=tol, what=f"{what}: {name}")


@pytest.mark.parametrize("case", DGRAD_CASES, ids=str)
@pytest.mark.parametrize(
    "dtype,act,affine",
    [
        (torch.float32, ACT_RELU, True),
        (torch.float16, ACT_RELU6, True),
        (torch.float32, ACT_NONE, False),
    ],
)
def test_conv_dgrad_stores_bn_sums(case, dtype, act, affine):
    n, c_in, size, c_out, k, s, p, groups = DGRAD_CASES[case]
    x = randn(n, c_in, size, size, dtype=dtype, channels_last=True) * 2 + 0.5  # BN input
    bn = _bn(x, act, affine)
    weight = randn(c_out, c_in // groups, k, k) / (c_in // groups * k * k) ** 0.5
    ho = (size + 2 * p - k) // s + 1
    g_out = randn(n, c_out, ho, ho, dtype=dtype, channels_last=True)
    geo = (x.shape, (s, s), (p, p), (1, 1), groups)
    plain = K.conv2d_dgrad(g_out, weight, *geo)
    dx, sums = K.conv2d_dgrad_grad_sums(g_out, weight, *geo, bn_input=x, bn=bn)
    assert torch.equal(dx, plain), "the input gradient is the plain dgrad's"
    assert sums.partials.shape[::2] == (2, c_in)
    _check_sums(sums, dx, x, bn, case)
    _check_backward(sums, dx, x, bn, case)


@pytest.mark.parametrize(
    "dtype,act,affine",
    [
        (torch.float16, ACT_RELU6, True),
        (torch.bfloat16, ACT_RELU, True),
        (torch.float16, ACT_NONE, False),
    ],
)
def test_pointwise_dgrad_stores_bn_sums(dtype, act, affine, monkeypatch):
    """The persistent pointwise kernel's dgrad (kernels/conv_pointwise.py) stores the sums
    per row tile: 30 rows (two 16-row tiles, the last partial) of 40 channels; its dx is its
    plain dgrad's, and conv2d_dgrad_grad_sums sends a linked 1x1 there when enabled."""
    from tritoncnn.kernels import conv_pointwise as pw

    cfg = pw.PointwiseConfig(16, 32, 4, 2, (4,) * 4, (4,) * 4, (4,) * 4, per_sm_sums=4)
    x = randn(2, 40, 5, 3, dtype=dtype, channels_last=True) * 2 + 0.5  # BN input
    bn = _bn(x, act, affine)
    weight = randn(24, 40, 1, 1).to(dtype) / 40**0.5
    g_out = randn(2, 24, 5, 3, dtype=dtype, channels_last=True)
    plain = torch.full_like(x, float("nan"))
    pw.conv2d_dgrad_pointwise(g_out, weight, plain, cfg)
    dx = torch.full_like(x, float("nan"))
    sums = pw.conv2d_dgrad_pointwise(g_out, weight, dx, cfg, bn, x)
    assert torch.equal(dx, plain), "the input gradient is the plain dgrad's"
    assert sums.partials.shape == (2, 2, 40)
    _check_sums(sums, dx, x, bn, "pointwise")
    _check_backward(sums, dx, x, bn, "pointwise")
    calls = []
    real = pw.conv2d_dgrad_pointwise
    monkeypatch.setattr(pw, "conv2d_dgrad_pointwise", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(pw, "ENABLED", True)
    monkeypatch.setattr(pw, "pick_pointwise_config", lambda c, sums=False: cfg)
    dx2, sums2 = K.conv2d_dgrad_grad_sums(g_out, weight, x.shape, 1, 0, 1, 1, bn_input=x, bn=bn)
    assert calls == [1] and torch.equal(dx2, dx) and torch.equal(sums2.partials, sums.partials)
    with pytest.raises(ValueError, match="bn_input must be a dense NHWC"):
        pw.conv2d_dgrad_pointwise(g_out, weight, dx, cfg, bn, x.contiguous())


@pytest.mark.parametrize("stride,kernel", [(1, "flat"), (1, "rows"), (2, "flat")])
@pytest.mark.parametrize(
    "dtype,act", [(torch.float32, ACT_RELU6), (torch.float16, ACT_NONE), (torch.float16, ACT_RELU)]
)
def test_depthwise_dgrad_stores_bn_sums(stride, kernel, dtype, act):
    """Both depthwise dgrads store the sums: the flat kernel per pixel tile, the rolling-rows
    one (stride 1, the default there) per program's images, summed down its rows."""
    x = randn(3, 20, 7, 6, dtype=dtype, channels_last=True) * 3 + 1
    bn = _bn(x, act, True)
    weight = randn(20, 1, 3, 3).contiguous(memory_format=torch.channels_last)
    ho, wo = (7 - 1) // stride + 1, (6 - 1) // stride + 1
    g_out = randn(3, 20, ho, wo, dtype=dtype, channels_last=True)
    geo = (x.shape, stride, 1, 1)
    # (the rows tile puts 2 images side by side: 2 programs along the 3 images)
    config = DW.pick_config(20, 3 * 7 * 6) if kernel == "flat" else DW.RowsConfig(16, 16, 4, 2)
    plain = DW.depthwise_conv2d_dgrad(g_out, weight, *geo, config=config)
    dx, sums = DW.depthwise_conv2d_dgrad_grad_sums(
        g_out, weight, *geo, bn_input=x, bn=bn, config=config
    )
    assert torch.equal(dx, plain), "the input gradient is the plain dgrad's"
    if kernel == "rows":
        assert sums.partials.shape == (2, 2, 20)
        default, _ = DW.depthwise_conv2d_dgrad_grad_sums(g_out, weight, *geo, bn_input=x, bn=bn)
        assert torch.equal(default, DW.depthwise_conv2d_dgrad(g_out, weight, *geo))
    _check_sums(sums, dx, x, bn, f"depthwise {kernel} stride {stride}")
    _check_backward(sums, dx, x, bn, f"depthwise {kernel} stride {stride}")


def test_grad_sums_accumulate_parameter_grads_and_errors():
    """Parameter gradients add into given tensors as without sums; mismatched inputs fail."""
    x = randn(2, 8, 5, 5, channels_last=True)
    bn = _bn(x, ACT_RELU, True)
    weight = randn(6, 8, 1, 1)
    g_out = randn(2, 6, 5, 5, channels_last=True)
    geo = (x.shape, 1, 0, 1, 1)
    dx, sums = K.conv2d_dgrad_grad_sums(g_out, weight, *geo, bn_input=x, bn=bn)
    gw0, gb0 = randn(8), randn(8)
    args = (dx, x, bn.weight, bn.mean, bn.invstd)
    kw = dict(bias=bn.bias, act=ACT_RELU)
    _, gw, gb = norm.batch_norm_backward(*args, gw0.clone(), gb0.clone(), **kw, sums=sums)
    _, rw, rb = norm.batch_norm_backward(*args, **kw)
    assert_close(gw, gw0 + rw, what="grad_weight +=")
    assert_close(gb, gb0 + rb, what="grad_bias +=")
    with pytest.raises(ValueError, match="batch norm's input"):
        K.conv2d_dgrad_grad_sums(g_out, weight, *geo, bn_input=x[:1], bn=bn)
    with pytest.raises(ValueError, match="batch-norm mean"):
        K.conv2d_dgrad_grad_sums(g_out, weight, *geo, bn_input=x, bn=bn._replace(mean=bn.mean[:4]))
    with pytest.raises(ValueError, match="tile sums"):
        norm.batch_norm_backward(*args, **kw, sums=norm_fusion.grad_sums(3, 5))
    running = (torch.zeros(8, device=DEVICE), torch.ones(8, device=DEVICE))
    with pytest.raises(ValueError, match="batch statistics only"):
        norm._backward(
            dx, x, bn.weight, bn.bias, True, *running, EPS, False, None, None, ACT_NONE, 0.0,
            None, None, sums,
        )  # fmt: skip


# --- models: linked BatchNorm -> conv pairs train as the unlinked model ---------------------

MODELS = {
    # one link per BasicBlock (bn1 -> relu -> conv2)
    "resnet18": (dict(widths=(4, 6, 8, 10)), 8),
    # a t=1 block (dw BN -> project) and two t=6 blocks (expand BN -> dw, dw BN -> project)
    "mobilenetv2": (
        dict(width_mult=0.25, dropout=0.0, inverted_residual_setting=[[1, 8, 1, 1], [6, 8, 2, 2]]),
        5,
    ),
}


def _step(name: str, link: bool, defer: bool = False):
    """The model and its ``training_step`` (fp32)."""
    from tritoncnn import models

    torch.manual_seed(0)
    kw, _ = MODELS[name]
    model = models.build(
        name, num_classes=5, image_size=8, bn_grad_sums=link, bn_into_depthwise=defer, **kw
    )
    return model, training_step(model)


@pytest.mark.parametrize(
    "name,defer", [("resnet18", False), ("mobilenetv2", False), ("mobilenetv2", True)]
)
def test_linked_model_trains_like_the_plain_one(name, defer, monkeypatch):
    used = []
    real = norm._grad_sums_from_tiles
    monkeypatch.setattr(norm, "_grad_sums_from_tiles", lambda *a: used.append(1) or real(*a))
    _, ref = _step(name, link=False, defer=defer)
    assert not used
    model, out = _step(name, link=True, defer=defer)
    links = sum(1 for m in model.modules() if getattr(m, "grad_sums_link", None) is not None)
    assert links == 2 * MODELS[name][1], "each link is held by its BatchNorm and its conv"
    assert len(used) == MODELS[name][1], "every linked BatchNorm took the dgrad's sums"
    assert torch.equal(out[0], ref[0]), "the forward is unchanged"
    assert all(map(torch.equal, out[2], ref[2])), "the forward's buffers are unchanged"
    assert_same_step(out, ref, name)


def test_unlinked_and_unmatched_fall_back():
    """unlink (and unfuse) remove every link; a BatchNorm whose gradient is not the linked
    conv's dgrad output, or that ran in eval, uses its own reduction pass."""
    from tritoncnn.nn.fusion import link_bn_grad_sums, unfuse_bn_activations, unlink_bn_grad_sums

    model, *_ = _step("resnet18", link=True)
    assert unlink_bn_grad_sums(model) == 8 and link_bn_grad_sums(model) == 8
    assert unfuse_bn_activations(model) > 0 and unlink_bn_grad_sums(model) == 0
    block = model.layer1[0]
    link_bn_grad_sums(model)  # nothing: the activation between bn1 and conv2 is unfused now
    assert block.bn1.grad_sums_link is None
    model, *_ = _step("resnet18", link=True)
    block = model.layer1[0]
    link = block.bn1.grad_sums_link
    x = randn(2, block.bn1.num_features, 4, 4, channels_last=True)
    y = block.bn1(x)
    assert link.request(y) is not None and link.request(x) is None
    block.conv2(y)
    block.conv2.backward(randn(2, block.conv2.out_channels, 4, 4, channels_last=True))
    assert link.take(randn(*y.shape, channels_last=True)) is None, "another gradient"
    block.bn1.eval()
    y = block.bn1(x)
    assert link.request(y) is None, "running statistics: no sums"


# --- GPU tier: real shapes, every tile, the tuned path ---------------------------------------

# (n, c_in, size, c_out, kernel, stride, padding, groups): ResNet-18's bn1 -> conv2 (3x3, the
# first and a late stage) and MobileNetV2's dw BN -> projection (1x1) / expand BN -> depthwise
GPU_CONV_SHAPES = [
    (128, 64, 32, 64, 3, 1, 1, 1),
    (128, 256, 8, 256, 3, 1, 1, 1),
    (128, 144, 16, 32, 1, 1, 0, 1),
    (128, 960, 4, 160, 1, 1, 0, 1),
    (64, 64, 17, 48, 3, 2, 1, 1),  # strided: 4 phases, odd size
]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_CONV_SHAPES, ids=str)
def test_gpu_conv_dgrad_bn_sums(shape):
    n, c_in, size, c_out, k, s, p, groups = shape
    dtype = torch.float16
    x = randn(n, c_in, size, size, dtype=dtype, channels_last=True, seed=1) * 2 + 0.5
    bn = _bn(x, ACT_RELU6, True)
    weight = (randn(c_out, c_in // groups, k, k, seed=2) / (c_in * k * k) ** 0.5).to(dtype)
    ho = (size + 2 * p - k) // s + 1
    g_out = randn(n, c_out, ho, ho, dtype=dtype, channels_last=True, seed=3)
    geo = (x.shape, (s, s), (p, p), (1, 1), groups)
    plain = K.conv2d_dgrad(g_out, weight, *geo)
    dx, sums = K.conv2d_dgrad_grad_sums(g_out, weight, *geo, bn_input=x, bn=bn)  # tuned
    assert_close(dx, plain, dtype, what="input gradient")  # the tuner may pick other tiles
    _check_sums(sums, dx, x, bn, str(shape))
    _check_backward(sums, dx, x, bn, str(shape))
    if shape not in GPU_CONV_SHAPES[2:]:  # every tile on a 1x1 and the strided 3x3 only
        return
    for cfg in K.gemm_candidates(n * size * size, c_in, k * k * c_out, 2, 2, k == 1):
        dx, sums = K.conv2d_dgrad_grad_sums(g_out, weight, *geo, bn_input=x, bn=bn, config=cfg)
        _check_sums(sums, dx, x, bn, f"{shape} {cfg}")


@pytest.mark.gpu
@pytest.mark.parametrize("c_in,size,c_out", [(144, 32, 24), (192, 16, 32), (576, 8, 96)])
def test_gpu_pointwise_dgrad_bn_sums(c_in, size, c_out):
    """The pointwise kernel's dgrad with the sums (SUMS_CONFIGS) at MobileNetV2's projections,
    batch 128, fp16: the pointer kernel's input gradient, the float64 sums."""
    from tritoncnn.kernels import conv_pointwise as pw

    x = randn(128, c_in, size, size, dtype=torch.float16, channels_last=True, seed=1) * 2 + 0.5
    bn = _bn(x, ACT_RELU6, True)
    weight = (randn(c_out, c_in, 1, 1, seed=2) / c_in**0.5).to(torch.float16)
    g_out = randn(128, c_out, size, size, dtype=torch.float16, channels_last=True, seed=3)
    plain = K.conv2d_dgrad(g_out, weight, x.shape, 1, 0, 1, 1)
    for cfg in pw.SUMS_CONFIGS:
        dx = torch.full_like(x, float("nan"))
        sums = pw.conv2d_dgrad_pointwise(g_out, weight, dx, cfg, bn, x)
        assert_close(dx, plain, torch.float16, tol=1e-3, what=f"input gradient {cfg}")
        _check_sums(sums, dx, x, bn, f"pointwise {cfg}")
        _check_backward(sums, dx, x, bn, f"pointwise {cfg}")


@pytest.mark.gpu
@pytest.mark.parametrize("c,size,stride", [(144, 32, 2), (384, 8, 1), (960, 4, 1)])
def test_gpu_depthwise_dgrad_bn_sums(c, size, stride):
    x = randn(128, c, size, size, dtype=torch.float16, channels_last=True, seed=1) * 3 + 1
    bn = _bn(x, ACT_RELU6, True)
    weight = randn(c, 1, 3, 3, seed=2).contiguous(memory_format=torch.channels_last)
    ho = (size - 1) // stride + 1
    g_out = randn(128, c, ho, ho, dtype=torch.float16, channels_last=True, seed=3)
    geo = (x.shape, stride, 1, 1)
    flat = DW.pick_config(c, 128 * size * size)
    for config in (None, flat):  # the default (rolling rows at stride 1) and the flat kernel
        dx, sums = DW.depthwise_conv2d_dgrad_grad_sums(
            g_out, weight, *geo, bn_input=x, bn=bn, config=config
        )
        assert torch.equal(dx, DW.depthwise_conv2d_dgrad(g_out, weight, *geo, config=config))
        _check_sums(sums, dx, x, bn, f"depthwise C{c} {size} {config}")
        _check_backward(sums, dx, x, bn, f"depthwise C{c} {size} {config}")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
def test_gpu_linked_model_step(name):
    """Whole-width models, fp32, batch 16 at 32x32: one step linked equals unlinked."""
    ref = full_width_step(name, bn_grad_sums=False)
    assert_same_step(full_width_step(name, bn_grad_sums=True), ref, name)
