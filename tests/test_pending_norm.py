"""A batch norm (+ activation) applied by the depthwise or 1x1 conv that reads its input
(norm.PendingNorm, nn.fusion.defer_bn_into_depthwise / defer_bn_into_1x1): the conv's loads
normalise x exactly as bn_apply_kernel would have stored it, so forward, weight gradient and
the BN's own updates are those of the two separate layers, without the batch norm's apply
pass."""

import pytest
import torch
from helpers import DEVICE, assert_close, assert_same_step, randn, training_step

from tritoncnn import models, nn
from tritoncnn.kernels import conv as K
from tritoncnn.kernels import depthwise as DW
from tritoncnn.kernels import norm
from tritoncnn.kernels.conv_pointwise import POINTWISE_CONFIGS
from tritoncnn.kernels.elementwise import ACT_NONE, ACT_RELU6
from tritoncnn.nn.fusion import (
    defer_bn_into_1x1,
    defer_bn_into_depthwise,
    undefer_bn_into_1x1,
    undefer_bn_into_depthwise,
)

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
    return norm.PendingNorm(mean, invstd, w, b, act, 0.0), applied


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


# 1x1 convs (nn.fusion.defer_bn_into_1x1): the pointer GEMM's forward and weight gradient
# normalise their x tiles between load and MMA.


def _check_1x1(x, pending, applied, c_out: int, dtype, exact: bool, bias: bool = True) -> None:
    """Forward (plain and with epilogue moments) and weight gradient (written, then
    accumulated) of a 1x1 conv fed x + ``pending`` against the same kernel and tile fed the
    applied tensor and against torch in float64. With ``exact`` the forward is equal bit for
    bit; the weight gradient to fp32 summation order (its IN_NORM form computes dw^T, the
    normalised tile as the MMA's register operand, so its sums run in another order)."""

    def same(out, ref, what):
        if exact:
            assert torch.equal(out, ref), what
        else:
            assert_close(out, ref, dtype, tol=1e-3, what=what)

    c_in = x.shape[1]
    weight = randn(c_out, c_in, 1, 1, seed=13).to(dtype)  # the layer's 16-bit GEMM copy
    b = randn(c_out, seed=14) if bias else None
    args = (b, 1, 0, 1, 1)
    ref = K.conv2d_forward(applied, weight, *args)
    out = K.conv2d_forward(x, weight, *args, pending=pending)
    same(out, ref, "forward")
    ref64 = torch.nn.functional.conv2d(
        applied.double(), weight.double(), None if b is None else b.double()
    )
    assert_close(out, ref64, dtype, what="forward vs float64")
    out_m, tiles = K.conv2d_forward_moments(x, weight, *args, pending=pending)
    ref_m, ref_tiles = K.conv2d_forward_moments(applied, weight, *args)
    same(out_m, ref_m, "forward with moments")
    same(tiles.partials, ref_tiles.partials, "moments")
    g = randn(*ref.shape, dtype=dtype, channels_last=True, seed=15)
    geo = (weight.shape, 1, 0, 1, 1)
    ref_gw = K.conv2d_wgrad(applied, g, *geo)
    gw = K.conv2d_wgrad(x, g, *geo, pending=pending)
    assert_close(gw, ref_gw, tol=1e-6 if exact else 1e-4, what="wgrad")
    gw64 = torch.nn.grad.conv2d_weight(applied.double(), weight.shape, g.double())
    assert_close(gw, gw64, tol=1e-4 if dtype == torch.float32 else 2e-3, what="wgrad vs float64")
    K.conv2d_wgrad(x, g, *geo, grad_weight=gw, pending=pending)
    assert_close(gw, 2 * ref_gw, what="wgrad accumulate")
    # the GPU's heuristic tile for it (32 x 64, split in two along the pixels)
    cfg = K.IN_NORM_WGRAD_CONFIG
    gw = K.conv2d_wgrad(x, g, *geo, pending=pending, config=cfg, split_k=2)
    assert_close(gw, gw64, tol=1e-4 if dtype == torch.float32 else 2e-3, what="wgrad 32 x 64")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act,affine", [(ACT_RELU6, True), (ACT_NONE, False)])
