"""Depthwise 3x3 convolution, stride 1, padding 1, by rolling rows: each input row loaded once.

depthwise_fwd_kernel computes a tile of output pixels from nine shifted loads of the input,
one per tap, all in flight together, so the L1 cache can't serve the overlap and each input
element reaches the SM nine times from L2 (MobileNetV2's 32x32 layers at batch 512: ~1 TB/s
of DRAM-level bandwidth). Here a program walks the rows of whole images from top to bottom.
Input row r is loaded once (three column shifts: left, centre, right neighbour) and multiplied
by the three kernel rows; the products go to output rows r + 1, r and r - 1, held in three
rolling accumulators. After row r, output row r - 1 has all nine taps and is stored, so the
input crosses L2 three times (the column shifts) instead of nine, and the loop's loads can be
pipelined.

The same kernel computes a stride-1 dgrad: grad_in is the correlation of grad_out with the
kernel rotated by 180 degrees, which the launch passes as a weight pointer to the last tap
with negated strides. The weight gradient walks the rows the same way
(depthwise_rows_wgrad_kernel): input row r meets grad_out rows r + 1, r and r - 1: six loads
per row tile (three column shifts of x, three rows of grad_out) against the nine shifted input
tiles and one grad_out tile per pixel tile of depthwise_wgrad_taps_kernel.

Layout: x and y are N,C,H,W tensors addressed through element strides (NHWC memory in the
normal case); the weight is C,1,3,3 fp32 through its strides; math in fp32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from tritoncnn import runtime
from tritoncnn.kernels.elementwise import ACT_NONE, apply_activation
from tritoncnn.kernels.norm_fusion import (
    GradSums,
    PendingNorm,
    TileMoments,
    apply_pending_norm,
    grad_sums,
    grad_sums_args,
    grad_sums_terms,
    load_grad_sums_norm,
    load_pending_norm,
    merge_lanes,
    pending_norm_args,
    tile_moments,
)
from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs
from tritoncnn.kernels.tile_order import row_channel_grid, row_channel_tile


class RowsConfig(NamedTuple):
    """Tile of depthwise_rows_kernel: one image row of ``pixels`` // W images (the row's
    columns padded to a power of two) x ``block_c`` channels, on ``num_warps`` warps, with
    ``stages`` input rows in flight (tl.range pipelining)."""

    pixels: int
    block_c: int
    num_warps: int
    stages: int = 4


# Every configuration depthwise.pick_rows_config can choose (ROWS_TILE = 512, 4 stages), and
# the ones the GPU tier runs.
ROWS_CONFIGS: tuple[RowsConfig, ...] = (
    RowsConfig(32, 16, 4, 4),
    RowsConfig(16, 32, 4, 4),
    RowsConfig(8, 64, 4, 4),
)


@triton.jit
def _row_loads(x_ptr, row_off, col_l, col_c, col_r, ok_l, ok_c, ok_r, x_c, c_mask):
    """The input row at ``row_off`` (int64 per pixel: image + row offset) as three BLOCK_R x
    BLOCK_C fp32 tiles: each pixel's left neighbour, itself and its right neighbour (zero off
    the image)."""
    base = x_ptr + row_off[:, None] + x_c[None, :]
    cm = c_mask[None, :]
    xl = tl.load(base + col_l[:, None], mask=ok_l[:, None] & cm, other=0.0).to(tl.float32)
    xc = tl.load(base + col_c[:, None], mask=ok_c[:, None] & cm, other=0.0).to(tl.float32)
    xr = tl.load(base + col_r[:, None], mask=ok_r[:, None] & cm, other=0.0).to(tl.float32)
    return xl, xc, xr


@triton.jit
def _normalise_row(xl, xc, xr, ok_l, ok_c, ok_r, n_mean, n_scale, n_b, n_alpha,
                   IN_ACT: tl.constexpr, DTYPE: tl.constexpr):  # fmt: skip
    """The three shifted loads of a batch norm's input as that batch norm's applied output
    (norm_fusion.apply_pending_norm: bn_apply_kernel's values); the padding stays zero."""
    xl = tl.where(ok_l[:, None], apply_pending_norm(xl, n_mean, n_scale, n_b, IN_ACT, n_alpha,
                                                    DTYPE), 0.0)  # fmt: skip
    xc = tl.where(ok_c[:, None], apply_pending_norm(xc, n_mean, n_scale, n_b, IN_ACT, n_alpha,
                                                    DTYPE), 0.0)  # fmt: skip
    xr = tl.where(ok_r[:, None], apply_pending_norm(xr, n_mean, n_scale, n_b, IN_ACT, n_alpha,
                                                    DTYPE), 0.0)  # fmt: skip
    return xl, xc, xr


@triton.jit
def _kernel_row(xl, xc, xr, wa, wb, wc):
    """One kernel row applied to the three shifted loads of an input row."""
    return xl * wa[None, :] + xc * wb[None, :] + xr * wc[None, :]


@triton.jit
def _welford_row(lane_mean, lane_m2, y, k):
    """Welford's update of each tile element's running (mean, M2) with its k-th value, the
    output row ``y`` as stored (masked lanes are left out later, by their zero count)."""
    yf = y.to(tl.float32)
    delta = yf - lane_mean
    lane_mean += delta * (1.0 / k)  # one division per row, not per element
    return lane_mean, lane_m2 + delta * (yf - lane_mean)


@triton.jit
def _grad_sums_row(sum_g, sum_gx, y, xn_ptr, xn_off, row_off, valid, mean, invstd, w, b, alpha,
                   ACT: tl.constexpr):  # fmt: skip
    """Add a stored dgrad row's batch-norm backward terms (norm_fusion.grad_sums_terms: g' and
    g' * xhat, from the values as stored and the batch norm's input row) to the running
    per-element sums."""
    x = tl.load(xn_ptr + xn_off + row_off, mask=valid, other=0.0).to(tl.float32)
    g, gx = grad_sums_terms(y.to(tl.float32), x, valid, mean, invstd, w, b, alpha, ACT)
    return sum_g + g, sum_gx + gx


@triton.jit
def _tap(w_ptr, c, c_mask, sw_c, kh: tl.constexpr, kw: tl.constexpr, sw_h, sw_w):
    """Tap (kh, kw) of the weight for channels c, fp32."""
    return tl.load(w_ptr + c * sw_c + (kh * sw_h + kw * sw_w), mask=c_mask, other=0.0)


@triton.jit
def depthwise_rows_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, pmean_ptr, pm2_ptr,
    nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr,
    N, C, H, W,
    sx_n, sx_h, sx_w, sx_c,
    sw_c, sw_h, sw_w,
    sy_n, sy_h, sy_w, sy_c,
    alpha, n_alpha,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, MOMENTS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
    STAGES: tl.constexpr,
    IN_NORM: tl.constexpr = False, IN_HAS_W: tl.constexpr = False,
    IN_HAS_B: tl.constexpr = False, IN_ACT: tl.constexpr = 0,
    xn_ptr=None, sn_n=0, sn_h=0, sn_w=0, sn_c=0, GRAD_SUMS: tl.constexpr = False,
):  # fmt: skip
    """y[n,c,h,w] = act(bias[c] + sum_{a,b in 0..2} x[n,c,h-1+a,w-1+b] * w[c,0,a,b]); zero
    padding, output H x W.

    Program (g, j) (tile_order's (row tile, channel block)) owns images [g*BLOCK_N,
    (g+1)*BLOCK_N), all their rows and columns, and channels [j*BLOCK_C, (j+1)*BLOCK_C). Its
    row tile is one image row of each of its images: BLOCK_R = BLOCK_N * BLOCK_W pixels
    (column w of image n0 + i at index i * BLOCK_W + w; columns past W masked). Iteration r
    loads input row r (three column shifts) and adds kernel row 2 into acc_up (output row
    r - 1, then complete: stored), kernel row 1 into acc_mid (output row r, the next acc_up)
    and kernel row 0 into a fresh accumulator (output row r + 1, the next acc_mid).

    x_ptr, w_ptr, b_ptr, y_ptr: input, fp32 weight (the tap (a, b) at w_ptr + c*sw_c +
    a*sw_h + b*sw_w: negative strides give the rotated kernel of a dgrad), fp32 bias (read
    when HAS_BIAS), output. N, C, H, W: sizes (input = output). sx_*, sy_*: element strides in
    (n, h, w, c) order. alpha: the activation's parameter; ACT: activation code
    (elementwise.py). pmean_ptr, pm2_ptr: with MOMENTS, fp32 [cdiv(N, BLOCK_N), C] moments
    (mean, M2) of y as stored over the program's pixels, partial g (norm_fusion.TileMoments of
    BLOCK_N * H * W rows): Welford's update per tile element down the rows, the elements
    merged once at the end (norm_fusion.merge_lanes). STAGES: input rows in flight.
    IN_NORM, IN_HAS_W, IN_HAS_B, IN_ACT, nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr, n_alpha: x
    is a batch norm's input whose apply was left to this kernel (norm_fusion.PendingNorm), applied
    to each loaded row as in depthwise_fwd_kernel.
    GRAD_SUMS (a dgrad, not with IN_NORM or MOMENTS): y is the gradient of a training batch
    norm's output and xn_ptr (strides sn_*) that batch norm's input; the n* pointers, n_alpha
    and IN_* flags are that batch norm's. Each stored row's g' and g' * xhat (norm.
    grad_sums_terms) add up per tile element down the rows; their column sums go to row g of
    pmean_ptr / pm2_ptr as norm_fusion.GradSums partials (sum(g'), sum(g' * xhat)).
    """
    wait_for_inputs()
    pid_g, pid_c = row_channel_tile(C, BLOCK_C)
    i = tl.arange(0, BLOCK_N * BLOCK_W)
    n = pid_g * BLOCK_N + i // BLOCK_W
    col = i % BLOCK_W
    pix = (n < N) & (col < W)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    # fmt: off
    n_mean, n_scale, n_b = load_pending_norm(nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr, c, c_mask,
                                             IN_NORM, IN_HAS_W, IN_HAS_B, BLOCK_C)
    # fmt: on
    x_img = n.to(tl.int64) * sx_n
    y_img = n.to(tl.int64) * sy_n
    col_l, col_c, col_r = (col - 1) * sx_w, col * sx_w, (col + 1) * sx_w
    ok_l, ok_r = pix & (col >= 1), pix & (col + 1 < W)
    x_c = c * sx_c
    y_off = y_img[:, None] + (col * sy_w)[:, None] + (c * sy_c)[None, :]
    y_mask = pix[:, None] & c_mask[None, :]
    if GRAD_SUMS:
        tl.static_assert(not (IN_NORM or MOMENTS), "grad sums: a dgrad's epilogue only")
        s_mean, s_invstd, s_w, s_b = load_grad_sums_norm(
            nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr, c, c_mask, IN_HAS_W, IN_HAS_B, IN_ACT,
            BLOCK_C,
        )  # fmt: skip
        xn_off = (n.to(tl.int64) * sn_n)[:, None] + (col * sn_w)[:, None] + (c * sn_c)[None, :]

    w00 = _tap(w_ptr, c, c_mask, sw_c, 0, 0, sw_h, sw_w)
    w01 = _tap(w_ptr, c, c_mask, sw_c, 0, 1, sw_h, sw_w)
    w02 = _tap(w_ptr, c, c_mask, sw_c, 0, 2, sw_h, sw_w)
    w10 = _tap(w_ptr, c, c_mask, sw_c, 1, 0, sw_h, sw_w)
    w11 = _tap(w_ptr, c, c_mask, sw_c, 1, 1, sw_h, sw_w)
    w12 = _tap(w_ptr, c, c_mask, sw_c, 1, 2, sw_h, sw_w)
    w20 = _tap(w_ptr, c, c_mask, sw_c, 2, 0, sw_h, sw_w)
    w21 = _tap(w_ptr, c, c_mask, sw_c, 2, 1, sw_h, sw_w)
    w22 = _tap(w_ptr, c, c_mask, sw_c, 2, 2, sw_h, sw_w)
    bias = tl.zeros((BLOCK_C,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + c, mask=c_mask, other=0.0).to(tl.float32)

    # row 0 (rows -1 and H are the zero padding)
    xl, xc, xr = _row_loads(x_ptr, x_img, col_l, col_c, col_r, ok_l, pix, ok_r, x_c, c_mask)
    if IN_NORM:
        # fmt: off
        xl, xc, xr = _normalise_row(xl, xc, xr, ok_l, pix, ok_r, n_mean, n_scale, n_b, n_alpha,
                                    IN_ACT, x_ptr.dtype.element_ty)
        # fmt: on
    acc_up = _kernel_row(xl, xc, xr, w10, w11, w12)  # output row 0
    acc_mid = _kernel_row(xl, xc, xr, w00, w01, w02)  # output row 1
    # moments: Welford per tile element over the rows (no cross-thread work in the loop)
    lane_mean = tl.zeros((BLOCK_N * BLOCK_W, BLOCK_C), tl.float32)
    lane_m2 = tl.zeros((BLOCK_N * BLOCK_W, BLOCK_C), tl.float32)
    for r in tl.range(1, H, num_stages=STAGES):
        # fmt: off
        xl, xc, xr = _row_loads(x_ptr, x_img + r * sx_h, col_l, col_c, col_r, ok_l, pix, ok_r,
                                x_c, c_mask)
        if IN_NORM:
            xl, xc, xr = _normalise_row(xl, xc, xr, ok_l, pix, ok_r, n_mean, n_scale, n_b,
                                        n_alpha, IN_ACT, x_ptr.dtype.element_ty)
        # fmt: on
        done = acc_up + _kernel_row(xl, xc, xr, w20, w21, w22)  # output row r - 1
        acc_up = acc_mid + _kernel_row(xl, xc, xr, w10, w11, w12)
        acc_mid = _kernel_row(xl, xc, xr, w00, w01, w02)
        # the row's loads are dead from here: the epilogue doesn't hold them
        y = apply_activation(done + bias[None, :], ACT, alpha).to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + y_off + (r - 1) * sy_h, y, mask=y_mask)
        if MOMENTS:
            lane_mean, lane_m2 = _welford_row(lane_mean, lane_m2, y, r)
        if GRAD_SUMS:  # (lane_mean, lane_m2: the sums of g', g' * xhat)
            lane_mean, lane_m2 = _grad_sums_row(lane_mean, lane_m2, y, xn_ptr, xn_off,
                                                (r - 1) * sn_h, y_mask, s_mean, s_invstd, s_w,
                                                s_b, n_alpha, IN_ACT)  # fmt: skip
    y = apply_activation(acc_up + bias[None, :], ACT, alpha).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + y_off + (H - 1) * sy_h, y, mask=y_mask)
    if GRAD_SUMS:
        lane_mean, lane_m2 = _grad_sums_row(lane_mean, lane_m2, y, xn_ptr, xn_off,
                                            (H - 1) * sn_h, y_mask, s_mean, s_invstd, s_w, s_b,
                                            n_alpha, IN_ACT)  # fmt: skip
        out = pid_g.to(tl.int64) * C + c
        tl.store(pmean_ptr + out, tl.sum(lane_mean, axis=0), mask=c_mask)
        tl.store(pm2_ptr + out, tl.sum(lane_m2, axis=0), mask=c_mask)
    if MOMENTS:
        lane_mean, lane_m2 = _welford_row(lane_mean, lane_m2, y, H)
        lane_count = tl.where(pix, H, 0).to(tl.float32)
        mean, m2 = merge_lanes(lane_count, lane_mean, lane_m2)
        out = pid_g.to(tl.int64) * C + c
        tl.store(pmean_ptr + out, mean, mask=c_mask)
        tl.store(pm2_ptr + out, m2, mask=c_mask)


