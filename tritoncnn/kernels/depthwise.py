"""Depthwise 2-d convolution (groups == in_channels == out_channels): forward, dgrad, wgrad.

Depthwise convs do ~KH*KW multiply-adds per element they read, so they are memory-bound: no
tensor cores, one pass over the activations, channels innermost. Activations are N,C,H,W
tensors read and written through their element strides; NHWC (channels_last) memory is the
normal case, where a block of channels of one pixel is contiguous and loads are vectorised.
Weights are C,1,KH,KW fp32 (any strides), math is fp32, outputs take the activation dtype.

- forward: one program owns a tile of output pixels x a block of channels and loops over the
  KH*KW taps; bias and activation are fused into the epilogue. 3x3 convs with stride 1 and
  padding 1 (most of MobileNetV2's) take depthwise_rows.py instead, which walks image rows
  and loads each input row once (ROLLING_ROWS), and so does their dgrad.
- dgrad: the same tiling over *input* pixels, gathering the output pixels whose window covers
  each one ((h + pad - kh*dil) divisible by stride and in range): no atomics, no zero-inserted
  copies, every element written.
- wgrad: deterministic two-stage reduction over N*HO*WO: per-program partial sums for a
  channel block and one tap (all nine of a 3x3 kernel in one program) into an fp32 scratch
  buffer, then a small kernel sums the partials in a fixed order and writes (or, with
  ACCUMULATE, adds into) the weight gradient. 3x3 stride-1 convs take depthwise_rows.py's
  stage 1 instead (WGRAD_ROLLING_ROWS: rows of images, each row loaded once).

The heuristics (pick_config, pick_rows_config, pick_wgrad_config) fix every tile and program
count without reading the device, so a result is the same bits on every GPU.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from tritoncnn import runtime
from tritoncnn.kernels.depthwise_rows import (
    RowsConfig,
    applies,
    pending_args,
    rows_conv,
    rows_dgrad_grad_sums,
    rows_wgrad_partials,
    store_tap_partials,
)
from tritoncnn.kernels.elementwise import ACT_NONE, apply_activation
from tritoncnn.kernels.norm_fusion import (
    GradSums,
    PendingNorm,
    TileMoments,
    apply_pending_norm,
    grad_sums,
    grad_sums_args,
    load_pending_norm,
    store_grad_sums,
    store_tile_moments,
    tile_moments,
)
from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs
from tritoncnn.kernels.tile_order import row_channel_grid, row_channel_tile


class DepthwiseConfig(NamedTuple):
    """Tile of the forward and dgrad kernels: BLOCK_P pixels x BLOCK_C channels."""

    block_p: int
    block_c: int
    num_warps: int


class WgradConfig(NamedTuple):
    """Tile of the wgrad partial kernels: BLOCK_C channels, and ``tile`` elements in each
    BLOCK_P x BLOCK_C accumulator (BLOCK_P = tile // BLOCK_C pixels). ``all_taps``: one
    program computes all nine taps of a 3x3 kernel (depthwise_wgrad_taps_kernel, nine
    accumulators), else one tap (depthwise_wgrad_partial_kernel; other kernel sizes always)."""

    block_c: int
    tile: int
    num_warps: int
    all_taps: bool = False


# Every configuration the heuristics can choose (the GPU tier runs each): channel blocks of at
# most 32 with 128 pixels on 4 warps; 2-warp tiles give small layers (2x2, 4x4 images) more
# programs. H200, MobileNetV2's stride-2 layers at batch 512 (benchmarks/depthwise_tiles.py,
# fwd / dgrad us summed): 128x32 on 4 warps 158 / 335, the 64x32 / 32x64 tiles picked before
# 201 / 382, 128x16 202 / 374; 128x32 was the fastest on each layer. No 8-warp configs (non-1x1
# conv miscompiles, pytorch #173068).
CONFIGS: tuple[DepthwiseConfig, ...] = (
    DepthwiseConfig(128, 16, 4),
    DepthwiseConfig(128, 32, 4),
    DepthwiseConfig(32, 32, 2),
)

WGRAD_CONFIGS: tuple[WgradConfig, ...] = (
    WgradConfig(16, 2048, 4),
    WgradConfig(32, 2048, 4),
    WgradConfig(64, 2048, 4),
    # nine 1024-element accumulators: 72 fp32 registers per thread on 4 warps
    WgradConfig(16, 1024, 4, all_taps=True),
    WgradConfig(32, 1024, 4, all_taps=True),
    WgradConfig(64, 1024, 4, all_taps=True),
)

# 3x3 weight gradients with all nine taps in one program (depthwise_wgrad_taps_kernel): the
# per-tap programs read every x and grad_out element nine times from L2, and on MobileNetV2's
# 32x32 layers at batch 512 that traffic, not DRAM, set the time (H200: 500 us for 144
# channels, ~5.4 TB/s of L2 reads for 0.3 GB of tensors). One program re-reads its shifted x
# tiles from L1 instead.
WGRAD_ALL_TAPS = True

# Forward and stride-1 dgrad of 3x3 / padding 1 convs by rolling rows (depthwise_rows.py: each
# input row reaches the SM three times, not nine). H200, MobileNetV2's stride-1 layers at batch
# 512 (benchmarks/depthwise_tiles.py): forward 1413 -> 644 us, dgrad 1020 -> 543 us; the
# graphed step 13.21 -> 11.77 ms.
ROLLING_ROWS = True
# The weight gradient of those convs by rolling rows (depthwise_rows_wgrad_kernel: x and grad_out
# each loaded once, against nine shifted x tiles per pixel tile). H100, MobileNetV2's stride-1
# layers at batch 512 (benchmarks/depthwise_tiles.py): 1168 us (flat all-taps) -> 850 us, cuDNN
# 1007; the graphed step 12.39 -> 12.15 ms (that step ran with 1024 programs, not the 512 below).
WGRAD_ROLLING_ROWS = True
# Its programs in all (96 registers, 24 KB of pipelined rows each: 5 per SM). H100, the same
# layers: 512 programs 850 us, 1024 878 us, 2048 951 us (fewer partial rows for stage 2).
_WGRAD_ROWS_PROGRAMS = 512
# Its row tile (elements: 4 per thread on 4 warps) and input rows in flight per program. H200,
# the 32x16-element tile over the stride-1 layers (fwd / dgrad us): 2 stages 918 / 754,
# 4 (the picks) 644 / 543, 6 679 / 623, 8 710 / 652; 8 elements per thread (64x16, 4 stages)
# 646 / 552 with 165 registers instead of 91.
ROWS_TILE = 512
ROWS_STAGES = 4

# Below this many programs a layer can't fill an H100 (132 SMs x several programs each).
_MIN_PROGRAMS = 512
# Stage-1 wgrad programs aimed for per tap; fixed (not read from the device) so that the
# summation order, hence the result bit for bit, is the same on every machine.
_WGRAD_TARGET_PROGRAMS = 1024
# The same for the all-taps kernel, in all: each program does nine taps' work and stores nine
# partial rows. H100, MobileNetV2's layers at batch 512 (benchmarks/reduction_tiles.py): 1518 us
# in all with 512, 1642 with 1024, 1964 with 2048, 2660 with 4096.
_WGRAD_ALL_TAPS_PROGRAMS = 512
# Pixel tiles each stage-1 wgrad program keeps in flight: tl.range(num_stages=...) pipelines
# the loop's loads (a kernel's num_stages pipelines only loads that feed a tl.dot).
WGRAD_STAGES = 3
# Stage-2 tile: BLOCK_K partial rows x BLOCK_J (tap, channel) entries.
_REDUCE_BLOCK_K = 32
_REDUCE_BLOCK_J = 64


# --- kernels ---------------------------------------------------------------------------------


@triton.jit
def depthwise_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, pmean_ptr, pm2_ptr,
    nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr,
    C, H, W, HO, WO, P,
    sx_n, sx_h, sx_w, sx_c,
    sw_c, sw_h, sw_w,
    sy_n, sy_h, sy_w, sy_c,
    pad_h, pad_w, dil_h, dil_w, alpha, n_alpha,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, MOMENTS: tl.constexpr = False,
    IN_NORM: tl.constexpr = False, IN_HAS_W: tl.constexpr = False,
    IN_HAS_B: tl.constexpr = False, IN_ACT: tl.constexpr = 0,
):  # fmt: skip
    """y[n,c,oh,ow] = act(bias[c] + sum_{kh,kw} x[n,c,oh*s-p+kh*d, ow*s-p+kw*d] * w[c,0,kh,kw]).

    Layout: x and y are N,C,H,W tensors addressed through element strides (NHWC memory makes
    a channel block contiguous); w is C,1,KH,KW through its strides. One program computes
    BLOCK_P output pixels (flat index p over N*HO*WO) x BLOCK_C channels, looping over the
    KH*KW taps; out-of-image taps read zeros (padding). Programs in tile_order's order (the
    channel blocks of a pixel tile side by side).

    x_ptr, w_ptr, b_ptr, y_ptr: input, fp32 weight, fp32 bias (unused unless HAS_BIAS), output.
    C, H, W: input channels and image size. HO, WO: output image size. P: N*HO*WO.
    sx_*, sy_*: element strides of x and y in (n, h, w, c) order. sw_*: weight strides of
    dims 0, 2, 3. pad_h, pad_w, dil_h, dil_w: zero padding and dilation. alpha: the
    activation's parameter (ELU alpha / LeakyReLU slope). KH, KW: kernel size. STRIDE_H,
    STRIDE_W: conv stride. HAS_BIAS: add bias. ACT: activation code of elementwise.py.
    BLOCK_P, BLOCK_C: tile size.
    pmean_ptr, pm2_ptr: with MOMENTS, fp32 [cdiv(P, BLOCK_P), C] per-tile batch-norm moments
    of y as stored (norm_fusion.store_tile_moments; the pixel tile's index is that partial's).
    IN_NORM: x is a batch norm's input whose apply was left to this kernel
    (norm_fusion.PendingNorm): each loaded tap becomes act_in((x - mean) * invstd * w_in +
    b_in) rounded to x's dtype, exactly what bn_apply_kernel would have stored, and padding
    stays zero. nmean_ptr,
    ninvstd_ptr, nw_ptr, nb_ptr: its fp32 [C] statistics and parameters (weight / bias read
    only with IN_HAS_W / IN_HAS_B); IN_ACT, n_alpha: its activation.
    """
    wait_for_inputs()
    pid_p, pid_c = row_channel_tile(C, BLOCK_C)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_mask = p < P
    c_mask = c < C
    # fmt: off
    n_mean, n_scale, n_b = load_pending_norm(nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr, c, c_mask,
                                             IN_NORM, IN_HAS_W, IN_HAS_B, BLOCK_C)
    # fmt: on
    ow = p % WO
    oh = (p // WO) % HO
    n = p // (WO * HO)
    ih0 = oh * STRIDE_H - pad_h
    iw0 = ow * STRIDE_W - pad_w
    # int64 batch offset: N*H*W*C may pass 2**31 for big batches; the rest stays int32.
    x_base = n.to(tl.int64) * sx_n
    x_c = c * sx_c
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for kh in tl.static_range(KH):
        ih = ih0 + kh * dil_h
        h_ok = p_mask & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = iw0 + kw * dil_w
            ok = h_ok & (iw >= 0) & (iw < W)
            x_off = x_base + ih * sx_h + iw * sx_w
            xv = tl.load(
                x_ptr + x_off[:, None] + x_c[None, :],
                mask=ok[:, None] & c_mask[None, :],
                other=0.0,
            ).to(tl.float32)
            if IN_NORM:  # normalised on load; the zero padding is the normalised tensor's
                xv = apply_pending_norm(xv, n_mean, n_scale, n_b, IN_ACT, n_alpha,
                                        x_ptr.dtype.element_ty)  # fmt: skip
                xv = tl.where(ok[:, None], xv, 0.0)
            wv = tl.load(w_ptr + c * sw_c + (kh * sw_h + kw * sw_w), mask=c_mask, other=0.0)
            acc += xv * wv.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    acc = apply_activation(acc, ACT, alpha)
    y_off = n.to(tl.int64) * sy_n + oh * sy_h + ow * sy_w
    y = acc.to(y_ptr.dtype.element_ty)
    tl.store(
        y_ptr + y_off[:, None] + (c * sy_c)[None, :], y, mask=p_mask[:, None] & c_mask[None, :]
    )
    if MOMENTS:
        # fmt: off
        store_tile_moments(pmean_ptr, pm2_ptr, y.to(tl.float32), p_mask,
                           tl.sum(p_mask.to(tl.float32), axis=0), pid_p, c, c_mask, C)
        # fmt: on


@triton.jit
def depthwise_dgrad_kernel(
    go_ptr, w_ptr, gi_ptr,
    xn_ptr, nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr, psum_g_ptr, psum_gx_ptr,
    C, H, W, HO, WO, P,
    sg_n, sg_h, sg_w, sg_c,
    sw_c, sw_h, sw_w,
    si_n, si_h, si_w, si_c,
    sxn_n, sxn_h, sxn_w, sxn_c,
    pad_h, pad_w, dil_h, dil_w, n_alpha,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    GRAD_SUMS: tl.constexpr = False, IN_HAS_W: tl.constexpr = False,
    IN_HAS_B: tl.constexpr = False, IN_ACT: tl.constexpr = 0,
):  # fmt: skip
    """gi[n,c,h,w] = sum over taps (kh,kw) and output pixels (oh,ow) with
    oh*s - p + kh*d == h and ow*s - p + kw*d == w of go[n,c,oh,ow] * w[c,0,kh,kw].

    A gather: for each tap, oh = (h + pad - kh*dil) / stride when that is a non-negative
    multiple of the stride and oh < HO (likewise for w); other taps contribute nothing. Every
    input-gradient element is written once, so there are no atomics and no zero-fill.

    Layout: go (N,C,HO,WO) and gi (N,C,H,W) through element strides, NHWC in the normal case;
    w is C,1,KH,KW through its strides. One program computes BLOCK_P input pixels (flat index
    over N*H*W) x BLOCK_C channels, in tile_order's program order.

    go_ptr, w_ptr, gi_ptr: output gradient, fp32 weight, input gradient (written).
    C, H, W: channels and input image size. HO, WO: output image size. P: N*H*W.
    sg_*, si_*: element strides of go and gi in (n, h, w, c) order. sw_*: weight strides of
    dims 0, 2, 3. pad_h, pad_w, dil_h, dil_w: padding and dilation of the forward conv.
    KH, KW, STRIDE_H, STRIDE_W: kernel size and stride. BLOCK_P, BLOCK_C: tile size.
    GRAD_SUMS: the input is a training batch norm's output (after its fused activation
    IN_ACT, n_alpha) and gi that batch norm's output gradient: the epilogue also stores the
    tile's backward sums (norm_fusion.store_grad_sums) as partial (pixel tile index) of the fp32
    [cdiv(P, BLOCK_P), C] buffers psum_g_ptr, psum_gx_ptr. xn_ptr (strides sxn_*, n,h,w,c) is
    the batch norm's input; nmean_ptr, ninvstd_ptr its fp32 batch statistics, nw_ptr, nb_ptr
    its affine parameters (read when IN_HAS_W / IN_HAS_B).
    """
    wait_for_inputs()
    pid_p, pid_c = row_channel_tile(C, BLOCK_C)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_mask = p < P
    c_mask = c < C
    w_ = p % W
    h = (p // W) % H
    n = p // (W * H)
    g_base = n.to(tl.int64) * sg_n
    g_c = c * sg_c
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for kh in tl.static_range(KH):
        th = h + pad_h - kh * dil_h
        # clamp before dividing so masked lanes never divide a negative number
        th_c = tl.maximum(th, 0)
        oh = th_c // STRIDE_H
        h_ok = p_mask & (th >= 0) & (th_c % STRIDE_H == 0) & (oh < HO)
        for kw in tl.static_range(KW):
            tw = w_ + pad_w - kw * dil_w
            tw_c = tl.maximum(tw, 0)
            ow = tw_c // STRIDE_W
            ok = h_ok & (tw >= 0) & (tw_c % STRIDE_W == 0) & (ow < WO)
            g_off = g_base + oh * sg_h + ow * sg_w
            gv = tl.load(
                go_ptr + g_off[:, None] + g_c[None, :],
                mask=ok[:, None] & c_mask[None, :],
                other=0.0,
            ).to(tl.float32)
            wv = tl.load(w_ptr + c * sw_c + (kh * sw_h + kw * sw_w), mask=c_mask, other=0.0)
            acc += gv * wv.to(tl.float32)[None, :]
    i_off = n.to(tl.int64) * si_n + h * si_h + w_ * si_w
    gi = acc.to(gi_ptr.dtype.element_ty)
    mask = p_mask[:, None] & c_mask[None, :]
    tl.store(gi_ptr + i_off[:, None] + (c * si_c)[None, :], gi, mask=mask)
    if GRAD_SUMS:
        xn_off = n.to(tl.int64) * sxn_n + h * sxn_h + w_ * sxn_w
        xn = tl.load(xn_ptr + xn_off[:, None] + (c * sxn_c)[None, :], mask=mask, other=0.0)
        # fmt: off
        store_grad_sums(psum_g_ptr, psum_gx_ptr, gi.to(tl.float32), xn.to(tl.float32), mask,
                        pid_p, c, c_mask, C, nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr,
                        n_alpha, IN_HAS_W, IN_HAS_B, IN_ACT, BLOCK_C)
        # fmt: on


@triton.jit
def _go_tile(
    go_ptr, p, P, HO, WO, sg_n, sg_h, sg_w, g_c, c_mask, sx_n, pad_h, pad_w,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
):  # fmt: skip
    """For output pixels ``p`` (flat over N*HO*WO; masked past P) of the wgrad kernels:
    (grad_out's BLOCK_P x BLOCK_C tile in fp32, the pixel mask, the input row and column of
    each pixel's window corner ih0 = oh*stride - pad, iw0, and x's offset of its image)."""
    p_mask = p < P
    ow = p % WO
    oh = (p // WO) % HO
    n64 = (p // (WO * HO)).to(tl.int64)
    g_off = n64 * sg_n + oh * sg_h + ow * sg_w
    gv = tl.load(go_ptr + g_off[:, None] + g_c, mask=p_mask[:, None] & c_mask[None, :], other=0.0)
    return gv.to(tl.float32), p_mask, oh * STRIDE_H - pad_h, ow * STRIDE_W - pad_w, n64 * sx_n


@triton.jit
def _tap_product(
    x_ptr, x_base, x_c, ih0, iw0, kh_d, kw_d, H, W, sx_h, sx_w, p_mask, c_mask, gv,
    n_mean, n_scale, n_b, n_alpha, IN_NORM: tl.constexpr, IN_ACT: tl.constexpr,
):  # fmt: skip
    """x[n, c, ih0 + kh_d, iw0 + kw_d] * gv on one BLOCK_P x BLOCK_C tile (0 off the image),
    x normalised as it is loaded when IN_NORM."""
    ih = ih0 + kh_d
    iw = iw0 + kw_d
    ok = p_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    x_off = x_base + ih * sx_h + iw * sx_w
    xv = tl.load(x_ptr + x_off[:, None] + x_c, mask=ok[:, None] & c_mask[None, :], other=0.0)
    xv = xv.to(tl.float32)
    if IN_NORM:
        xv = apply_pending_norm(xv, n_mean, n_scale, n_b, IN_ACT, n_alpha,
                                x_ptr.dtype.element_ty)  # fmt: skip
        xv = tl.where(ok[:, None], xv, 0.0)
    return xv * gv


@triton.jit
def depthwise_wgrad_partial_kernel(
    x_ptr, go_ptr, part_ptr,
    nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr,
    C, H, W, HO, WO, P, ITERS,
    sx_n, sx_h, sx_w, sx_c,
    sg_n, sg_h, sg_w, sg_c,
    pad_h, pad_w, dil_h, dil_w, n_alpha,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, STAGES: tl.constexpr,
    IN_NORM: tl.constexpr = False, IN_HAS_W: tl.constexpr = False,
    IN_HAS_B: tl.constexpr = False, IN_ACT: tl.constexpr = 0,
):  # fmt: skip
    """Stage 1 of wgrad: part[k, t, c] = sum over this program's output pixels (n,oh,ow) of
    x[n,c,oh*s-p+kh*d, ow*s-p+kw*d] * go[n,c,oh,ow], for one tap t = kh*KW + kw.

    Program (k*KH*KW + t, j) (tile_order's (row tile, channel block)) owns tap t, output
    pixels [k*ITERS*BLOCK_P, (k+1)*ITERS*BLOCK_P) of the flat N*HO*WO index and channels
    [j*BLOCK_C, (j+1)*BLOCK_C), accumulating a BLOCK_P x BLOCK_C fp32 tile that is reduced
    over pixels once, at the end (a fixed order: deterministic). After the channel block, the
    tap is the fastest program index, so the KH*KW programs of one pixel chunk run side by
    side and their shared go tile and overlapping x windows come from L2. (3x3 kernels take
    depthwise_wgrad_taps_kernel: nine taps in one program, which reads those from L1.)

    x_ptr (N,C,H,W), go_ptr (N,C,HO,WO): read through element strides (NHWC in the normal
    case). part_ptr: contiguous fp32 scratch [chunks, KH*KW, C].
    C, H, W: channels and input size. HO, WO: output size. P: N*HO*WO. ITERS: pixel tiles per
    program. sx_*, sg_*: element strides of x and go in (n, h, w, c) order. pad_h, pad_w,
    dil_h, dil_w: padding, dilation. KH, KW, STRIDE_H, STRIDE_W: kernel size and stride.
    BLOCK_P, BLOCK_C: tile size. STAGES: pixel tiles in flight (pipelined loads; WGRAD_STAGES).
    IN_NORM, IN_HAS_W, IN_HAS_B, IN_ACT, nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr, n_alpha: x
    is normalised as it is loaded, as in depthwise_fwd_kernel.
    """
    wait_for_inputs()
    pid, pid_c = row_channel_tile(C, BLOCK_C)
    chunk = pid // (KH * KW)
    t = pid - chunk * (KH * KW)
    kh_d = (t // KW) * dil_h
    kw_d = (t % KW) * dil_w
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    # fmt: off
    n_mean, n_scale, n_b = load_pending_norm(nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr, c, c_mask,
                                             IN_NORM, IN_HAS_W, IN_HAS_B, BLOCK_C)
    # fmt: on
    x_c = (c * sx_c)[None, :]
    g_c = (c * sg_c)[None, :]
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for it in tl.range(ITERS, num_stages=STAGES):
        p = (chunk * ITERS + it) * BLOCK_P + tl.arange(0, BLOCK_P)
        # fmt: off
        gv, p_mask, ih0, iw0, x_base = _go_tile(go_ptr, p, P, HO, WO, sg_n, sg_h, sg_w, g_c,
                                                c_mask, sx_n, pad_h, pad_w, STRIDE_H, STRIDE_W)
        acc += _tap_product(x_ptr, x_base, x_c, ih0, iw0, kh_d, kw_d, H, W, sx_h, sx_w, p_mask,
                            c_mask, gv, n_mean, n_scale, n_b, n_alpha, IN_NORM, IN_ACT)
        # fmt: on
    part = tl.sum(acc, axis=0)  # BLOCK_C
    row = (chunk.to(tl.int64) * (KH * KW) + t) * C
    tl.store(part_ptr + row + c, part, mask=c_mask)


@triton.jit
def depthwise_wgrad_taps_kernel(
    x_ptr, go_ptr, part_ptr,
    nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr,
    C, H, W, HO, WO, P, ITERS,
    sx_n, sx_h, sx_w, sx_c,
    sg_n, sg_h, sg_w, sg_c,
    pad_h, pad_w, dil_h, dil_w, n_alpha,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, STAGES: tl.constexpr,
    IN_NORM: tl.constexpr = False, IN_HAS_W: tl.constexpr = False,
    IN_HAS_B: tl.constexpr = False, IN_ACT: tl.constexpr = 0,
):  # fmt: skip
    """Stage 1 of a 3x3 wgrad with every tap in one program: part[k, t, c] as
    depthwise_wgrad_partial_kernel computes it, for all nine taps t = kh*3 + kw at once.

    Program (k, j) (tile_order's (row tile, channel block)) owns output pixels
    [k*ITERS*BLOCK_P, (k+1)*ITERS*BLOCK_P) of the flat N*HO*WO index and channels
    [j*BLOCK_C, (j+1)*BLOCK_C). Each pixel tile loads its go tile
    once and the nine shifted x tiles (overlapping windows: mostly L1 hits), accumulating
    nine BLOCK_P x BLOCK_C fp32 tiles, each reduced over pixels once at the end (a fixed
    order: deterministic). Arguments as depthwise_wgrad_partial_kernel's, KH = KW = 3.
    """
    wait_for_inputs()
    chunk, pid_c = row_channel_tile(C, BLOCK_C)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    # fmt: off
    n_mean, n_scale, n_b = load_pending_norm(nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr, c, c_mask,
                                             IN_NORM, IN_HAS_W, IN_HAS_B, BLOCK_C)
    # fmt: on
    x_c = (c * sx_c)[None, :]
    g_c = (c * sg_c)[None, :]
    acc0 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc4 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc5 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc6 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc7 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc8 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for it in tl.range(ITERS, num_stages=STAGES):
        p = (chunk * ITERS + it) * BLOCK_P + tl.arange(0, BLOCK_P)
        # fmt: off
        gv, p_mask, ih0, iw0, x_base = _go_tile(go_ptr, p, P, HO, WO, sg_n, sg_h, sg_w, g_c,
                                                c_mask, sx_n, pad_h, pad_w, STRIDE_H, STRIDE_W)
        acc0 += _tap_product(x_ptr, x_base, x_c, ih0, iw0, 0, 0, H, W, sx_h, sx_w, p_mask,
                             c_mask, gv, n_mean, n_scale, n_b, n_alpha, IN_NORM, IN_ACT)
        acc1 += _tap_product(x_ptr, x_base, x_c, ih0, iw0, 0, dil_w, H, W, sx_h, sx_w, p_mask,
                             c_mask, gv, n_mean, n_scale, n_b, n_alpha, IN_NORM, IN_ACT)
        acc2 += _tap_product(x_ptr, x_base, x_c, ih0, iw0, 0, 2 * dil_w, H, W, sx_h, sx_w,
                             p_mask, c_mask, gv, n_mean, n_scale, n_b, n_alpha, IN_NORM, IN_ACT)
        acc3 += _tap_product(x_ptr, x_base, x_c, ih0, iw0, dil_h, 0, H, W, sx_h, sx_w, p_mask,
                             c_mask, gv, n_mean, n_scale, n_b, n_alpha, IN_NORM, IN_ACT)
        acc4 += _tap_product(x_ptr, x_base, x_c, ih0, iw0, dil_h, dil_w, H, W, sx_h, sx_w,
                             p_mask, c_mask, gv, n_mean, n_scale, n_b, n_alpha, IN_NORM, IN_ACT)
        acc5 += _tap_product(x_ptr, x_base, x_c, ih0, iw0, dil_h, 2 * dil_w, H, W, sx_h, sx_w,
                             p_mask, c_mask, gv, n_mean, n_scale, n_b, n_alpha, IN_NORM, IN_ACT)
        acc6 += _tap_product(x_ptr, x_base, x_c, ih0, iw0, 2 * dil_h, 0, H, W, sx_h, sx_w,
                             p_mask, c_mask, gv, n_mean, n_scale, n_b, n_alpha, IN_NORM, IN_ACT)
        acc7 += _tap_product(x_ptr, x_base, x_c, ih0, iw0, 2 * dil_h, dil_w, H, W, sx_h, sx_w,
                             p_mask, c_mask, gv, n_mean, n_scale, n_b, n_alpha, IN_NORM, IN_ACT)
        acc8 += _tap_product(x_ptr, x_base, x_c, ih0, iw0, 2 * dil_h, 2 * dil_w, H, W, sx_h,
                             sx_w, p_mask, c_mask, gv, n_mean, n_scale, n_b, n_alpha, IN_NORM,
                             IN_ACT)
        # fmt: on
    # fmt: off
    store_tap_partials(part_ptr, chunk, c, c_mask, C, acc0, acc1, acc2, acc3, acc4, acc5, acc6,
                       acc7, acc8)
    # fmt: on


@triton.jit
def depthwise_wgrad_reduce_kernel(
    part_ptr, gw_ptr, K, C, J,
    sgw_c, sgw_h, sgw_w,
    KW: tl.constexpr, ACCUMULATE: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr,
):  # fmt: skip
    """Stage 2 of wgrad: gw[c,0,kh,kw] (+)= sum_k part[k, kh*KW+kw, c], summed in a fixed
    order (BLOCK_K rows at a time, then one tree reduction), so results are deterministic.

    part_ptr: contiguous fp32 [K, J] with J = KH*KW*C (row-major (tap, channel) entries).
    gw_ptr: fp32 C,1,KH,KW weight gradient through strides sgw_c, sgw_h, sgw_w (dims 0, 2, 3).
    K: number of partial rows. C: channels. J: entries per row. KW: kernel width.
    ACCUMULATE: add into gw instead of overwriting it. One program owns BLOCK_J entries.
    """
    wait_for_inputs()
    j = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    j_mask = j < J
    acc = tl.zeros((BLOCK_K, BLOCK_J), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        acc += tl.load(
            part_ptr + k.to(tl.int64)[:, None] * J + j[None, :],
            mask=(k < K)[:, None] & j_mask[None, :],
            other=0.0,
        )
    total = tl.sum(acc, axis=0)
    t = j // C
    c = j % C
    ptrs = gw_ptr + c * sgw_c + (t // KW) * sgw_h + (t % KW) * sgw_w
    if ACCUMULATE:
        total += tl.load(ptrs, mask=j_mask, other=0.0)
    tl.store(ptrs, total, mask=j_mask)


# --- launch helpers --------------------------------------------------------------------------


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    a, b = v
    return int(a), int(b)


def _out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _channel_block(c: int) -> int:
    """The widest channel block (<= 64) that pads C by at most 1/8; 16 when none does."""
    for bc in (64, 32, 16):
        if triton.cdiv(c, bc) * bc * 8 <= c * 9:
            return bc
    return 16


def pick_config(channels: int, pixels: int) -> DepthwiseConfig:
    """Flat forward/dgrad tile for ``channels`` x ``pixels`` (output pixels for the forward,
    input pixels for dgrad): the widest low-waste channel block up to 32, 2-warp tiles for
    small layers."""
    if runtime.INTERPRETED:  # few, large tiles: see runtime.interpreter_block
        block_c = runtime.interpreter_block(channels, 128)
        return DepthwiseConfig(max(16, 8192 // block_c), block_c, 4)
    bc = min(_channel_block(channels), 32)
    big = [cfg for cfg in CONFIGS if cfg.block_c == bc and cfg.num_warps == 4][0]
    programs = triton.cdiv(pixels, big.block_p) * triton.cdiv(channels, bc)
    if programs < _MIN_PROGRAMS:
        for cfg in CONFIGS:
            if cfg.block_c == bc and cfg.num_warps == 2:
                return cfg
    return big


def pick_rows_config(channels: int, width: int) -> RowsConfig:
    """The rolling-rows tile (depthwise_rows.py) for images ``width`` wide: ROWS_TILE
    elements per row tile, so each thread holds 4 channels of one pixel (8-byte loads, 36
    weight registers, ~90 registers in all with the moments: 5 programs per SM); the widest
    low-waste channel block that leaves a whole image row in the tile."""
    block_w = triton.next_power_of_2(width)
    if runtime.INTERPRETED:  # few, large tiles: see runtime.interpreter_block
        block_c = runtime.interpreter_block(channels, 128)
        return RowsConfig(max(block_w, 8192 // block_c), block_c, 4)
    block_c = min(_channel_block(channels), max(16, ROWS_TILE // block_w))
    return RowsConfig(max(block_w, ROWS_TILE // block_c), block_c, 4, ROWS_STAGES)


def _rows_config(config, kernel, stride, padding, dilation, channels, width, enabled=None):
    """The RowsConfig a forward / dgrad / wgrad launch runs its rolling-rows kernel with, or
    None for the flat kernels: ``config`` when it is one (the conv must be one the kernel
    computes), else the pick when ``enabled`` (default ROLLING_ROWS) and the conv qualifies."""
    enabled = ROLLING_ROWS if enabled is None else enabled
    fits = applies(kernel, stride, padding, dilation)
    if isinstance(config, RowsConfig):
        if not fits:
            raise ValueError(
                "depthwise: a RowsConfig needs a 3x3 kernel, stride 1, padding 1, dilation 1; "
                "pass a DepthwiseConfig (or None)"
            )
        return config
    if config is None and enabled and fits:
        return pick_rows_config(channels, width)
    return None


def pick_wgrad_config(channels: int, kernel_size: tuple[int, int] = (3, 3)) -> WgradConfig:
    """wgrad tile: the widest low-waste channel block; all taps in one program for a 3x3
    kernel (when WGRAD_ALL_TAPS)."""
    bc = _channel_block(channels)
    all_taps = WGRAD_ALL_TAPS and tuple(kernel_size) == (3, 3)
    return [cfg for cfg in WGRAD_CONFIGS if cfg.block_c == bc and cfg.all_taps == all_taps][0]


def _check(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"depthwise {what}: expected an N,C,H,W tensor, got {tuple(x.shape)}")
    if x.dtype not in runtime.SUPPORTED_DTYPES:
        raise ValueError(f"depthwise {what}: unsupported dtype {x.dtype}")


def _check_weight_shape(shape, channels: int) -> tuple[int, int]:
    if len(shape) != 4 or shape[0] != channels or shape[1] != 1:
        raise ValueError(f"depthwise weight must be {channels},1,KH,KW, got {tuple(shape)}")
    return int(shape[2]), int(shape[3])


def depthwise_conv2d_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride,
    padding,
    dilation,
    act: int = ACT_NONE,
    alpha: float = 0.0,
    config: DepthwiseConfig | RowsConfig | None = None,
    pending: PendingNorm | None = None,
) -> torch.Tensor:
    """act(conv2d(x, weight, bias, groups=C)) as a new N,C,HO,WO channels_last tensor in x's
    dtype. ``weight`` is fp32 C,1,KH,KW and ``bias`` fp32 C (or None), any strides;
    stride/padding/dilation are (h, w) pairs (or ints). ``pending``: x is a batch norm's input
    whose apply (and activation) this conv does as it loads x (norm_fusion.PendingNorm)."""
    args = (x, weight, bias, stride, padding, dilation, act, alpha, config, False, pending)
    return _forward(*args)[0]


def depthwise_conv2d_forward_moments(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride,
    padding,
    dilation,
    config: DepthwiseConfig | RowsConfig | None = None,
    pending: PendingNorm | None = None,
) -> tuple[torch.Tensor, TileMoments]:
    """``depthwise_conv2d_forward`` for a conv that feeds a training batch norm: also returns
    the per-tile moments of the output that its epilogue stored (norm_fusion.TileMoments)."""
    args = (x, weight, bias, stride, padding, dilation, ACT_NONE, 0.0, config, True, pending)
    y, moments = _forward(*args)
    assert moments is not None
    return y, moments


def _forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride,
    padding,
    dilation,
    act: int,
    alpha: float,
    config: DepthwiseConfig | RowsConfig | None,
    moments: bool,
    pending: PendingNorm | None = None,
) -> tuple[torch.Tensor, TileMoments | None]:
    """The forward launch; with ``moments``, also the output's per-tile moments."""
    _check(x, "forward")
    n, c, h, w = x.shape
    kh, kw = _check_weight_shape(weight.shape, c)
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    ho, wo = _out_size(h, kh, sh, ph, dh), _out_size(w, kw, sw, pw, dw)
    if ho <= 0 or wo <= 0:
        raise ValueError(f"depthwise forward: empty output {ho}x{wo} for input {h}x{w}")
    if bias is not None and bias.shape != (c,):
        raise ValueError(f"depthwise bias must have shape ({c},), got {tuple(bias.shape)}")
    rows = _rows_config(config, (kh, kw), (sh, sw), (ph, pw), (dh, dw), c, w)
    if rows is not None:
        return rows_conv(x, weight, bias, act, alpha, rows, moments, pending=pending)
    y = runtime.empty_nhwc(n, c, ho, wo, x.dtype)
    pixels = n * ho * wo
    cfg = config or pick_config(c, pixels)
    grid = row_channel_grid(pixels, cfg.block_p, c, cfg.block_c)
    tiles = tile_moments(pixels, c, cfg.block_p) if moments else None
    parts = tiles.partials if tiles is not None else (y, y)
    in_ptrs, in_alpha, in_flags = pending_args(pending, c, weight)
    depthwise_fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, y, parts[0], parts[1], *in_ptrs,
        c, h, w, ho, wo, pixels,
        *runtime.nhwc_strides(x),
        weight.stride(0), weight.stride(2), weight.stride(3),
        *runtime.nhwc_strides(y),
        ph, pw, dh, dw, float(alpha), in_alpha,
        KH=kh, KW=kw, STRIDE_H=sh, STRIDE_W=sw,
        HAS_BIAS=bias is not None, ACT=act,
        BLOCK_P=cfg.block_p, BLOCK_C=cfg.block_c, MOMENTS=moments, **in_flags,
        num_warps=cfg.num_warps,
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return y, tiles


def depthwise_conv2d_dgrad(
    grad_out: torch.Tensor,
    weight: torch.Tensor,
    input_shape,
    stride,
    padding,
    dilation,
    config: DepthwiseConfig | RowsConfig | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Input gradient of a depthwise conv: a new channels_last N,C,H,W tensor (``input_shape``)
    in grad_out's dtype, or written into ``out`` (any strides, e.g. ``runtime.empty_like`` of
    an NCHW input, so the gradient keeps the input's layout). ``weight`` is the fp32
    C,1,KH,KW forward weight, any strides."""
    args = (grad_out, weight, input_shape, stride, padding, dilation, config, out)
    return _dgrad(*args, None, None)[0]


def depthwise_conv2d_dgrad_grad_sums(
    grad_out: torch.Tensor,
    weight: torch.Tensor,
    input_shape,
    stride,
    padding,
    dilation,
    bn_input: torch.Tensor,
    bn: PendingNorm,
    config: DepthwiseConfig | RowsConfig | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, GradSums]:
    """``depthwise_conv2d_dgrad`` for a conv whose input is a training batch norm's output
    (``bn``: its statistics, parameters and fused activation; ``bn_input``: its input); also
    returns the batch norm's backward sums the epilogue stored (norm_fusion.GradSums)."""
    args = (grad_out, weight, input_shape, stride, padding, dilation, config, out)
    grad_in, sums = _dgrad(*args, bn_input, bn)
    assert sums is not None
    return grad_in, sums


def _dgrad(
    grad_out: torch.Tensor,
    weight: torch.Tensor,
    input_shape,
    stride,
    padding,
    dilation,
    config: DepthwiseConfig | RowsConfig | None,
    out: torch.Tensor | None,
    bn_input: torch.Tensor | None,
    bn: PendingNorm | None,
) -> tuple[torch.Tensor, GradSums | None]:
    """The dgrad launch; with ``bn``, also the batch norm's per-tile backward sums."""
    _check(grad_out, "dgrad")
    n, c, h, w = (int(s) for s in input_shape)
    kh, kw = _check_weight_shape(weight.shape, c)
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    ho, wo = _out_size(h, kh, sh, ph, dh), _out_size(w, kw, sw, pw, dw)
    if tuple(grad_out.shape) != (n, c, ho, wo):
        raise ValueError(
            f"depthwise dgrad: grad_out {tuple(grad_out.shape)} != expected {(n, c, ho, wo)}"
        )
    if out is None:
        grad_in = runtime.empty_nhwc(n, c, h, w, grad_out.dtype)
    elif tuple(out.shape) != (n, c, h, w):
        raise ValueError(f"depthwise dgrad: out {tuple(out.shape)} != input shape {(n, c, h, w)}")
    else:
        grad_in = out
    rows = _rows_config(config, (kh, kw), (sh, sw), (ph, pw), (dh, dw), c, w)
    if rows is not None:  # stride 1: the correlation with the rotated kernel
        if bn is not None:
            return rows_dgrad_grad_sums(grad_out, weight, rows, bn_input, bn, grad_in)
        return rows_conv(grad_out, weight, None, ACT_NONE, 0.0, rows, False, True, grad_in)[0], None
    pixels = n * h * w
    cfg = config or pick_config(c, pixels)
    grid = row_channel_grid(pixels, cfg.block_p, c, cfg.block_c)
    sums = grad_sums(triton.cdiv(pixels, cfg.block_p), c) if bn is not None else None
    parts = (sums.partials[0], sums.partials[1]) if sums is not None else (grad_in, grad_in)
    xn, norm_ptrs, norm_alpha, norm_flags = grad_sums_args(
        bn, bn_input, (n, c, h, w), grad_in, "depthwise dgrad:"
    )
    depthwise_dgrad_kernel[grid](
        grad_out, weight, grad_in, xn, *norm_ptrs, *parts,
        c, h, w, ho, wo, pixels,
        *runtime.nhwc_strides(grad_out),
        weight.stride(0), weight.stride(2), weight.stride(3),
        *runtime.nhwc_strides(grad_in),
        *runtime.nhwc_strides(xn),
        ph, pw, dh, dw, norm_alpha,
        KH=kh, KW=kw, STRIDE_H=sh, STRIDE_W=sw,
        BLOCK_P=cfg.block_p, BLOCK_C=cfg.block_c,
        GRAD_SUMS=bn is not None, **norm_flags, num_warps=cfg.num_warps,
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return grad_in, sums


def depthwise_conv2d_wgrad(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    weight_shape,
    stride,
    padding,
    dilation,
    grad_weight: torch.Tensor | None = None,
    config: WgradConfig | RowsConfig | None = None,
    pending: PendingNorm | None = None,
) -> torch.Tensor:
    """Weight gradient of a depthwise conv, fp32 C,1,KH,KW (``weight_shape``). Written into a
    new channels_last tensor when ``grad_weight`` is None, else added into ``grad_weight``
    (fp32, any strides) and that tensor returned. Deterministic (fixed summation order).
    ``pending``: the forward's (x is normalised as it is loaded, norm_fusion.PendingNorm)."""
    _check(x, "wgrad")
    _check(grad_out, "wgrad")
    n, c, h, w = x.shape
    kh, kw = _check_weight_shape(weight_shape, c)
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    ho, wo = _out_size(h, kh, sh, ph, dh), _out_size(w, kw, sw, pw, dw)
    if tuple(grad_out.shape) != (n, c, ho, wo):
        raise ValueError(
            f"depthwise wgrad: grad_out {tuple(grad_out.shape)} != expected {(n, c, ho, wo)}"
        )
    accumulate = grad_weight is not None
    if accumulate:
        if tuple(grad_weight.shape) != (c, 1, kh, kw) or grad_weight.dtype != torch.float32:
            raise ValueError("depthwise wgrad: grad_weight must be fp32 C,1,KH,KW")
    else:
        grad_weight = runtime.empty_nhwc(c, 1, kh, kw, torch.float32)

    geometry = ((kh, kw), (sh, sw), (ph, pw), (dh, dw))
    rows = _rows_config(config, *geometry, c, w, WGRAD_ROLLING_ROWS)
    if rows is not None:
        groups = _rows_wgrad_groups(n, c, w, rows)
        partials = rows_wgrad_partials(x, grad_out, rows, groups, pending)
        _wgrad_reduce(partials, grad_weight, accumulate)
        return grad_weight
    cfg = config or pick_wgrad_config(c, (kh, kw))
    all_taps = cfg.all_taps and (kh, kw) == (3, 3)
    block_p = cfg.tile // cfg.block_c
    pixels = n * ho * wo
    c_blocks = triton.cdiv(c, cfg.block_c)
    # Split the pixels so that ~target programs run (per tap for the one-tap kernel), each over
    # whole tiles.
    target = _WGRAD_ALL_TAPS_PROGRAMS if all_taps else _WGRAD_TARGET_PROGRAMS
    target = 4 if runtime.INTERPRETED else target  # the interpreter is serial
    chunks_wanted = max(1, target // c_blocks)
    iters = max(1, triton.cdiv(triton.cdiv(pixels, chunks_wanted), block_p))
    chunks = triton.cdiv(pixels, iters * block_p)
    partials = runtime.empty((chunks, kh * kw, c), torch.float32)
    in_ptrs, in_alpha, in_flags = pending_args(pending, c, partials)
    args = (
        x, grad_out, partials, *in_ptrs,
        c, h, w, ho, wo, pixels, iters,
        *runtime.nhwc_strides(x),
        *runtime.nhwc_strides(grad_out),
        ph, pw, dh, dw, in_alpha,
    )  # fmt: skip
    meta = dict(STRIDE_H=sh, STRIDE_W=sw, BLOCK_P=block_p, BLOCK_C=cfg.block_c,
                STAGES=WGRAD_STAGES, num_warps=cfg.num_warps, **in_flags)  # fmt: skip
    if all_taps:
        depthwise_wgrad_taps_kernel[row_channel_grid(chunks, 1, c, cfg.block_c)](
            *args, **meta, launch_pdl=LAUNCH_PDL
        )
    else:
        grid = row_channel_grid(chunks * kh * kw, 1, c, cfg.block_c)
        depthwise_wgrad_partial_kernel[grid](*args, KH=kh, KW=kw, **meta, launch_pdl=LAUNCH_PDL)
    _wgrad_reduce(partials, grad_weight, accumulate)
    return grad_weight


def _rows_wgrad_groups(n: int, c: int, w: int, cfg: RowsConfig) -> int:
    """Row tiles of images each rolling-rows wgrad program walks: about _WGRAD_ROWS_PROGRAMS
    programs in all (fixed, not read from the device: the same partials, so the same bits, on
    every machine), hence about that many partial rows per channel block for stage 2."""
    block_n = max(1, cfg.pixels // triton.next_power_of_2(w))
    tiles = triton.cdiv(n, block_n)
    target = 4 if runtime.INTERPRETED else _WGRAD_ROWS_PROGRAMS
    wanted = max(1, target // triton.cdiv(c, cfg.block_c))
    return triton.cdiv(tiles, min(tiles, wanted))


def _wgrad_reduce(partials: torch.Tensor, grad_weight: torch.Tensor, accumulate: bool) -> None:
    """Stage 2 of wgrad: the [chunks, KH*KW, C] partials summed into (or, with
    ``accumulate``, added to) the C,1,KH,KW ``grad_weight``."""
    chunks, taps, c = partials.shape
    entries = taps * c
    depthwise_wgrad_reduce_kernel[(triton.cdiv(entries, _REDUCE_BLOCK_J),)](
        partials, grad_weight, chunks, c, entries,
        grad_weight.stride(0), grad_weight.stride(2), grad_weight.stride(3),
        KW=grad_weight.shape[3], ACCUMULATE=accumulate,
        BLOCK_K=_REDUCE_BLOCK_K, BLOCK_J=_REDUCE_BLOCK_J, num_warps=4,
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
