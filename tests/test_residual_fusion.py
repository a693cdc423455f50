"""A residual block's last BatchNorm adds the skip tensor (and applies the activation after the
add) in its own apply pass (nn.fusion.fuse_residual_adds): the block output equals BN -> add
-> activation, in training and eval, and whole models train as the unfused ones."""

import pytest
import torch
from helpers import (
    DEVICE,
    assert_close,
    assert_same_step,
    f64,
    full_width_step,
    randn,
    training_step,
)

from tritoncnn import models
from tritoncnn.kernels import norm
from tritoncnn.kernels.elementwise import ACT_NONE, ACT_RELU, ACT_RELU6
from tritoncnn.nn.fusion import fuse_residual_adds, unfuse_residual_adds

EPS = 1e-5


def _reference(x, r, mean, invstd, w, b, act, residual_act):
    """act2(act((x - mean) * invstd * w + b) + r) in float64 (ReLU / ReLU6 / none)."""
    acts = {
        ACT_NONE: lambda t: t,
        ACT_RELU: torch.relu,
        ACT_RELU6: lambda t: t.clamp(0, 6),
    }
    shape = (1, -1, 1, 1)
    z = (f64(x) - f64(mean).view(shape)) * f64(invstd).view(shape)
    z = z * f64(w).view(shape) + f64(b).view(shape)
    return acts[residual_act](acts[act](z) + f64(r))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act,residual_act", [(ACT_NONE, ACT_RELU), (ACT_RELU6, ACT_NONE)])
def test_apply_adds_the_residual(dtype, act, residual_act):
    """Training and eval forwards with a residual in another layout (NCHW beside NHWC x)."""
    x = randn(2, 12, 5, 7, dtype=dtype, channels_last=True) * 2 + 1
    r = randn(2, 12, 5, 7, dtype=dtype)  # contiguous NCHW: read through its own strides
    w, b = randn(12) + 1.5, randn(12)
    y, mean, invstd = norm.batch_norm_forward_train(
        x, w, b, None, None, None, 0.1, EPS, act=act, residual=r, residual_act=residual_act
    )
    ref = _reference(x, r, mean, invstd, w, b, act, residual_act)
    assert y.stride() == x.stride(), "the output takes x's layout"
    assert_close(y, ref, dtype, what="training forward")
    plain, _, _ = norm.batch_norm_forward_train(x, w, b, None, None, None, 0.1, EPS, act=act)
    assert not torch.equal(y, plain), "the residual was added"
    rm, rv = randn(12) * 0.1, torch.rand(12, device=DEVICE) + 0.5
    ye = norm.batch_norm_forward_eval(
        x, w, b, rm, rv, EPS, act=act, residual=r, residual_act=residual_act
    )
    ref_e = _reference(x, r, rm, 1 / (rv.double() + EPS).sqrt(), w, b, act, residual_act)
    assert_close(ye, ref_e, dtype, what="eval forward")


def test_residual_errors():
    x = randn(2, 4, 3, 3, channels_last=True)
    w = randn(4)
    with pytest.raises(ValueError, match="residual"):
        norm.batch_norm_forward_train(x, w, w, None, None, None, 0.1, EPS, residual=x[:1])
    with pytest.raises(ValueError, match="residual_act needs a residual"):
        norm.batch_norm_forward_train(x, w, w, None, None, None, 0.1, EPS, residual_act=ACT_RELU)


MODELS = {
    "resnet18": (dict(widths=(4, 6, 8, 10)), 8),
    # 3 InvertedResidual blocks, the third (stride 1, 8 -> 8) with a skip connection
    "mobilenetv2": (
        dict(width_mult=0.25, dropout=0.0, inverted_residual_setting=[[1, 8, 1, 1], [6, 8, 2, 2]]),
        3,
    ),
}


def _step(name: str, fused: bool):
    torch.manual_seed(0)
    kw, _ = MODELS[name]
    model = models.build(name, num_classes=5, image_size=8, fuse_residual=fused, **kw)
    return model, training_step(model, evaluate=True)


@pytest.mark.parametrize("name", MODELS)
def test_fused_model_trains_like_the_plain_one(name):
    _, ref = _step(name, fused=False)
    model, out = _step(name, fused=True)
    assert sum(1 for m in model.modules() if getattr(m, "fuse_residual", False)) == MODELS[name][1]
    assert_same_step(out, ref, name)
    assert unfuse_residual_adds(model) == MODELS[name][1] and fuse_residual_adds(model) > 0


@pytest.mark.gpu
@pytest.mark.parametrize("c,hw", [(64, 32), (128, 16), (512, 4), (24, 32), (96, 8)])
def test_gpu_apply_adds_the_residual(c, hw):
    """ResNet-18 / MobileNetV2 block outputs at batch 128, fp16 NHWC, the tile pick_config
    gives: training forward with a residual and a ReLU after the add against float64."""
    x = randn(128, c, hw, hw, dtype=torch.float16, channels_last=True, seed=1) * 2 + 1
    r = randn(128, c, hw, hw, dtype=torch.float16, channels_last=True, seed=2)
    w, b = randn(c, seed=3) + 1.5, randn(c, seed=4)
    y, mean, invstd = norm.batch_norm_forward_train(
        x, w, b, None, None, None, 0.1, EPS, residual=r, residual_act=ACT_RELU
    )
    ref = _reference(x, r, mean, invstd, w, b, ACT_NONE, ACT_RELU)
    assert_close(y, ref, torch.float16, what=f"C{c} {hw}x{hw}")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
def test_gpu_fused_model_step(name):
    """Whole-width models, fp32, batch 16 at 32x32: one fused step equals the unfused one."""
    ref = full_width_step(name, fuse_residual=False)
    assert_same_step(full_width_step(name, fuse_residual=True), ref, name)