@triton.jit
def _store_tap_partial(part_ptr, chunk, t, acc, c, c_mask, C):
    row = (chunk.to(tl.int64) * 9 + t) * C
    tl.store(part_ptr + row + c, tl.sum(acc, axis=0), mask=c_mask)


@triton.jit
def store_tap_partials(part_ptr, chunk, c, c_mask, C, a0, a1, a2, a3, a4, a5, a6, a7, a8):
    """Row ``chunk`` of a 3x3 weight gradient's [chunks, 9, C] fp32 partials: tap t's
    BLOCK_P x BLOCK_C accumulator a<t> (t = kh*3 + kw) summed over its pixels (a fixed
    order), channels c."""
    _store_tap_partial(part_ptr, chunk, 0, a0, c, c_mask, C)
    _store_tap_partial(part_ptr, chunk, 1, a1, c, c_mask, C)
    _store_tap_partial(part_ptr, chunk, 2, a2, c, c_mask, C)
    _store_tap_partial(part_ptr, chunk, 3, a3, c, c_mask, C)
    _store_tap_partial(part_ptr, chunk, 4, a4, c, c_mask, C)
    _store_tap_partial(part_ptr, chunk, 5, a5, c, c_mask, C)
    _store_tap_partial(part_ptr, chunk, 6, a6, c, c_mask, C)
    _store_tap_partial(part_ptr, chunk, 7, a7, c, c_mask, C)
    _store_tap_partial(part_ptr, chunk, 8, a8, c, c_mask, C)


