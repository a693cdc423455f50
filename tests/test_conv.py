"""Conv2d (implicit GEMM forward, dgrad, wgrad, bias grad) against torch in float64."""

import math

import pytest
import torch
import torch.nn.functional as F
import triton
from helpers import DEVICE, assert_close, f64, randn, rounded

from tritoncnn import nn, runtime
from tritoncnn.kernels import autotune, conv_configs, conv_wgrad
from tritoncnn.kernels import conv as K
from tritoncnn.kernels import elementwise as ew
from tritoncnn.nn import conv as nn_conv

# Weight gradients sum exact products of low-precision operands in fp32 (tensor-core fp32
# accumulation), so their error is an fp32 summation error, not the operands' rounding.
WGRAD_TOL = {torch.float32: 2e-5, torch.float16: 1e-4, torch.bfloat16: 1e-4}


def _weight(c_out, c_in_g, kh, kw, seed=None):
    w = randn(c_out, c_in_g, kh, kw, seed=seed) / math.sqrt(c_in_g * kh * kw)
    return w.contiguous(memory_format=torch.channels_last)


def reference(x, w, b, go, stride, padding, dilation, groups, device="cpu"):
    """torch's output and (input, weight, bias) gradients in float64 on ``device``.

    ``padding`` is (h, w) or (top, bottom, left, right); asymmetric padding goes through F.pad.
    """
    xr = x.detach().to(device, torch.float64).requires_grad_()
    wr = w.detach().to(device, torch.float64).requires_grad_()
    br = None if b is None else b.detach().to(device, torch.float64).requires_grad_()
    if not isinstance(padding, int) and len(padding) == 4:
        pt, pb, pl, pr = padding
        y = F.conv2d(F.pad(xr, (pl, pr, pt, pb)), wr, br, stride, 0, dilation, groups)
    else:
        y = F.conv2d(xr, wr, br, stride, padding, dilation, groups)
    if go is not None:
        y.backward(go.detach().to(device, torch.float64))
    return y.detach(), xr.grad, wr.grad, None if br is None else br.grad