def test_1x1_conv_applies_the_pending_norm(dtype, act, affine):
    """30 rows (two row tiles, the last one partial) of 20 channels (a partial K block) into
    12: the normalised tile's masked rows and channels stay zero, as the applied tensor's."""
    x = randn(2, 20, 5, 3, dtype=dtype, channels_last=True) * 3 + 1
    pending, applied = _pending(x, act, affine)
    _check_1x1(x, pending, applied, 12, dtype, exact=True, bias=affine)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pointwise_kernel_applies_the_pending_norm(dtype, monkeypatch):
    """The persistent pointwise kernel (kernels/conv_pointwise.py) fed x + a PendingNorm: its
    output and moments equal, bit for bit, the same tile fed the applied tensor, and match
    float64; conv2d_forward sends a pending 1x1 there when the kernel is enabled."""
    from tritoncnn.kernels import conv_pointwise as pw

    cfg = pw.PointwiseConfig(16, 32, 4, 2, 4)
    x = randn(2, 40, 5, 3, dtype=dtype, channels_last=True) * 3 + 1  # 30 rows: 2 row tiles
    pending, applied = _pending(x, ACT_RELU6, True)
    weight = randn(24, 40, 1, 1, seed=13).to(dtype)

    def run(inp, pend):
        out = torch.full((2, 24, 5, 3), float("nan"), dtype=dtype, device=DEVICE)
        out = out.contiguous(memory_format=torch.channels_last)
        tiles = pw.conv2d_forward_pointwise(inp, weight, None, out, ACT_NONE, 0.0, True, cfg, pend)
        return out, tiles.partials

    out, parts = run(x, pending)
    ref, ref_parts = run(applied, None)
    assert torch.equal(out, ref) and torch.equal(parts, ref_parts)
    ref64 = torch.nn.functional.conv2d(applied.double(), weight.double())
    assert_close(out, ref64, dtype, what="pointwise forward vs float64")
    calls = []
    real = pw.conv2d_forward_pointwise
    monkeypatch.setattr(pw, "conv2d_forward_pointwise", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(pw, "ENABLED", True)
    monkeypatch.setattr(pw, "pick_pointwise_config", lambda c, sums=False: cfg)
    y = K.conv2d_forward(x, weight, None, 1, 0, 1, 1, pending=pending)
    assert len(calls) == 1 and calls[0][-1] is pending
    assert torch.equal(y, ref)


def test_1x1_pending_norm_refusals():
    """A pending apply on a conv the GEMM prologue can't take (3x3, strided) is a clear
    error; so is a pending norm of the wrong width."""
    x = randn(1, 8, 5, 5, channels_last=True)
    pending, _ = _pending(x, ACT_NONE, True)
    with pytest.raises(ValueError, match="needs a 1x1, stride-1, unpadded conv"):
        K.conv2d_forward(x, randn(4, 8, 3, 3), None, 1, 1, 1, 1, pending=pending)
    with pytest.raises(ValueError, match="needs a 1x1, stride-1, unpadded conv"):
        K.conv2d_wgrad(x, randn(1, 4, 3, 3, channels_last=True), (4, 8, 1, 1), 2, 0, 1, 1,
                       pending=pending)  # fmt: skip
    bad = pending._replace(invstd=pending.invstd[:4])
    with pytest.raises(ValueError, match="pending batch-norm invstd"):
        K.conv2d_forward(x, randn(4, 8, 1, 1), None, 1, 0, 1, 1, pending=bad)


def _mobilenet_1x1(**options):
    torch.manual_seed(0)
    return models.build(
        "mobilenetv2", num_classes=5, image_size=8, width_mult=0.25, dropout=0.0,
        inverted_residual_setting=[[1, 8, 1, 1], [6, 8, 2, 2]], **options,
    )  # fmt: skip


@pytest.mark.parametrize(
    "options",
    [{}, {"bn_into_depthwise": True, "bn_grad_sums": True}],
    ids=["alone", "with_depthwise_deferral_and_grad_sums"],
)
def test_1x1_deferred_model_trains_like_the_plain_one(options):
    """A MobileNetV2 whose depthwise BatchNorms (one per inverted residual block: the
    projection is the only reader) leave their apply to the 1x1 projection after them: the
    same logits, gradients and running statistics as the plain model, eval included; with
    the expand deferral and the dgrads' BN sums too (the projection dgrad's sums then read
    the deferred BatchNorm's input)."""
    ref = training_step(_mobilenet_1x1(**options), evaluate=True)
    model = _mobilenet_1x1(bn_into_1x1=True, **options)
    deferred = [
        m for m in model.modules()
        if isinstance(m, nn.BatchNorm2d) and m.pending_link is not None
        and not m.pending_link.conv._is_depthwise()
    ]  # fmt: skip
    blocks = [m for m in model.modules() if type(m).__name__ == "InvertedResidual"]
    assert len(deferred) == len(blocks) == 3
    assert_same_step(training_step(model, evaluate=True), ref, "1x1 deferred")


@pytest.mark.parametrize("option", ["bn_into_1x1", "bn_into_depthwise"])
def test_deferred_fp16_mobilenetv2_matches_twin(option):
    """In fp16 (each deferred apply rounds to fp16 in the consumer's loads, as
    bn_apply_kernel would store it) against the float64 torch twin, as test_models holds
    every model: batch 4 at 32x32, a quarter of the width (see test_conv_pointwise)."""
    from test_models import check_against_twin, randn_input, randomize_

    x = randn_input(4, 3, 32, torch.float16)
    model = models.build("mobilenetv2", num_classes=10, dropout=0.0, width_mult=0.25,
                         **{option: True})  # fmt: skip
    randomize_(model)
    check_against_twin(model, x, train=True, require_conditioned=False)


def test_1x1_undefer_and_refusals():
    """undefer_bn_into_1x1 unlinks only the 1x1 pairs; a 1x1 conv handed another tensor
    while its BatchNorm's apply is pending says which undo to call."""
    model = _mobilenet_1x1(bn_into_depthwise=True, bn_into_1x1=True)
    n_dw = undefer_bn_into_depthwise(model)
    assert n_dw > 0 and defer_bn_into_depthwise(model) == n_dw
    n_1x1 = undefer_bn_into_1x1(model)
    assert n_1x1 > 0 and defer_bn_into_1x1(model) == n_1x1
    bn = next(
        m for m in model.modules()
        if getattr(m, "pending_link", None) is not None
        and not m.pending_link.conv._is_depthwise()
        and hasattr(m, "num_features")
    )  # fmt: skip
    model.train()
    x = randn(2, bn.num_features, 4, 4, channels_last=True)
    bn(x)
    with pytest.raises(RuntimeError, match="undefer_bn_into_1x1"):
        bn.pending_link.conv(randn(2, bn.num_features, 4, 4, channels_last=True))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "c_in,c_out,size",
    [(144, 24, 32), (192, 32, 16), (384, 64, 8), (576, 96, 8), (960, 160, 4), (320, 1280, 4)],
)
def test_gpu_1x1_pending_norm(c_in, c_out, size):
    """MobileNetV2's projection shapes (and a 320 -> 1280 1x1) at batch 128, fp16, with
    the autotuner's or heuristic's tiles: compiled, not interpreted."""
    x = randn(128, c_in, size, size, dtype=torch.float16, channels_last=True) * 2 + 0.5
    pending, applied = _pending(x, ACT_RELU6, True)
    _check_1x1(x, pending, applied, c_out, torch.float16, exact=False, bias=False)