@triton.jit
def _go_row(go_ptr, g_off, h, H, sg_h, g_mask):
    """grad_out row h of the row tile in fp32, zero when h is off the image."""
    ok = (h >= 0) & (h < H)
    return tl.load(go_ptr + g_off + h * sg_h, mask=g_mask & ok, other=0.0).to(tl.float32)


@triton.jit
def depthwise_rows_wgrad_kernel(
    x_ptr, go_ptr, part_ptr,
    nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr,
    N, C, H, W, GROUPS,
    sx_n, sx_h, sx_w, sx_c,
    sg_n, sg_h, sg_w, sg_c,
    n_alpha,
    BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
    STAGES: tl.constexpr,
    IN_NORM: tl.constexpr = False, IN_HAS_W: tl.constexpr = False,
    IN_HAS_B: tl.constexpr = False, IN_ACT: tl.constexpr = 0,
):  # fmt: skip
    """Stage 1 of a 3x3 / stride 1 / padding 1 depthwise weight gradient by rolling rows:
    part[g, a*3 + b, c] = sum over program g's images n, rows h and columns w of
    go[n,c,h,w] * x[n,c,h-1+a,w-1+b] (zero off the image).

    Row tiles as depthwise_rows_kernel's (one image row of BLOCK_N images side by side), but
    program (g, j) (tile_order's (row tile, channel block)) walks GROUPS such groups of images
    one after the other, images [g*GROUPS*BLOCK_N, (g+1)*GROUPS*BLOCK_N), so that few partial
    rows are left for stage 2. Iteration t is row r = t % H of group t // H: it loads input
    row r (three column shifts, b = 0, 1, 2), which meets grad_out rows r + 1, r and r - 1
    through kernel rows a = 0, 1, 2. Nine BLOCK_R x BLOCK_C fp32 accumulators, each reduced
    over its pixels once at the end (a fixed order: deterministic) into the fp32
    [cdiv(N, GROUPS*BLOCK_N), 9, C] partials that depthwise_wgrad_reduce_kernel adds. x_ptr,
    go_ptr: N,C,H,W through element strides sx_*, sg_* in (n, h, w, c) order. STAGES: rows in
    flight. IN_NORM and the n* arguments: x is normalised as it is loaded, as in
    depthwise_rows_kernel.
    """
    wait_for_inputs()
    pid_g, pid_c = row_channel_tile(C, BLOCK_C)
    i = tl.arange(0, BLOCK_N * BLOCK_W)
    lane_n = i // BLOCK_W
    col = i % BLOCK_W
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    # fmt: off
    n_mean, n_scale, n_b = load_pending_norm(nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr, c, c_mask,
                                             IN_NORM, IN_HAS_W, IN_HAS_B, BLOCK_C)
    # fmt: on
    col_l, col_c, col_r = (col - 1) * sx_w, col * sx_w, (col + 1) * sx_w
    x_c = c * sx_c
    g_c = (c * sg_c)[None, :]
    acc00 = tl.zeros((BLOCK_N * BLOCK_W, BLOCK_C), tl.float32)
    acc01 = tl.zeros((BLOCK_N * BLOCK_W, BLOCK_C), tl.float32)
    acc02 = tl.zeros((BLOCK_N * BLOCK_W, BLOCK_C), tl.float32)
    acc10 = tl.zeros((BLOCK_N * BLOCK_W, BLOCK_C), tl.float32)
    acc11 = tl.zeros((BLOCK_N * BLOCK_W, BLOCK_C), tl.float32)
    acc12 = tl.zeros((BLOCK_N * BLOCK_W, BLOCK_C), tl.float32)
    acc20 = tl.zeros((BLOCK_N * BLOCK_W, BLOCK_C), tl.float32)
    acc21 = tl.zeros((BLOCK_N * BLOCK_W, BLOCK_C), tl.float32)
    acc22 = tl.zeros((BLOCK_N * BLOCK_W, BLOCK_C), tl.float32)
    for t in tl.range(0, GROUPS * H, num_stages=STAGES):
        group = t // H
        r = t - group * H
        n = (pid_g * GROUPS + group) * BLOCK_N + lane_n
        pix = (n < N) & (col < W)
        ok_l, ok_r = pix & (col >= 1), pix & (col + 1 < W)
        # fmt: off
        xl, xc, xr = _row_loads(x_ptr, n.to(tl.int64) * sx_n + r * sx_h, col_l, col_c, col_r,
                                ok_l, pix, ok_r, x_c, c_mask)
        if IN_NORM:
            xl, xc, xr = _normalise_row(xl, xc, xr, ok_l, pix, ok_r, n_mean, n_scale, n_b,
                                        n_alpha, IN_ACT, x_ptr.dtype.element_ty)
        # fmt: on
        # grad_out rows r - 1, r, r + 1 (zero off the image). Loaded each iteration: carrying
        # two of them over from the iterations before keeps Triton from pipelining the loop
        # (ptxas sm_90: no cp.async), and the reloads come from L1 / L2.
        g_off = (n.to(tl.int64) * sg_n + col * sg_w)[:, None] + g_c
        g_mask = pix[:, None] & c_mask[None, :]
        go_prev = _go_row(go_ptr, g_off, r - 1, H, sg_h, g_mask)
        go_cur = _go_row(go_ptr, g_off, r, H, sg_h, g_mask)
        go_next = _go_row(go_ptr, g_off, r + 1, H, sg_h, g_mask)
        acc00 += go_next * xl
        acc01 += go_next * xc
        acc02 += go_next * xr
        acc10 += go_cur * xl
        acc11 += go_cur * xc
        acc12 += go_cur * xr
        acc20 += go_prev * xl
        acc21 += go_prev * xc
        acc22 += go_prev * xr
    # fmt: off
    store_tap_partials(part_ptr, pid_g, c, c_mask, C, acc00, acc01, acc02, acc10, acc11, acc12,
                       acc20, acc21, acc22)
    # fmt: on


