"""A batch norm (+ activation) applied by the depthwise conv that reads its input
(norm_fusion.PendingNorm, nn.fusion.defer_bn_into_depthwise): the conv's loads normalise x
exactly as bn_apply_kernel would have stored it, so forward, weight gradient and the BN's own
updates are those of the two separate layers, without the batch norm's apply pass."""

import pytest
import torch
from helpers import DEVICE, assert_close, assert_same_step, randn, training_step

from tritoncnn import models
from tritoncnn.kernels import depthwise as DW
from tritoncnn.kernels import norm, norm_fusion
from tritoncnn.kernels.elementwise import ACT_NONE, ACT_RELU6
from tritoncnn.nn.fusion import defer_bn_into_depthwise, undefer_bn_into_depthwise

EPS, MOMENTUM = 1e-5, 0.1
GEOMETRIES = [((1, 1), (1, 1)), ((2, 2), (1, 1)), ((1, 1), (0, 0))]  # (stride, padding)


def _pending(x: torch.Tensor, act: int, affine: bool):
    """Batch statistics of x (its BN's statistics-only forward) and the PendingNorm; plus the
    tensor bn_apply_kernel would have stored, for the unfused reference."""
    c = x.shape[1]
    w = randn(c, seed=11) if affine else None
    b = randn(c, seed=12) if affine else None
    rm, rv = torch.zeros(c, device=DEVICE), torch.ones(c, device=DEVICE)
    nbt = torch.zeros((), dtype=torch.long, device=DEVICE)
    mean, invstd = norm.batch_norm_train_statistics(x, rm, rv, nbt, MOMENTUM, EPS)
    assert int(nbt) == 1, "the statistics-only forward counts the batch"
    applied, mean2, invstd2 = norm.batch_norm_forward_train(
        x, w, b, None, None, None, MOMENTUM, EPS, act=act
    )
    assert torch.equal(mean, mean2) and torch.equal(invstd, invstd2)
    return norm_fusion.PendingNorm(mean, invstd, w, b, act, 0.0), applied


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act,affine", [(ACT_RELU6, True), (ACT_NONE, False)])
def test_depthwise_applies_the_pending_norm(dtype, act, affine):
    """Forward (with and without epilogue moments) and weight gradient of a depthwise conv
    fed x + a PendingNorm equal, bit for bit, the conv fed the applied tensor (same kernel and
    tile); padding taps read zeros of the normalised tensor, not normalised zeros."""
    x = randn(2, 20, 7, 6, dtype=dtype, channels_last=True) * 3 + 1
    pending, applied = _pending(x, act, affine)
    weight = randn(20, 1, 3, 3).contiguous(memory_format=torch.channels_last)
    # both sides with the same kernel and tile: the flat kernels everywhere, and the
    # rolling-rows kernels where they apply (stride 1, padding 1)
    flat = DW.pick_config(20, 2 * 7 * 6)
    rows = DW.RowsConfig(16, 16, 4, 2)
    cases = [(g, flat, None) for g in GEOMETRIES] + [(((1, 1), (1, 1)), rows, rows)]
    for (stride, pad), config, wgrad_config in cases:
        what = f"stride {stride} pad {pad} {type(config).__name__}"
        args = (weight, None, stride, pad, (1, 1))
        ref = DW.depthwise_conv2d_forward(applied, *args, config=config)
        out = DW.depthwise_conv2d_forward(x, *args, config=config, pending=pending)
        assert torch.equal(out, ref), f"forward {what}"
        out_m, tiles = DW.depthwise_conv2d_forward_moments(x, *args, config=config, pending=pending)
        ref_m, ref_tiles = DW.depthwise_conv2d_forward_moments(applied, *args, config=config)
        assert torch.equal(out_m, ref_m) and torch.equal(tiles.partials, ref_tiles.partials)
        g = randn(*ref.shape, dtype=dtype, channels_last=True)
        geo = (weight.shape, stride, pad, (1, 1))
        ref_gw = DW.depthwise_conv2d_wgrad(applied, g, *geo, config=wgrad_config)
        gw = DW.depthwise_conv2d_wgrad(x, g, *geo, config=wgrad_config, pending=pending)
        assert torch.equal(gw, ref_gw), f"wgrad {what}"
        DW.depthwise_conv2d_wgrad(x, g, *geo, grad_weight=gw, config=wgrad_config, pending=pending)
        assert_close(gw, 2 * ref_gw, what="wgrad accumulate")