@pytest.mark.gpu
@pytest.mark.parametrize("config", range(len(POINTWISE_CONFIGS)))
@pytest.mark.parametrize("c_in,c_out", [(32, 16), (96, 24)])
def test_gpu_pointwise_pending_norm(config, c_in, c_out):
    """The pointwise kernel's tiles with an input batch norm at MobileNetV2's 32x32
    projections, batch 128, fp16 (each tile's programs per SM from per_sm_extras)."""
    from tritoncnn.kernels import conv_pointwise as pw

    cfg = pw.POINTWISE_CONFIGS[config]
    x = randn(128, c_in, 32, 32, dtype=torch.float16, channels_last=True) * 2 + 0.5
    pending, applied = _pending(x, ACT_RELU6, True)
    weight = randn(c_out, c_in, 1, 1, seed=13).to(torch.float16)
    ref = K.conv2d_forward(applied, weight, None, 1, 0, 1, 1)
    out = torch.full_like(ref, float("nan"))
    tiles = pw.conv2d_forward_pointwise(x, weight, None, out, ACT_NONE, 0.0, True, cfg, pending)
    assert_close(out, ref, torch.float16, tol=1e-3, what="pointwise forward")
    assert torch.isfinite(tiles.partials).all()


@pytest.mark.gpu
def test_gpu_1x1_deferred_mobilenetv2_step():
    """The full-width MobileNetV2 (CIFAR) with the 1x1 deferral (and the depthwise one):
    one fp32 training step equals the plain model's."""
    from helpers import full_width_step

    ref = full_width_step("mobilenetv2")
    out = full_width_step("mobilenetv2", bn_into_1x1=True, bn_into_depthwise=True)
    assert_same_step(out, ref, "1x1 deferred")