# --- launch ----------------------------------------------------------------------------------


def applies(
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> bool:
    """Whether depthwise_rows_kernel computes this conv: 3x3, stride 1, padding 1, dilation 1
    (pairs of ints)."""
    return tuple(kernel_size) == (3, 3) and stride == padding == dilation == (1, 1)


def pending_args(
    pending: PendingNorm | None, c: int, dummy: torch.Tensor
) -> tuple[tuple[torch.Tensor, ...], float, dict]:
    """(pointers, alpha, constexprs) of a kernel's IN_NORM arguments for ``pending``."""
    ptrs, alpha, flags = pending_norm_args(pending, c, dummy, "depthwise: pending")
    return ptrs, alpha, ({**flags, "IN_NORM": True} if pending is not None else flags)


def rows_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    act: int,
    alpha: float,
    cfg: RowsConfig,
    moments: bool,
    rotate: bool = False,
    out: torch.Tensor | None = None,
    pending: PendingNorm | None = None,
) -> tuple[torch.Tensor, TileMoments | None]:
    """The 3x3 / stride 1 / padding 1 depthwise conv of ``x`` (N,C,H,W, any strides) with
    ``weight`` (fp32 C,1,3,3), rotated by 180 degrees when ``rotate`` (a dgrad: x is then
    grad_out), into ``out`` (any strides) or a new channels_last tensor; with ``moments``,
    also the output's per-program moments (norm_fusion.TileMoments)."""
    n, c, h, w = x.shape
    y = runtime.empty_nhwc(n, c, h, w, x.dtype) if out is None else out
    block_n = _block_n(cfg, w)
    tiles = tile_moments(n * h * w, c, block_n * h * w) if moments else None
    parts = tiles.partials if tiles is not None else (y, y)
    in_ptrs, in_alpha, in_flags = pending_args(pending, c, weight)
    _launch(x, weight, bias, act, alpha, cfg, y, parts, rotate, in_ptrs, in_alpha,
            dict(in_flags, MOMENTS=moments))  # fmt: skip
    return y, tiles