# (n, c_in, h, w, c_out, kernel, stride, padding, dilation, groups): odd sizes that reach every
# kernel path: flattened-K GEMMs (channels per group < 16) and tap-major ones, 1x1 GEMMs,
# strided and dilated dgrad phases, grouped convs, non-square kernels and input pixels that no
# output reads (their gradient must be written as 0).
CASES = {
    "stem_3x3_s2": (2, 3, 7, 5, 5, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    "5x5_groups2": (1, 4, 7, 5, 6, (5, 5), (1, 1), (2, 2), (1, 1), 2),
    "3x3_dil2_wide": (2, 18, 6, 5, 17, (3, 3), (1, 1), (2, 2), (2, 2), 1),
    "1x1": (2, 18, 5, 7, 20, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    "1x1_s2": (2, 17, 7, 5, 19, (1, 1), (2, 2), (0, 0), (1, 1), 1),
    "3x3_s2_groups2_wide": (1, 34, 6, 5, 34, (3, 3), (2, 2), (1, 1), (1, 1), 2),
    "3x2_s3_dil2_untouched": (1, 4, 8, 9, 17, (3, 2), (3, 2), (0, 1), (2, 1), 1),
    # channel counts of whole 16-byte vectors that Triton can't see (vector_align > 1)
    "1x1_24_to_40": (2, 24, 5, 7, 40, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    "3x3_24_to_24": (2, 24, 6, 5, 24, (3, 3), (1, 1), (1, 1), (1, 1), 1),
}
FP16_CASES = [
    "stem_3x3_s2",
    "3x3_dil2_wide",
    "1x1",
    "3x3_s2_groups2_wide",
    "1x1_24_to_40",
    "3x3_24_to_24",
]


def _check_module(case, dtype, channels_last=True):
    n, c_in, h, w, c_out, k, s, p, d, g = case
    conv = nn.Conv2d(c_in, c_out, k, stride=s, padding=p, dilation=d, groups=g)
    x = randn(n, c_in, h, w, dtype=dtype, channels_last=channels_last)
    y = conv(x)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    go = randn(*y.shape, dtype=dtype, channels_last=True)
    dx = conv.backward(go)
    yr, dxr, dwr, dbr = reference(x, conv.weight.data, conv.bias.data, go, s, p, d, g)
    assert_close(y, yr, dtype, what="forward")
    assert dx.dtype == dtype and dx.stride() == x.stride()
    assert_close(dx, dxr, dtype, what="grad_in")
    assert conv.weight.grad.dtype == torch.float32 and conv.weight.grad.shape == conv.weight.shape
    assert_close(conv.weight.grad, dwr, tol=WGRAD_TOL[dtype], what="grad_weight")
    assert_close(conv.bias.grad, dbr, torch.float32, what="grad_bias")


@pytest.mark.parametrize("name", list(CASES))
def test_conv2d_fp32(name):
    _check_module(CASES[name], torch.float32)


@pytest.mark.parametrize("name", FP16_CASES)
def test_conv2d_fp16(name):
    _check_module(CASES[name], torch.float16)


def test_conv2d_bf16():
    _check_module(CASES["1x1_s2"], torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gemm_weight_copy(dtype):
    """16-bit activations: the GEMMs read the layer's rounded weight copy. Results equal the
    kernels reading the fp32 master (they round it the same way), and a weight changed in
    place (the optimizer's update) reaches the next forward and its backward."""
    n, c_in, h, w, c_out, k, s, p, d, g = CASES["1x1_24_to_40"]
    conv = nn.Conv2d(c_in, c_out, k, stride=s, padding=p, dilation=d, groups=g)
    x = randn(n, c_in, h, w, dtype=dtype, channels_last=True)
    go = randn(n, c_out, h, w, dtype=dtype, channels_last=True)
    for _ in range(2):
        y, dx = conv(x), conv.backward(go)
        copy = conv._w_cast
        assert copy.dtype == dtype and torch.equal(
            copy.float(), rounded(conv.weight.data, dtype).float()
        )
        args = (conv.stride, conv._pad4, conv.dilation, conv.groups)
        w32 = conv.weight.data
        assert torch.equal(y, K.conv2d_forward(x, w32, conv.bias.data, *args))
        assert torch.equal(dx, K.conv2d_dgrad(go, w32, x.shape, *args))
        conv.weight.data.mul_(-0.5).add_(0.01)
    assert conv._w_cast is copy  # one buffer, refreshed in place


def test_fp32_activations_read_the_master_weight():
    conv = nn.Conv2d(5, 3, 3, padding=1)
    conv(randn(2, 5, 4, 4, channels_last=True))
    assert conv._w_cast is None and conv._w_gemm is conv.weight.data


def test_nchw_input_accepted():
    """A torch-contiguous NCHW input is read through its strides; grad_in keeps its layout."""
    _check_module(CASES["stem_3x3_s2"], torch.float32, channels_last=False)


def test_gradients_accumulate():
    """backward writes fresh grads, then adds into existing ones; zero_grad drops them."""
    conv = nn.Conv2d(6, 5, 3, stride=2, padding=1, groups=1)
    x = randn(2, 6, 5, 4, channels_last=True)
    go = randn(2, 5, 3, 2, channels_last=True)
    _, _, dwr, dbr = reference(x, conv.weight.data, conv.bias.data, go, 2, 1, 1, 1)
    conv(x)
    conv.backward(go)
    first = conv.weight.grad
    conv(x)
    conv.backward(go)
    assert conv.weight.grad is first  # added in place, not reallocated
    assert_close(conv.weight.grad, 2 * dwr, what="grad_weight x2")
    assert_close(conv.bias.grad, 2 * dbr, what="grad_bias x2")
    conv.zero_grad()
    assert conv.weight.grad is None and conv.bias.grad is None


def test_split_k_wgrad_and_bias_grad():
    """Split-K partial sums (two-stage, deterministic) write and accumulate like one pass."""
    n, c_in, h, w, c_out = 2, 5, 7, 6, 4
    x = randn(n, c_in, h, w, channels_last=True)
    wt = _weight(c_out, c_in, 3, 3)
    go = randn(n, c_out, 4, 3, channels_last=True)
    _, _, dwr, dbr = reference(x, wt, torch.zeros(c_out), go, 2, 1, 1, 1)
    dw = conv_wgrad.conv2d_wgrad(x, go, wt.shape, (2, 2), (1, 1), (1, 1), 1, split_k=3)
    assert dw.is_contiguous(memory_format=torch.channels_last)
    assert_close(dw, dwr, what="split-K wgrad")
    dw_again = conv_wgrad.conv2d_wgrad(
        x, go, wt.shape, (2, 2), (1, 1), (1, 1), 1, grad_weight=dw, split_k=2
    )
    assert dw_again is dw
    assert_close(dw, 2 * dwr, what="split-K wgrad accumulate")
    db = conv_wgrad.conv2d_bias_grad(go, split=3)
    assert_close(db, dbr, what="split bias grad")
    conv_wgrad.conv2d_bias_grad(go, grad_bias=db, split=2)
    assert_close(db, 2 * dbr, what="split bias grad accumulate")
    # Deterministic: the same call gives bit-identical results.
    again = conv_wgrad.conv2d_wgrad(x, go, wt.shape, (2, 2), (1, 1), (1, 1), 1, split_k=3)
    assert torch.equal(
        again, conv_wgrad.conv2d_wgrad(x, go, wt.shape, (2, 2), (1, 1), (1, 1), 1, split_k=3)
    )


def test_pick_split_fills_the_sms_up_to_most(monkeypatch):
    """The K splits of a weight gradient: ~per_sm programs per SM over its tiles, each split
    >= min_pixels, at most ``most`` (the conv wgrad passes _max_split: 512, fewer where the
    partial sums would pass MAX_PARTIAL_ELEMENTS)."""
    monkeypatch.setattr(runtime, "sm_count", lambda: 132)
    pixels = 512 * 32 * 32
    # MobileNetV2's 32 -> 16 1x1 wgrad: one tile, 528 programs wanted, 512 pixels-bound
    pick, most = conv_configs._pick_split, conv_configs._max_split(pixels, 64, 16 * 32)
    assert pick(1, pixels, 64, per_sm=4, most=most) == 512
    assert pick(3, pixels, 64, per_sm=4, most=512) == 176
    assert pick(1, pixels, 64, per_sm=4) == 64  # the default cap (bias gradients)
    assert pick(200, pixels, 64, per_sm=4, most=512) == 3  # many tiles: few splits
    assert pick(1, 4096, 64, per_sm=4, most=512) == 4  # >= 1024 pixels each
    huge = conv_configs.MAX_PARTIAL_ELEMENTS // 8
    assert conv_configs._max_split(pixels, 64, huge) == 8


def test_reduce_rows(monkeypatch):
    """splitk_reduce_kernel's rows per step: 8 while the output gives each SM a program, up to
    64 for a small one, never more than the splits (rounded up to a power of two)."""
    monkeypatch.setattr(runtime, "sm_count", lambda: 132)
    assert conv_configs.reduce_rows(64, 3 * 3 * 512 * 512) == 8  # a ResNet-18 3x3 wgrad: as before
    assert conv_configs.reduce_rows(64, 16 * 32) == 64  # MobileNetV2's 32 -> 16 1x1
    assert conv_configs.reduce_rows(64, 144 * 24) == 64
    assert conv_configs.reduce_rows(64, 132 * 128) == 16  # 132 programs of 128 elements
    assert conv_configs.reduce_rows(3, 512) == 4 and conv_configs.reduce_rows(1, 512) == 1


def test_split_k_wgrad_many_rows_per_reduce_step(monkeypatch):
    """A small weight gradient split 50 ways, reduced 64 partial rows a step (what an H100's
    132 SMs give its 180 outputs): written and accumulated as torch in float64 says."""
    monkeypatch.setattr(runtime, "sm_count", lambda: 132)
    chosen = []
    real = conv_configs.reduce_rows
    monkeypatch.setattr(
        conv_wgrad, "reduce_rows", lambda *a: chosen.append((a, real(*a))) or real(*a)
    )
    x = randn(2, 5, 20, 20, channels_last=True)
    wt = _weight(4, 5, 3, 3)
    go = randn(2, 4, 20, 20, channels_last=True)
    _, _, dwr, _ = reference(x, wt, torch.zeros(4), go, 1, 1, 1, 1)
    cfg = K.ConvConfig(16, 16, 16, 4, 1)  # 16-pixel K steps: 800 pixels, 50 splits of 16
    args = (wt.shape, (1, 1), (1, 1), (1, 1), 1)
    dw = conv_wgrad.conv2d_wgrad(x, go, *args, split_k=50, config=cfg, flat_taps=False)
    assert chosen == [((50, 180), 64)]
    assert_close(dw, dwr, what="50 splits, 64 rows a step")
    conv_wgrad.conv2d_wgrad(x, go, *args, grad_weight=dw, split_k=50, config=cfg, flat_taps=False)
    assert_close(dw, 2 * dwr, what="accumulated")


@pytest.mark.parametrize("flat_taps", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_wgrad_tap_layouts(flat_taps, dtype):
    """The weight gradient with its columns flattened over (tap, channel) or one tap per
    program, each forced on the channel counts the heuristic gives the other (16-channel
    groups flattened; 3 channels per tap), with stride, dilation, groups and split-K."""
    for c_in, groups in ((32, 2), (3, 1)):
        x = randn(2, c_in, 9, 8, dtype=dtype, channels_last=True)
        wt = _weight(6, c_in // groups, 3, 3)
        go = randn(2, 6, 4, 3, dtype=dtype, channels_last=True)
        _, _, dwr, _ = reference(x, wt, torch.zeros(6), go, 2, 1, 2, groups)
        args = ((2, 2), (1, 1), (2, 2), groups)
        for split in (1, 3):
            dw = conv_wgrad.conv2d_wgrad(x, go, wt.shape, *args, split_k=split, flat_taps=flat_taps)
            assert_close(dw, dwr, tol=WGRAD_TOL[dtype], what=f"c_in {c_in} split {split}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_wgrad_row_taps(dtype):
    """One program per filter row (KW accumulators sharing each dy tile) against float64: a
    3x3 strided, dilated, grouped conv and a 3x2 kernel with uneven padding, split-K,
    written then added into; the same bits as one program per tap."""
    x = randn(2, 12, 9, 8, dtype=dtype, channels_last=True)
    for kshape, args in (
        ((3, 3), ((2, 2), (1, 1), (2, 1), 2)),
        ((3, 2), ((1, 1), (1, 0), (1, 1), 1)),
    ):
        groups = args[3]
        wt = _weight(6, 12 // groups, *kshape)
        ho = (9 + 2 * args[1][0] - args[2][0] * (kshape[0] - 1) - 1) // args[0][0] + 1
        wo = (8 + 2 * args[1][1] - args[2][1] * (kshape[1] - 1) - 1) // args[0][1] + 1
        go = randn(2, 6, ho, wo, dtype=dtype, channels_last=True)
        dwr = reference(x, wt, None, go, *args)[2]
        # 6 channels per group would flatten the taps by default: force one tap (row) per
        # program; 16-deep K steps so that these few pixels really split (2 and 3 parts)
        for split in (1, 3):
            kw = dict(split_k=split, flat_taps=False, config=K.ConvConfig(16, 16, 16, 4, 3))
            dw = conv_wgrad.conv2d_wgrad(x, go, wt.shape, *args, row_taps=True, **kw)
            assert_close(dw, dwr, tol=WGRAD_TOL[dtype], what=f"row taps {kshape} split {split}")
            per_tap = conv_wgrad.conv2d_wgrad(x, go, wt.shape, *args, row_taps=False, **kw)
            assert torch.equal(dw, per_tap), f"row taps differ from one tap per program {kshape}"
            conv_wgrad.conv2d_wgrad(x, go, wt.shape, *args, grad_weight=dw, row_taps=True, **kw)
            assert_close(dw, 2 * dwr, tol=WGRAD_TOL[dtype], what=f"row taps += {kshape}")


def test_wgrad_row_taps_rule_and_errors():
    """The row form only where it fits (2-3 taps across, KW accumulators within the register
    budget, and only when switched on), and a clear error where it can't run."""
    small, large = K.ConvConfig(64, 64, 64, 4, 3), K.ConvConfig(128, 128, 64, 4, 3)
    saved = conv_wgrad.WGRAD_ROW_TAPS
    try:
        conv_wgrad.WGRAD_ROW_TAPS = True
        assert conv_wgrad.use_row_taps(small, 3) and conv_wgrad.use_row_taps(small, 2)
        assert not conv_wgrad.use_row_taps(large, 3)  # 3 x 128 fp32 registers per thread
        assert not conv_wgrad.use_row_taps(small, 1) and not conv_wgrad.use_row_taps(small, 5)
        conv_wgrad.WGRAD_ROW_TAPS = False
        assert not conv_wgrad.use_row_taps(small, 3)
    finally:
        conv_wgrad.WGRAD_ROW_TAPS = saved
    x = randn(1, 4, 5, 5, channels_last=True)
    go = randn(1, 4, 5, 5, channels_last=True)
    with pytest.raises(ValueError, match="row_taps=None"):
        conv_wgrad.conv2d_wgrad(x, go, (4, 4, 1, 1), (1, 1), (0, 0), (1, 1), 1, row_taps=True)
    go5 = randn(1, 4, 1, 1, channels_last=True)
    with pytest.raises(ValueError, match="row_taps=None"):
        conv_wgrad.conv2d_wgrad(x, go5, (4, 4, 5, 5), (1, 1), (0, 0), (1, 1), 1, row_taps=True)


@pytest.mark.parametrize("act,alpha", [(ew.ACT_RELU6, 0.0), (ew.ACT_LEAKY_RELU, 0.2)])
def test_fused_activation_epilogue(act, alpha):
    x = randn(2, 3, 5, 4, channels_last=True) * 3
    wt, b = _weight(7, 3, 3, 3), randn(7)
    y = K.conv2d_forward(x, wt, b, (1, 1), (1, 1), (1, 1), 1, act=act, alpha=alpha)
    yr = reference(x, wt, b, None, 1, 1, 1, 1)[0]
    yr = F.relu6(yr) if act == ew.ACT_RELU6 else F.leaky_relu(yr, alpha)
    assert_close(y, yr, what="conv + activation")


@pytest.mark.parametrize("index", range(len(K.CONFIGS)))
def test_every_config(index):
    """Each tile the heuristic or the autotuner may pick, forced on one small strided, padded
    shape (8-warp tiles only ever run 1x1 GEMMs, so they get a 1x1 shape)."""
    cfg = K.CONFIGS[index]
    k, s, p = (1, 1, 0) if cfg.num_warps == 8 else (3, 2, 1)
    x = randn(1, 18, 5, 4, channels_last=True)
    wt, b = _weight(17, 18, k, k), randn(17)
    ho, wo = (5 + 2 * p - k) // s + 1, (4 + 2 * p - k) // s + 1
    go = randn(1, 17, ho, wo, channels_last=True)
    yr, dxr, dwr, _ = reference(x, wt, b, go, s, p, 1, 1)
    args = ((s, s), (p, p), (1, 1), 1)
    y = K.conv2d_forward(x, wt, b, *args, config=cfg)
    dx = K.conv2d_dgrad(go, wt, x.shape, *args, config=cfg)
    dw = conv_wgrad.conv2d_wgrad(x, go, wt.shape, *args, config=cfg)
    assert_close(y, yr, what=f"forward {cfg}")
    assert_close(dx, dxr, what=f"dgrad {cfg}")
    assert_close(dw, dwr, what=f"wgrad {cfg}")


@pytest.mark.parametrize("config", conv_configs.BIAS_CONFIGS, ids=str)
def test_every_bias_grad_config(config):
    go = randn(2, 37, 3, 5, channels_last=True)
    dbr = f64(go).sum(dim=(0, 2, 3))
    assert_close(conv_wgrad.conv2d_bias_grad(go, config=config), dbr, what=f"bias grad {config}")
    assert_close(
        conv_wgrad.conv2d_bias_grad(go, config=config, split=2), dbr, what=f"split {config}"
    )


def test_vector_align():
    """Channel runs of whole 16-byte vectors that start 16-byte aligned get a hint only when
    Triton can't see it itself; anything else gets 1."""
    fp16, fp32 = torch.float16, torch.float32
    assert K.vector_align(randn(2, 24, 5, 7, dtype=fp16, channels_last=True), 24) == 8
    assert K.vector_align(randn(2, 24, 5, 7, dtype=fp32, channels_last=True), 24) == 4
    assert K.vector_align(randn(2, 32, 5, 7, dtype=fp16, channels_last=True), 32) == 1
    assert K.vector_align(randn(2, 20, 5, 7, dtype=fp16, channels_last=True), 20) == 1
    assert K.vector_align(randn(2, 48, 5, 7, dtype=fp16, channels_last=True), 24) == 8
    assert K.vector_align(randn(2, 48, 5, 7, dtype=fp16, channels_last=True), 12) == 1
    assert K.vector_align(randn(2, 24, 5, 7, dtype=fp16), 24) == 1  # NCHW: channels strided
    flat = randn(1 + 2 * 24 * 5 * 7, dtype=fp16)
    shifted = flat[1:].view(2, 5, 7, 24).permute(0, 3, 1, 2)  # NHWC view, 2 bytes off
    assert K.vector_align(shifted, 24) == 1


def test_weights_in_activation_dtype():
    """fp16 weights give what the kernels compute when they round fp32 weights per tile."""
    wt = _weight(7, 5, 3, 3)
    x = randn(2, 5, 6, 5, dtype=torch.float16, channels_last=True)
    w16 = wt.half()  # keeps the channels_last strides
    assert w16.stride() == wt.stride()
    args = ((1, 1), (1, 1), (1, 1), 1)
    cfg = None if runtime.INTERPRETED else K.CONFIGS[0]  # one tile: the same summation order
    y32 = K.conv2d_forward(x, wt, None, *args, config=cfg)
    y16 = K.conv2d_forward(x, w16, None, *args, config=cfg)
    assert torch.equal(y32.cpu(), y16.cpu())
    go = randn(*y32.shape, dtype=torch.float16, channels_last=True)
    dx32 = K.conv2d_dgrad(go, wt, x.shape, *args, config=cfg)
    assert torch.equal(dx32.cpu(), K.conv2d_dgrad(go, w16, x.shape, *args, config=cfg).cpu())


def test_gemm_candidates_rules():
    """Candidates come from CONFIGS, fit the shared-memory budget, never use 8 warps outside
    1x1 GEMMs, and keep column tiles near the channel count."""
    limit = 180 * 1024
    for m, n, k in [(131072, 64, 576), (2048, 512, 4608), (131072, 27, 27), (8192, 384, 64)]:
        for a_bytes, b_bytes in [(4, 4), (2, 4), (2, 2)]:
            for is_1x1 in (False, True):
                cands = K.gemm_candidates(m, n, k, a_bytes, b_bytes, is_1x1, smem_limit=limit)
                assert cands, (m, n, k, a_bytes, b_bytes, is_1x1)
                for cfg in cands:
                    assert cfg in K.CONFIGS
                    assert cfg.smem_bytes(a_bytes, b_bytes) <= limit
                    assert is_1x1 or cfg.num_warps == 4
                    assert cfg.BLOCK_N <= max(32, triton.next_power_of_2(n))
                    assert cfg.BLOCK_N >= (64 if n > 64 else 32)
    wide_1x1 = K.gemm_candidates(8192, 384, 64, 2, 2, True, smem_limit=limit)
    assert any(c.num_warps == 8 for c in wide_1x1)
    assert any(c.num_stages == 4 for c in wide_1x1)
    # fp32 weights double the B tile: the widest 8-warp tile only fits once they are cast.
    big = K.ConvConfig(128, 256, 64, 8, 3)
    assert big in wide_1x1 and big not in K.gemm_candidates(8192, 384, 64, 2, 4, True, limit)


def test_split_candidates():
    candidates, choice = conv_configs.split_candidates, conv_configs.SplitChoice
    assert candidates(8, 256) == [choice(s) for s in (4, 8, 16, 32, 64)]
    assert candidates(1, 4) == [choice(s) for s in (1, 2, 4)]
    assert candidates(3, 1) == [choice(1)]


def test_pick_config_only_returns_listed_configs(monkeypatch):
    monkeypatch.setattr(runtime, "INTERPRETED", False)  # the GPU heuristic
    for m in (1, 500, 10**6):
        for n in (3, 32, 33, 64, 65, 512):
            for dtype in runtime.SUPPORTED_DTYPES:
                assert K.pick_config(m, n, 27, dtype) in K.CONFIGS
                assert K.pick_config(m, n, 4608, dtype) in K.CONFIGS
                assert K.pick_config(m, n, 10**6, dtype) in K.CONFIGS
                assert K.pick_config(m, n, 10**6, dtype, split_k=True) in K.CONFIGS


def test_pick_config_pads_channels_least(monkeypatch):
    """Forward / dgrad column tiles: 64 wide where 128-wide tiles would pad N more (144, 192,
    576, 960 channels), 128 where they pad as little (96, 256, 384, 1280); wgrad keeps 128."""
    monkeypatch.setattr(runtime, "INTERPRETED", False)
    m, f16 = 512 * 32 * 32, torch.float16
    for n in (144, 192, 576, 960):
        cfg = K.pick_config(m, n, 24, f16)
        assert (cfg.BLOCK_M, cfg.BLOCK_N, cfg.BLOCK_K) == (128, 64, 32), n
    for n in (96, 256, 384, 1280):
        assert K.pick_config(m, n, 24, f16).BLOCK_N == 128, n
    assert K.pick_config(144, 144, 10**6, f16, split_k=True).BLOCK_N == 128


def test_pick_config_wgrad_rows(monkeypatch):
    """A split-K GEMM (wgrad) takes 128-row tiles for 128+ output channels even though its
    few row tiles alone would not fill the GPU; an unsplit GEMM of as few rows takes 64."""
    monkeypatch.setattr(runtime, "INTERPRETED", False)
    assert K.pick_config(256, 256, 10**5, torch.float16, split_k=True).BLOCK_M == 128
    assert K.pick_config(256, 256, 10**5, torch.float16).BLOCK_M == 64
    assert K.pick_config(64, 64, 10**5, torch.float16, split_k=True).BLOCK_M == 64


def test_pick_config_1x1_tiles(monkeypatch):
    """The 16-bit 1x1 rules (conv_configs._pick_1x1, timed on an H100): a weight gradient of at most
    64 output channels over more than 64 input channels takes 64 x 64 x 64 on 4 stages; a
    forward into at most 32 channels over 64+ takes 64-deep K steps; the general rule
    elsewhere (fp32, 3x3, the dgrad, a short K, wider outputs)."""
    monkeypatch.setattr(runtime, "INTERPRETED", False)
    f16, pixels = torch.float16, 512 * 32 * 32

    def tile(*args, **kw):
        cfg = K.pick_config(*args, **kw)
        assert cfg in K.CONFIGS
        return cfg.BLOCK_M, cfg.BLOCK_N, cfg.BLOCK_K, cfg.num_warps, cfg.num_stages

    for c_out, c_in in ((24, 144), (24, 96), (32, 192), (64, 384)):
        wgrad = tile(c_out, c_in, pixels, f16, split_k=True, is_1x1=True)
        assert wgrad == (64, 64, 64, 4, 4), (c_out, c_in)
        assert tile(c_out, c_in, pixels, f16, split_k=True)[:2] == (64, 128)  # 3x3: unchanged
    assert tile(96, 576, pixels, f16, split_k=True, is_1x1=True) == (128, 128, 64, 4, 3)
    assert tile(144, 24, pixels, f16, split_k=True, is_1x1=True) == (64, 32, 64, 4, 3)
    for c_in, c_out in ((144, 24), (96, 24), (192, 32)):
        assert tile(pixels, c_out, c_in, f16, is_1x1=True) == (64, 32, 64, 4, 3), c_in
        assert tile(pixels, c_out, c_in, f16)[2] == 32  # the dgrad's and 3x3's rule
        assert tile(pixels, c_out, c_in, torch.float32, is_1x1=True)[2] == 32
    assert tile(pixels, 16, 32, f16, is_1x1=True) == (64, 32, 32, 4, 3)  # K 32: one step
    assert tile(pixels, 144, 24, f16, is_1x1=True) == tile(pixels, 144, 24, f16)
    # not the dgrad's 32-wide outputs over a short K (24 -> 144's input gradient lost)
    dgrad_24 = tile(pixels, 24, 144, f16, is_1x1=True, dgrad=True)
    assert dgrad_24 == tile(pixels, 24, 144, f16) and dgrad_24[2] == 32


def test_pick_config_1x1_long_k(monkeypatch):
    """A 16-bit 1x1 forward or dgrad reducing 192+ channels takes 64-deep K steps at any
    width (MobileNetV2's 8x8 and 4x4 layers, timed on an H100); 160 keeps 32; 3x3 and fp32
    keep the general rule."""
    monkeypatch.setattr(runtime, "INTERPRETED", False)
    f16, pix8, pix4 = torch.float16, 512 * 8 * 8, 512 * 4 * 4

    def tile(*args, **kw):
        cfg = K.pick_config(*args, **kw)
        assert cfg in K.CONFIGS
        return cfg.BLOCK_M, cfg.BLOCK_N, cfg.BLOCK_K, cfg.num_warps, cfg.num_stages

    assert tile(pix8, 96, 576, f16, is_1x1=True) == (128, 128, 64, 4, 3)  # forward 576 -> 96
    assert tile(pix4, 320, 960, f16, is_1x1=True) == (128, 64, 64, 4, 3)  # 960 -> 320
    assert tile(pix4, 1280, 320, f16, is_1x1=True) == (64, 128, 64, 4, 3)  # 320 -> 1280
    assert tile(pix8, 96, 576, f16, is_1x1=True, dgrad=True) == (128, 128, 64, 4, 3)
    assert tile(pix4, 160, 960, f16, is_1x1=True, dgrad=True) == (128, 64, 64, 4, 3)
    assert tile(pix4, 960, 160, f16, is_1x1=True)[2] == 32  # K 160: lost at 64
    assert tile(pix4, 576, 160, f16, is_1x1=True, dgrad=True)[2] == 32
    assert tile(pix8, 96, 576, f16)[2] == 32  # not a 1x1
    assert tile(pix8, 96, 576, torch.float32, is_1x1=True)[2] == 32


@pytest.mark.parametrize("kernel,dilation", [(4, 1), (3, 2)])
def test_padding_same_and_valid(kernel, dilation):
    """'same' with an even kernel pads one extra row/column at the bottom/right, as torch."""
    for padding in ("same", "valid"):
        conv = nn.Conv2d(3, 4, kernel, padding=padding, dilation=dilation)
        ref = torch.nn.Conv2d(3, 4, kernel, padding=padding, dilation=dilation).double()
        with torch.no_grad():
            ref.weight.copy_(f64(conv.weight.data))
            ref.bias.copy_(f64(conv.bias.data))
        x = randn(1, 3, 6, 5, channels_last=True)
        xr = f64(x).requires_grad_()
        y = conv(x)
        yr = ref(xr)
        go = randn(*y.shape, channels_last=True)
        dx = conv.backward(go)
        yr.backward(f64(go))
        assert_close(y, yr, what=f"{padding} forward")
        assert_close(dx, xr.grad, what=f"{padding} grad_in")
        assert_close(conv.weight.grad, ref.weight.grad, what=f"{padding} grad_weight")


def test_state_dict_and_init_match_torch():
    for bias in (True, False):
        torch.manual_seed(3)
        ours = nn.Conv2d(6, 9, (3, 2), stride=2, padding=1, groups=3, bias=bias)
        torch.manual_seed(3)
        ref = torch.nn.Conv2d(6, 9, (3, 2), stride=2, padding=1, groups=3, bias=bias)
        sd, rsd = ours.state_dict(), ref.state_dict()
        assert list(sd) == list(rsd)
        for key in rsd:
            assert sd[key].shape == rsd[key].shape and sd[key].dtype == torch.float32
            # Same RNG draws in the same order: torch's default init, value for value.
            assert torch.equal(sd[key].cpu(), rsd[key]), key
        assert ours.weight.data.is_contiguous(memory_format=torch.channels_last)
        assert ours.weight.data.device.type == DEVICE.type
        if bias:
            assert ours.bias.no_weight_decay and not ours.weight.no_weight_decay
        ours.load_state_dict(rsd)  # round trip keeps our layout
        assert ours.weight.data.is_contiguous(memory_format=torch.channels_last)


def test_constructor_and_input_errors():
    conv = nn.Conv2d(3, 8, 3)
    with pytest.raises(ValueError, match="expected input with 3 channels, got 4"):
        conv(randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="padding_mode"):
        nn.Conv2d(3, 8, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="strided"):
        nn.Conv2d(3, 8, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="divisible"):
        nn.Conv2d(3, 8, 3, groups=2)
    with pytest.raises(ValueError):
        nn.Conv2d(3, 8, 3, padding="full")


def test_depthwise_dispatch(monkeypatch):
    """groups == in == out channels goes to kernels/depthwise.py; bias grad through ours."""
    calls = []
    real = nn_conv.DW.depthwise_conv2d_forward
    monkeypatch.setattr(
        nn_conv.DW, "depthwise_conv2d_forward", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    _check_module((2, 5, 7, 6, 5, (3, 3), (2, 2), (1, 1), (1, 1), 5), torch.float32)
    assert calls, "a depthwise Conv2d did not use kernels/depthwise.py"


# --- GPU tier: real shapes at batch 128 ---------------------------------------------------------

# (c_in, c_out, size, kernel, stride, padding): every conv of CIFAR ResNet-18.
RESNET18 = [
    (3, 64, 32, 3, 1, 1),
    (64, 64, 32, 3, 1, 1),
    (64, 128, 32, 3, 2, 1),
    (128, 128, 16, 3, 1, 1),
    (64, 128, 32, 1, 2, 0),
    (128, 256, 16, 3, 2, 1),
    (256, 256, 8, 3, 1, 1),
    (128, 256, 16, 1, 2, 0),
    (256, 512, 8, 3, 2, 1),
    (512, 512, 4, 3, 1, 1),
    (256, 512, 8, 1, 2, 0),
]
# MobileNetV2's non-depthwise convs on 32x32 inputs: stem, 1x1 expand/project, the 1x1
# shortcut convs of the CIFAR variant's stride-1 channel changes, and the last 1x1.
MOBILENETV2 = [
    (3, 32, 32, 3, 1, 1),
    (32, 32, 32, 1, 1, 0),
    (32, 16, 32, 1, 1, 0),
    (16, 24, 32, 1, 1, 0),
    (64, 96, 8, 1, 1, 0),
    (160, 320, 4, 1, 1, 0),
    (16, 96, 32, 1, 1, 0),
    (96, 24, 32, 1, 1, 0),
    (24, 144, 32, 1, 1, 0),
    (144, 24, 32, 1, 1, 0),
    (144, 32, 16, 1, 1, 0),
    (32, 192, 16, 1, 1, 0),
    (192, 32, 16, 1, 1, 0),
    (192, 64, 8, 1, 1, 0),
    (64, 384, 8, 1, 1, 0),
    (384, 64, 8, 1, 1, 0),
    (384, 96, 8, 1, 1, 0),
    (96, 576, 8, 1, 1, 0),
    (576, 96, 8, 1, 1, 0),
    (576, 160, 4, 1, 1, 0),
    (160, 960, 4, 1, 1, 0),
    (960, 160, 4, 1, 1, 0),
    (960, 320, 4, 1, 1, 0),
    (320, 1280, 4, 1, 1, 0),
]


@pytest.fixture(autouse=True)
def _private_autotune_cache(tmp_path_factory):
    """Tuned choices of these tests go to a temporary cache, never the user's: timings taken
    beside other test workers are noisy. One cache per worker session (tuned once per key)."""
    previous = autotune.set_default_tuner(
        autotune.Tuner(tmp_path_factory.getbasetemp() / "autotune" / "autotune.json")
    )
    yield
    autotune.set_default_tuner(previous)


def _check_gpu_shape(
    n, c_in, c_out, size, k, s, p, groups, dtype, config=None, split_k=None, cast=False, only=None
):
    """fwd, dgrad, wgrad and bias grad of one conv against float64; ``config`` forces the GEMM
    tile, ``cast`` feeds weights already in the activation dtype, ``only`` names the kernels
    to check (default all four). Returns how many kernels were checked."""
    only = only or ("fwd", "dgrad", "wgrad", "bias")
    x = randn(n, c_in, size, size, dtype=dtype, channels_last=True)
    wt, b = _weight(c_out, c_in // groups, k, k), randn(c_out)
    ho = (size + 2 * p - k) // s + 1
    go = randn(n, c_out, ho, ho, dtype=dtype, channels_last=True)
    yr, dxr, dwr, dbr = reference(x, wt, b, go, s, p, 1, groups, device=DEVICE)
    wk = wt.to(dtype) if cast else wt  # cast: weights already in the activation dtype
    args = ((s, s), (p, p), (1, 1), groups)
    tag = f"{c_in}->{c_out} {size}x{size} k{k} s{s} g{groups} {dtype} cast={cast} {config}"
    if "fwd" in only:
        y = K.conv2d_forward(x, wk, b, *args, config=config)
        assert_close(y, yr, dtype, what=f"forward {tag}")
    if "dgrad" in only:
        dx = K.conv2d_dgrad(go, wk, x.shape, *args, config=config)
        assert_close(dx, dxr, dtype, what=f"dgrad {tag}")
    if "wgrad" in only:
        dw = conv_wgrad.conv2d_wgrad(x, go, wt.shape, *args, config=config, split_k=split_k)
        # fp32 sums of exact products of the (rounded) operands: far tighter than the dtype's.
        assert_close(dw, dwr, tol=WGRAD_TOL[dtype], what=f"wgrad {tag}")
    if "bias" in only:
        assert_close(conv_wgrad.conv2d_bias_grad(go), dbr, torch.float32, what=f"bias grad {tag}")
    return len(only)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", RESNET18 + MOBILENETV2, ids=str)
def test_gpu_network_shapes(shape, dtype):
    """Every network shape through the default (autotuned) path."""
    _check_gpu_shape(128, *shape[:2], *shape[2:], groups=1, dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "shape", [(64, 128, 32, 3, 2, 1), (256, 256, 8, 3, 1, 1), (960, 320, 4, 1, 1, 0)], ids=str
)
def test_gpu_bf16(shape):
    _check_gpu_shape(128, *shape, groups=1, dtype=torch.bfloat16)


# Representative shapes for forcing each config: (n, c_in, c_out, size, k, stride, pad,
# groups, split_k). Tap-major 3x3 (strided dgrad phases), grouped, the flattened-K stem, and a
# 1x1 GEMM (IS_1X1: the only shape 8-warp tiles may run).
CONFIG_SHAPES = [
    (32, 96, 80, 16, 3, 2, 1, 1, None),
    (32, 96, 80, 16, 3, 1, 1, 2, None),
    (32, 3, 64, 32, 3, 1, 1, 1, None),
    (32, 144, 272, 8, 1, 1, 0, 1, 4),
]


def _candidate_kernels(cfg, k, s, p, dtype, cast) -> tuple[str, ...]:
    """The kernels whose candidate list can hold ``cfg`` for this geometry and dtype: the
    rules of K.gemm_candidates that don't depend on the problem size."""
    is_1x1 = k == 1 and s == 1 and p == 0
    if cfg.num_warps == 8 and not is_1x1:
        return ()
    a, limit = torch.finfo(dtype).bits // 8, conv_configs.operand_smem_limit()
    out = []
    if cfg.smem_bytes(a, a if cast else 4) <= limit:
        out += ["fwd", "dgrad"]
    if cfg.smem_bytes(a, a) <= limit:
        out.append("wgrad")
    return tuple(out)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dtype,cast", [(torch.float32, False), (torch.float16, False), (torch.float16, True)]
)
@pytest.mark.parametrize("index", range(len(K.CONFIGS)))
def test_gpu_every_config(index, dtype, cast):
    """Each tile the tuner can choose, forced, on every kernel whose candidates may hold it
    (fp32 and fp16 activations; fp32 weights, or fp16 weights)."""
    cfg = K.CONFIGS[index]
    checked = 0
    for n, c_in, c_out, size, k, s, p, g, split_k in CONFIG_SHAPES:
        only = _candidate_kernels(cfg, k, s, p, dtype, cast)
        if only:
            checked += _check_gpu_shape(
                n, c_in, c_out, size, k, s, p, g, dtype, cfg, split_k, cast, only
            )
    if not checked:
        pytest.skip(f"{cfg} is never a candidate for {dtype} (cast={cast}): shared memory")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("index", range(len(K.CONFIGS)))
def test_gpu_wgrad_row_taps(index, dtype):
    """Each 4-warp tile forced into the row form (one program per filter row) on ResNet-18's
    3x3 shapes, written and added, split and not: compiled for the GPU, not only interpreted."""
    cfg = K.CONFIGS[index]
    size_of = torch.empty((), dtype=dtype).element_size()
    if (
        cfg.num_warps != 4
        or cfg.smem_bytes(size_of, 3 * size_of) > conv_configs.operand_smem_limit()
    ):
        pytest.skip(f"{cfg} is never a row-tapped {dtype} candidate (conv2d_wgrad's filter)")
    for n, c_in, c_out, size, s in (
        (128, 64, 64, 32, 1),
        (64, 128, 256, 16, 2),
        (128, 256, 256, 8, 1),
    ):
        x = randn(n, c_in, size, size, dtype=dtype, channels_last=True)
        wt = _weight(c_out, c_in, 3, 3)
        ho = (size - 1) // s + 1
        go = randn(n, c_out, ho, ho, dtype=dtype, channels_last=True)
        args = ((s, s), (1, 1), (1, 1), 1)
        dwr = reference(x, wt, None, go, *args, device=DEVICE)[2]
        for split in (1, 16):
            dw = conv_wgrad.conv2d_wgrad(
                x, go, wt.shape, *args, config=cfg, split_k=split, row_taps=True
            )
            taps = conv_wgrad.conv2d_wgrad(
                x, go, wt.shape, *args, config=cfg, split_k=split, row_taps=False
            )
            what = f"row taps {c_in}->{c_out} {size} {cfg} split {split}"
            # The row form sums each tap in the per-tap kernel's order: the same numbers.
            assert_close(dw, taps, tol=1e-6, what=what + " against one tap per program")
            if split > 1 or dtype == torch.float32:
                # Not unsplit fp16: an H100's tensor-core fp32 accumulator drops low bits of
                # each product sum, so one 131072-pixel chain drifts to 1.5e-4 in every tile
                # and both forms (measured 2026-12-05); splits keep each chain short.
                assert_close(dw, dwr, tol=WGRAD_TOL[dtype], what=what)
            again = dict(grad_weight=dw, config=cfg, split_k=split, row_taps=True)
            conv_wgrad.conv2d_wgrad(x, go, wt.shape, *args, **again)
            assert_close(dw, 2 * taps, tol=1e-6, what=what + " +=")


@pytest.mark.gpu
@pytest.mark.parametrize("split_k", [1, 3, 16, 64, 256])
def test_gpu_split_k(split_k):
    _check_gpu_shape(
        128, 512, 512, 4, 3, 1, 1, groups=1, dtype=torch.float16, split_k=split_k, only=("wgrad",)
    )


@pytest.mark.gpu
@pytest.mark.parametrize("c_in,c_out", [(32, 16), (16, 96), (24, 144), (144, 24)])
def test_gpu_1x1_wgrad_heuristic_splits(c_in, c_out, monkeypatch):
    """MobileNetV2's 32x32 1x1 weight gradients at batch 512 through the untuned heuristic:
    GEMMs of 1-3 tiles, split into 176-512 parts (conv_configs.MAX_SPLITS) and summed by
    splitk_reduce_kernel 64 rows a step (reduce_rows)."""
    monkeypatch.setenv("TRITONCNN_AUTOTUNE", "0")
    tiles = {(32, 16): 1, (16, 96): 2, (24, 144): 3, (144, 24): 3}[(c_in, c_out)]
    pixels = 512 * 32 * 32
    most = conv_configs._max_split(pixels, 64, c_in * c_out)
    split = conv_configs._pick_split(tiles, pixels, 64, per_sm=4, most=most)
    assert split > 64  # more than the bound before 2026-12-08
    _check_gpu_shape(512, c_in, c_out, 32, 1, 1, 0, 1, torch.float16, only=("wgrad",))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("config", conv_configs.BIAS_CONFIGS, ids=str)
def test_gpu_bias_grad_configs(config, dtype):
    """Each bias-gradient tile with the split factors the tuner offers, written and added."""
    go = randn(128, 320, 8, 8, dtype=dtype, channels_last=True)
    dbr = f64(go).sum(dim=(0, 2, 3))
    for split in (1, 2, 8, 64, 256):
        db = conv_wgrad.conv2d_bias_grad(go, config=config, split=split)
        assert_close(db, dbr, torch.float32, what=f"bias grad {config} split {split}")
        conv_wgrad.conv2d_bias_grad(go, grad_bias=db, config=config, split=split)
        assert_close(db, 2 * dbr, torch.float32, what=f"bias grad += {config} split {split}")


@pytest.mark.gpu
def test_gpu_module_nchw_and_accumulate():
    _check_module((64, 3, 32, 32, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1), torch.float16, False)
    _check_module((64, 64, 16, 16, 96, (3, 3), (2, 2), (1, 1), (1, 1), 4), torch.float32)
    # MobileNetV2's 24 -> 144 expand: the 16-bit weight copy with 24-channel rows
    _check_module((64, 24, 32, 32, 144, (1, 1), (1, 1), (0, 0), (1, 1), 1), torch.float16)