def test_pending_norm_shape_errors():
    x = randn(1, 8, 5, 5, channels_last=True)
    pending, _ = _pending(x, ACT_NONE, True)
    bad = pending._replace(mean=pending.mean[:4])
    weight = randn(8, 1, 3, 3)
    with pytest.raises(ValueError, match="pending batch-norm mean"):
        DW.depthwise_conv2d_forward(x, weight, None, 1, 1, 1, pending=bad)


def _mobilenet(defer: bool):
    torch.manual_seed(0)
    model = models.build(
        "mobilenetv2", num_classes=5, image_size=8, width_mult=0.25, dropout=0.0,
        inverted_residual_setting=[[1, 8, 1, 1], [6, 8, 2, 2]],
    )  # fmt: skip
    if defer:
        assert defer_bn_into_depthwise(model) > 0
    return model


def test_deferred_model_trains_like_the_plain_one():
    """A MobileNetV2 whose expand BatchNorms leave their apply to the depthwise conv after
    them: the same logits, input gradient, parameter gradients and running statistics as
    without (fp32, one training step), and eval still applies each BatchNorm itself."""
    ref = training_step(_mobilenet(False), evaluate=True)
    assert_same_step(training_step(_mobilenet(True), evaluate=True), ref, "deferred")


def test_undefer_and_refusals():
    """undefer restores the plain path; a deferred BatchNorm whose output reaches anything but
    its depthwise conv is refused with a clear error instead of a silently wrong result."""
    model = _mobilenet(True)
    assert undefer_bn_into_depthwise(model) == defer_bn_into_depthwise(model)
    bn = next(m for m in model.modules() if getattr(m, "pending_link", None) is not None)
    model.train()
    x = randn(2, bn.num_features, 4, 4, channels_last=True)
    bn(x)  # publishes x's pending apply ...
    conv = bn.pending_link.conv
    with pytest.raises(RuntimeError, match="defer_bn_into_depthwise"):
        conv(randn(2, bn.num_features, 4, 4, channels_last=True))  # ... another tensor arrives


@pytest.mark.gpu
@pytest.mark.parametrize(
    "c,size,stride", [(96, 32, 2), (144, 32, 1), (192, 16, 1), (384, 8, 1), (960, 4, 1)]
)
def test_gpu_depthwise_pending_norm(c, size, stride):
    """MobileNetV2's expand -> depthwise shapes at batch 128, fp16: compiled, not interpreted."""
    x = randn(128, c, size, size, dtype=torch.float16, channels_last=True) * 2 + 0.5
    pending, applied = _pending(x, ACT_RELU6, True)
    weight = randn(c, 1, 3, 3).contiguous(memory_format=torch.channels_last)
    args = (weight, None, (stride, stride), (1, 1), (1, 1))
    ref = DW.depthwise_conv2d_forward(applied, *args)
    out, _ = DW.depthwise_conv2d_forward_moments(x, *args, pending=pending)
    assert_close(out, ref, torch.float16, tol=1e-3, what="forward")
    g = randn(*ref.shape, dtype=torch.float16, channels_last=True)
    geo = args[2:]
    ref_gw = DW.depthwise_conv2d_wgrad(applied, g, weight.shape, *geo)
    gw = DW.depthwise_conv2d_wgrad(x, g, weight.shape, *geo, pending=pending)
    assert_close(gw, ref_gw, tol=1e-4, what="wgrad")


@pytest.mark.gpu
def test_gpu_deferred_mobilenetv2_step():
    """The full-width MobileNetV2 (CIFAR) with its expand BatchNorms deferred: one fp32
    training step gives the logits and gradients of the plain model."""
    x = randn(8, 3, 32, 32, channels_last=True, seed=7)
    runs = []
    for defer in (False, True):
        torch.manual_seed(0)
        model = models.build("mobilenetv2", num_classes=10, dropout=0.0, bn_into_depthwise=defer)
        model.train()
        logits = model(x)
        model.backward(randn(*logits.shape, seed=8))
        runs.append((logits, [p.grad.clone() for p in model.parameters()]))
    (l0, g0), (l1, g1) = runs
    assert_close(l1, l0, what="logits")
    for i, (a, b) in enumerate(zip(g1, g0, strict=True)):
        assert_close(a, b, tol=1e-4, what=f"gradient {i}")