def rows_dgrad_grad_sums(
    grad_out: torch.Tensor,
    weight: torch.Tensor,
    cfg: RowsConfig,
    bn_input: torch.Tensor,
    bn: PendingNorm,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, GradSums]:
    """The stride-1 dgrad of ``rows_conv`` (grad_out convolved with the rotated kernel) for a
    conv whose input is a training batch norm's output: also that batch norm's backward sums
    over each program's images (norm_fusion.GradSums; ``bn``: its statistics, parameters and fused
    activation, ``bn_input``: its input, the conv input's shape)."""
    n, c, h, w = grad_out.shape
    y = runtime.empty_nhwc(n, c, h, w, grad_out.dtype) if out is None else out
    sums = grad_sums(triton.cdiv(n, _block_n(cfg, w)), c)
    xn, ptrs, n_alpha, flags = grad_sums_args(bn, bn_input, (n, c, h, w), y, "depthwise dgrad:")
    grad = dict(flags, xn_ptr=xn, GRAD_SUMS=True, MOMENTS=False)
    grad.update(zip(("sn_n", "sn_h", "sn_w", "sn_c"), runtime.nhwc_strides(xn), strict=True))
    _launch(grad_out, weight, None, ACT_NONE, 0.0, cfg, y, (sums.partials[0], sums.partials[1]),
            True, ptrs, n_alpha, grad)  # fmt: skip
    return y, sums


def _block_n(cfg: RowsConfig, w: int) -> int:
    """Images side by side in a row tile of ``cfg`` for rows ``w`` wide."""
    return max(1, cfg.pixels // triton.next_power_of_2(w))


def _launch(x, weight, bias, act, alpha, cfg, y, parts, rotate, n_ptrs, n_alpha, flags):
    """depthwise_rows_kernel over x (N,C,H,W) into y; ``parts``: its two fp32 partial
    buffers; ``n_ptrs``, ``n_alpha``, ``flags``: the batch norm applied to the loads or whose
    sums the epilogue stores, and the other keyword arguments."""
    n, c, h, w = x.shape
    block_w = triton.next_power_of_2(w)
    block_n = _block_n(cfg, w)
    sw_c, sw_h, sw_w = weight.stride(0), weight.stride(2), weight.stride(3)
    w_arg = weight
    if rotate:  # tap (a, b) of the rotated kernel is tap (2 - a, 2 - b)
        w_arg = weight[:, :, 2:, 2:]
        sw_h, sw_w = -sw_h, -sw_w
    depthwise_rows_kernel[row_channel_grid(n, block_n, c, cfg.block_c)](
        x, w_arg, bias if bias is not None else weight, y, parts[0], parts[1], *n_ptrs,
        n, c, h, w,
        *runtime.nhwc_strides(x),
        sw_c, sw_h, sw_w,
        *runtime.nhwc_strides(y),
        float(alpha), n_alpha,
        HAS_BIAS=bias is not None, ACT=act,
        BLOCK_N=block_n, BLOCK_W=block_w, BLOCK_C=cfg.block_c, STAGES=cfg.stages,
        num_warps=cfg.num_warps, **flags,
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip


def rows_wgrad_partials(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    cfg: RowsConfig,
    groups: int,
    pending: PendingNorm | None = None,
) -> torch.Tensor:
    """Stage 1 of the 3x3 / stride 1 / padding 1 weight gradient of x (N,C,H,W, any strides)
    and grad_out (same shape): the fp32 [programs along the images, 9, C] partial sums of
    depthwise_rows_wgrad_kernel, each program walking ``groups`` row tiles of images, for
    depthwise_wgrad_reduce_kernel. ``pending``: the forward's (x normalised as it is loaded)."""
    n, c, h, w = x.shape
    block_w = triton.next_power_of_2(w)
    block_n = max(1, cfg.pixels // block_w)
    images = groups * block_n  # per program
    partials = runtime.empty((triton.cdiv(n, images), 9, c), torch.float32)
    in_ptrs, in_alpha, in_flags = pending_args(pending, c, partials)
    depthwise_rows_wgrad_kernel[row_channel_grid(n, images, c, cfg.block_c)](
        x, grad_out, partials, *in_ptrs,
        n, c, h, w, groups,
        *runtime.nhwc_strides(x),
        *runtime.nhwc_strides(grad_out),
        in_alpha,
        BLOCK_N=block_n, BLOCK_W=block_w, BLOCK_C=cfg.block_c, STAGES=cfg.stages,
        num_warps=cfg.num_warps, **in_flags,
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return partials
