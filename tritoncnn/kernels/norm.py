"""Batch normalisation: training statistics, running-stat update, apply, and backward.

Layout: the input is viewed as a matrix of ``M`` rows by ``C`` channels, with channels the
innermost (contiguous, for NHWC memory) axis. A 4-d N,C,H,W tensor has ``M = N*H*W`` rows; a
(N, C) matrix is the same problem with H = W = 1, and (N, C, L) has H = 1, W = L. Kernels read
and write every tensor through its element strides, so channels_last, torch-contiguous NCHW and
(N, C) inputs all work without a copy. Row ``r`` decodes to ``n = r // (H*W)``, ``h``, ``w``;
when every tensor of a launch has evenly spaced rows (dense NHWC), the launch passes H*W = W = 1
and the row spacing as s_n, and the decode compiles away (``_row_decode``).

Every reduction is deterministic and two-stage: stage 1 reduces a slab of rows for a block of
channels into fp32 partials; the last program of a channel block to finish (an atomic ticket,
``runtime.tickets``) runs stage 2, which combines the partials in a fixed order, so the result
does not depend on which program came last. Training statistics are taken of x - x[row 0] (a
per-channel pivot), accumulated with Welford's update per tile element and merged as (count,
mean, M2) triples with Chan's parallel formula, so the variance has no catastrophic
cancellation even for inputs like ``1000 + randn``.

Channel runs are read as 16-byte vectors; for channel counts of whole vectors that Triton can't
see (24: not a multiple of 16) the launch helpers pass an ALIGN hint (kernels/alignment.py).

Training forward (2 launches): ``bn_stats_kernel`` (partials; the last program per channel
block writes save_mean / save_invstd and updates the running stats in place exactly as torch)
-> ``bn_apply_kernel`` (y = act((x - mean) * invstd * weight + bias), increments
num_batches_tracked on the device). Eval forward is one ``bn_apply_kernel`` on running stats.
When the kernel that produced x stored per-tile (mean, M2) in its epilogue (``TileMoments``),
``bn_stats_from_tiles_kernel`` merges those partials instead of reading x: the statistics
cost a few hundred KB of reads, not a pass. When the layer after is a depthwise conv, the
apply can be left to it (``batch_norm_train_statistics`` + ``PendingNorm``: the conv
normalises each value it loads with bn_apply_kernel's expression and rounding), so the
normalised tensor is never stored. Those pieces, which run inside other kernels, are in
kernels/norm_fusion.py.

Backward (2 launches): ``bn_bwd_reduce_kernel`` (sums of g and g * xhat, partials added in
two levels: the last program of each group of partials, then the last of those per channel
block, which writes grad_weight / grad_bias and the means the input grad needs) ->
``bn_bwd_input_kernel`` (grad_in). A fused forward activation is differentiated by
recomputing its input from x, so nothing but x and the fp32 statistics is kept. When the
kernel that computed g (the dgrad of the conv that reads this layer's output) stored per-tile
sums in its epilogue (``GradSums``, norm_fusion.py; linked by nn.fusion),
``bn_bwd_sums_from_tiles_kernel`` adds those partials instead of reading g and x again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from tritoncnn import runtime
from tritoncnn.kernels import alignment
from tritoncnn.kernels.alignment import below
from tritoncnn.kernels.elementwise import ACT_NONE, activation_grad, apply_activation
from tritoncnn.kernels.norm_fusion import (
    GradSums,
    TileMoments,
    affine_params,
    channel_stats,
    merge_lanes,
)
from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs
from tritoncnn.kernels.tickets import last_to_finish
from tritoncnn.kernels.tile_order import row_channel_grid, row_channel_tile


class NormConfig(NamedTuple):
    """Tile of the row-slab kernels: BLOCK_M rows x BLOCK_C channels, and warps per program."""

    block_m: int
    block_c: int
    num_warps: int


# Every configuration the launch helpers can pick (the GPU tier tests each one). Wider channel
# blocks give longer contiguous NHWC segments; a tile is 1-2K elements per program.
NORM_CONFIGS: tuple[NormConfig, ...] = (
    NormConfig(block_m=64, block_c=16, num_warps=4),
    NormConfig(block_m=64, block_c=32, num_warps=4),
    NormConfig(block_m=32, block_c=64, num_warps=4),
    NormConfig(block_m=16, block_c=128, num_warps=4),
)

# Stage 2 runs in one program per channel block, after everything else (a serial tail): it
# takes STAGE2_TILE // BLOCK_C partials per iteration, a tile as large as stage 1's, so the
# hundreds of partials of a narrow layer (4 stage-1 programs per SM) take a handful of
# iterations rather than dozens. Each iteration is load latency plus elementwise work only.
STAGE2_TILE = 2048


# Pipeline stages of each stage-1 reduction loop: tl.range(num_stages=...) pipelines the loads
# of any loop (a kernel's num_stages only those that feed a tl.dot), by cp.async into
# LOOP_STAGES - 1 shared-memory buffers, so a program has that many row tiles in flight.
# Deeper is not faster: 6 stages (5 tiles in flight, same registers, 4 programs per SM) took
# bn_bwd_reduce_kernel over MobileNetV2's layers from 1832 to 1937 us (H100, 2026-12-07,
# results/reduction_tiles_stages_2026-12-07_*.csv; 144 channels at 32x32: 150 -> 175 us).
LOOP_STAGES = 3

# Stage-1 programs per SM: with LOOP_STAGES - 1 tiles each, the bytes in flight per SM.
PROGRAMS_PER_SM = 4


def stage2_block(cfg: NormConfig) -> int:
    """Partials stage 2 combines per iteration (BLOCK_P) for tile ``cfg``."""
    return max(16, STAGE2_TILE // cfg.block_c)


# --- kernels ---------------------------------------------------------------------------------


@triton.jit
def _row_offsets(rows, HW, W, s_n, s_h, s_w, ALIGN: tl.constexpr):
    """Element offsets (int64) of rows ``r = (n*H + h)*W + w`` of a tensor with strides s_*,
    declared multiples of ALIGN (kernels/alignment.py) when ALIGN > 1.

    With ALIGN > 1 the offsets are built as (strides / ALIGN) * ALIGN, so the compiler sees
    their divisibility in the multiply itself: a tl.multiple_of hint is dropped where the
    decode folds away (``_row_decode``'s HW = W = 1 leaves one multiply by a runtime stride),
    and 24-channel rows went back to 2-byte loads."""
    rows = rows.to(tl.int64)
    n = rows // HW
    hw = rows - n * HW
    h = hw // W
    w = hw - h * W
    if ALIGN > 1:
        return (n * (s_n // ALIGN) + h * (s_h // ALIGN) + w * (s_w // ALIGN)) * ALIGN
    return n * s_n + h * s_h + w * s_w


@triton.jit
def _update_running(
    rmean_ptr, rvar_ptr, nbt_ptr, offs_c, mask_c, mean, unbiased, momentum,
    CUMULATIVE: tl.constexpr,
):  # fmt: skip
    """Running stats in place, as torch: r = (1 - f) * r + f * stat, with the batch mean and
    the unbiased variance; f = momentum, or 1 / (num_batches_tracked + 1) when CUMULATIVE
    (nbt_ptr is read here; bn_apply_kernel increments it in a later launch)."""
    if CUMULATIVE:
        f = 1.0 / (tl.load(nbt_ptr) + 1).to(tl.float32)
    else:
        f = momentum
    rm = tl.load(rmean_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    rv = tl.load(rvar_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    rm = (1.0 - f) * rm + f * mean
    rv = (1.0 - f) * rv + f * unbiased
    tl.store(rmean_ptr + offs_c, rm.to(rmean_ptr.dtype.element_ty), mask=mask_c)
    tl.store(rvar_ptr + offs_c, rv.to(rvar_ptr.dtype.element_ty), mask=mask_c)


@triton.jit
def _merge_partials(
    pmean_ptr, pm2_ptr, p_lo, p_hi, ROWS, M, C, offs_c, mask_c,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """(mean, M2) for channels offs_c of partials [p_lo, p_hi) of an [n_parts, C] pair of
    buffers (partial p covers min(ROWS, M - p*ROWS) rows), merged with Chan's formula in a
    fixed order: lane i of a BLOCK_P x BLOCK_C tile merges partials p_lo + i, p_lo + i +
    BLOCK_P, ... elementwise (no reduction inside the loop, so each iteration is load latency
    plus elementwise work), then the lanes are merged."""
    lane_cnt = tl.zeros((BLOCK_P,), tl.float32)
    lane_mean = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    lane_m2 = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for p0 in range(p_lo, p_hi, BLOCK_P):
        parts = p0 + tl.arange(0, BLOCK_P)
        mask_p = parts < p_hi
        mask = mask_p[:, None] & mask_c[None, :]
        offs = parts.to(tl.int64)[:, None] * C + offs_c[None, :]
        # .cg: other programs wrote these; read them from L2, never from a stale L1 line
        pmean = tl.load(pmean_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg")
        pm2 = tl.load(pm2_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg")
        nb = tl.where(mask_p, tl.minimum(ROWS, M - parts * ROWS), 0).to(tl.float32)
        na = lane_cnt
        lane_cnt += nb
        share = tl.where(mask_p, nb / tl.maximum(lane_cnt, 1.0), 0.0)  # nb / n
        delta = tl.where(mask, pmean - lane_mean, 0.0)
        lane_mean += delta * share[:, None]
        lane_m2 += pm2 + delta * delta * (na * share)[:, None]
    return merge_lanes(lane_cnt, lane_mean, lane_m2)


@triton.jit
def _finalize_stats(
    x_ptr,
    pmean_ptr,
    pm2_ptr,
    save_mean_ptr,
    save_invstd_ptr,
    rmean_ptr,
    rvar_ptr,
    nbt_ptr,
    offs_c,
    mask_c,
    M,
    C,
    s_c,
    ROWS,
    n_parts,
    momentum,
    eps,
    UPDATE_RUNNING: tl.constexpr,
    CUMULATIVE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    STORE_M2: tl.constexpr,
    PIVOTED: tl.constexpr = True,
):
    """Stage 2 for channels offs_c: merge all n_parts partials (``_merge_partials``); store
    the batch mean and invstd (or M2 when STORE_M2); update the running stats when
    UPDATE_RUNNING. PIVOTED: the partials are moments of x - x[row 0] (bn_stats_kernel), so
    the pivot is added back to the mean; else they are moments of x itself."""
    mean, m2 = _merge_partials(
        pmean_ptr, pm2_ptr, 0, n_parts, ROWS, M, C, offs_c, mask_c, BLOCK_P, BLOCK_C
    )
    if PIVOTED:
        mean += tl.load(x_ptr + offs_c.to(tl.int64) * s_c, mask=mask_c, other=0.0).to(tl.float32)
    var = m2 / M
    invstd = 1.0 / tl.sqrt_rn(var + eps)
    tl.store(save_mean_ptr + offs_c, mean, mask=mask_c)
    if STORE_M2:
        tl.store(save_invstd_ptr + offs_c, m2, mask=mask_c)
    else:
        tl.store(save_invstd_ptr + offs_c, invstd, mask=mask_c)

    if UPDATE_RUNNING:
        # fmt: off
        _update_running(rmean_ptr, rvar_ptr, nbt_ptr, offs_c, mask_c, mean, m2 / (M - 1),
                        momentum, CUMULATIVE)
        # fmt: on


@triton.jit
def count_batch_kernel(nbt_ptr):
    """num_batches_tracked += 1, for a training forward that leaves the apply (whose
    INC_NBT does it otherwise) to the next kernel: ``batch_norm_train_statistics``."""
    wait_for_inputs()
    tl.store(nbt_ptr, tl.load(nbt_ptr) + 1)


@triton.jit
def bn_stats_kernel(
    x_ptr,
    pmean_ptr,
    pm2_ptr,
    tickets_ptr,
    save_mean_ptr,
    save_invstd_ptr,
    rmean_ptr,
    rvar_ptr,
    nbt_ptr,
    M,
    C,
    HW,
    W,
    s_n,
    s_h,
    s_w,
    s_c,
    ROWS,
    n_parts,
    momentum,
    eps,
    UPDATE_RUNNING: tl.constexpr,
    CUMULATIVE: tl.constexpr,
    STORE_M2: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    ALIGN: tl.constexpr,
    STAGES: tl.constexpr,
):
    """Training statistics: (mean, M2) of one slab of rows per channel; the channel block's
    last program merges them all into the batch mean / invstd and updates the running stats.

    Layout: x is an M x C row matrix (see module docstring) read through strides s_n, s_h,
    s_w (row decode) and s_c (channels). Program (pid_m, pid_c) reduces rows
    [pid_m*ROWS, min((pid_m+1)*ROWS, M)) for channels [pid_c*BLOCK_C, +BLOCK_C), BLOCK_M rows
    at a time: every tile element keeps its own Welford (count, mean, M2) of x - x[row 0] (the
    pivot) in fp32; after the loop the BLOCK_M row lanes are merged with Chan's formula and
    stored as partial pid_m.
    The program that takes the last of the n_parts tickets of its channel block runs stage 2
    (``_finalize_stats``) for those channels and re-arms the ticket.

    x_ptr: input, any float dtype.
    pmean_ptr, pm2_ptr: fp32 [n_parts, C] scratch: partial means of x - pivot and sums of
    squared deviations. tickets_ptr: int32 [cdiv(C, BLOCK_C)] zeros (left zero).
    save_mean_ptr, save_invstd_ptr: fp32 [C] outputs: batch mean and 1/sqrt(biased var + eps)
    (M2 instead of invstd when STORE_M2: this rank's moments, for synchronised batch norm).
    rmean_ptr, rvar_ptr: running mean / var [C], updated in place when UPDATE_RUNNING:
    r = (1 - f) * r + f * stat, with the unbiased variance M2 / (M - 1) for rvar.
    nbt_ptr: int64 num_batches_tracked, read (not written: bn_apply_kernel increments it after
    this launch) when CUMULATIVE, for f = 1 / (num_batches_tracked + 1).
    momentum: f when not CUMULATIVE. eps: added to the biased variance.
    M, C: rows and channels. HW, W: H*W and W of the row decode. ROWS: rows per program
    (a multiple of BLOCK_M).
    ALIGN: row offsets and C are multiples of this (kernels/alignment.py; 1: unknown).
    STAGES: pipeline stages of the row loop's loads (STAGES - 1 row tiles in flight; LOOP_STAGES).
    """
    wait_for_inputs()
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = below(offs_c, C, ALIGN)
    col = offs_c.to(tl.int64) * s_c
    row0 = pid_m * ROWS
    n_rows = tl.minimum(ROWS, M - row0)

    # Statistics of x - pivot, the pivot being row 0 of the whole batch (the same for every
    # program): for inputs like 1000 + randn the shifted values are O(std), so the sums keep
    # their precision and the mean is K + (small mean), rounded once.
    pivot = tl.load(x_ptr + col, mask=mask_c, other=0.0).to(tl.float32)
    # Welford per lane: each element of the BLOCK_M x BLOCK_C tile keeps the running (mean,
    # M2) of the rows it visits, elementwise, so the loop has no cross-warp reduction (one
    # per tile made this kernel several times slower than bn_apply_kernel over the same
    # data); the lanes are merged with Chan's formula once, after the loop.
    lane_cnt = tl.zeros((BLOCK_M,), tl.float32)
    lane_mean = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    lane_m2 = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    for start in tl.range(0, n_rows, BLOCK_M, num_stages=STAGES):
        rows = row0 + start + tl.arange(0, BLOCK_M)
        mask_m = rows < row0 + n_rows
        mask = mask_m[:, None] & mask_c[None, :]
        offs = _row_offsets(rows, HW, W, s_n, s_h, s_w, ALIGN)[:, None] + col[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - pivot[None, :]
        lane_cnt += mask_m.to(tl.float32)
        inv_cnt = tl.where(mask_m, 1.0 / tl.maximum(lane_cnt, 1.0), 0.0)
        delta = tl.where(mask, x - lane_mean, 0.0)
        lane_mean += delta * inv_cnt[:, None]
        lane_m2 += delta * (x - lane_mean)
    mean, m2 = merge_lanes(lane_cnt, lane_mean, lane_m2)

    out = pid_m.to(tl.int64) * C + offs_c
    tl.store(pmean_ptr + out, mean, mask=mask_c)
    tl.store(pm2_ptr + out, m2, mask=mask_c)

    if last_to_finish(tickets_ptr, pid_c, n_parts):
        # fmt: off
        _finalize_stats(
            x_ptr, pmean_ptr, pm2_ptr, save_mean_ptr, save_invstd_ptr, rmean_ptr, rvar_ptr,
            nbt_ptr, offs_c, mask_c, M, C, s_c, ROWS, n_parts, momentum, eps,
            UPDATE_RUNNING, CUMULATIVE, BLOCK_P, BLOCK_C, STORE_M2,
        )
        # fmt: on
        tl.store(tickets_ptr + pid_c, 0)


@triton.jit
def bn_stats_merge_ranks_kernel(
    moments_ptr,
    save_mean_ptr,
    save_invstd_ptr,
    rmean_ptr,
    rvar_ptr,
    nbt_ptr,
    world,
    C,
    M_RANK,
    momentum,
    eps,
    UPDATE_RUNNING: tl.constexpr,
    CUMULATIVE: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Synchronised batch norm: merge every rank's (mean, M2) into global-batch statistics.

    moments_ptr: fp32 [world, 2, C]: rank r's batch mean and M2 over its M_RANK rows (every
    rank has the same count). One program owns channels [pid*BLOCK_C, +BLOCK_C): the global
    mean is the mean of the rank means; M2 = sum_r (M2_r + M_RANK * (mean_r - mean)^2), which
    stays centred (no large sums of squares). Outputs and running-stat update as
    _finalize_stats with M = world * M_RANK rows.
    """
    wait_for_inputs()
    pid = tl.program_id(0)
    offs_c = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mean = tl.zeros((BLOCK_C,), tl.float32)
    for r in range(world):
        mean += tl.load(moments_ptr + r * 2 * C + offs_c, mask=mask_c, other=0.0)
    mean = mean / world
    m2 = tl.zeros((BLOCK_C,), tl.float32)
    for r in range(world):
        d = tl.load(moments_ptr + r * 2 * C + offs_c, mask=mask_c, other=0.0) - mean
        m2 += tl.load(moments_ptr + (r * 2 + 1) * C + offs_c, mask=mask_c, other=0.0)
        m2 += M_RANK * d * d
    count = world * M_RANK * 1.0  # rows of the global batch, as fp32
    invstd = 1.0 / tl.sqrt_rn(m2 / count + eps)
    tl.store(save_mean_ptr + offs_c, mean, mask=mask_c)
    tl.store(save_invstd_ptr + offs_c, invstd, mask=mask_c)
    if UPDATE_RUNNING:
        # fmt: off
        _update_running(rmean_ptr, rvar_ptr, nbt_ptr, offs_c, mask_c, mean, m2 / (count - 1.0),
                        momentum, CUMULATIVE)
        # fmt: on


@triton.jit
def bn_stats_from_tiles_kernel(
    pmean_ptr, pm2_ptr, qmean_ptr, qm2_ptr, tickets_ptr, save_mean_ptr, save_invstd_ptr,
    rmean_ptr, rvar_ptr, nbt_ptr,
    M, C, ROWS, n_parts, SLAB, n_slabs, momentum, eps,
    UPDATE_RUNNING: tl.constexpr, CUMULATIVE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Training statistics from the per-tile moments a producer kernel's epilogue stored
    (``store_tile_moments``), without reading the activation again.

    Layout: pmean_ptr, pm2_ptr are fp32 [n_parts, C]: the (mean, M2) of tile p, which covers
    rows [p*ROWS, min((p+1)*ROWS, M)) of the M x C activation. A tensor of a thousand tiles is
    too many partials for one program to walk, so this is the two-stage reduction of
    bn_stats_kernel over the partials: program (pid_s, pid_c) merges partials
    [pid_s*SLAB, +SLAB) for channels [pid_c*BLOCK_C, +BLOCK_C) into qmean/qm2 [n_slabs, C]
    row pid_s (a slab of SLAB*ROWS rows); the channel block's last program (a ticket of
    tickets_ptr, left zero) merges the slabs in order, stores save_mean / save_invstd and
    updates the running stats exactly as bn_stats_kernel does (same arguments).
    """
    wait_for_inputs()
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    p_lo = pid_s * SLAB
    p_hi = tl.minimum(p_lo + SLAB, n_parts)
    mean, m2 = _merge_partials(
        pmean_ptr, pm2_ptr, p_lo, p_hi, ROWS, M, C, offs_c, mask_c, BLOCK_P, BLOCK_C
    )
    out = pid_s.to(tl.int64) * C + offs_c
    tl.store(qmean_ptr + out, mean, mask=mask_c)
    tl.store(qm2_ptr + out, m2, mask=mask_c)

    if last_to_finish(tickets_ptr, pid_c, n_slabs):
        # fmt: off
        _finalize_stats(
            pmean_ptr, qmean_ptr, qm2_ptr, save_mean_ptr, save_invstd_ptr, rmean_ptr, rvar_ptr,
            nbt_ptr, offs_c, mask_c, M, C, 0, SLAB * ROWS, n_slabs, momentum, eps,
            UPDATE_RUNNING, CUMULATIVE, BLOCK_P, BLOCK_C, False, PIVOTED=False,
        )
        # fmt: on
        tl.store(tickets_ptr + pid_c, 0)


@triton.jit
def bn_apply_kernel(
    x_ptr,
    y_ptr,
    r_ptr,
    mean_ptr,
    stat_ptr,
    w_ptr,
    b_ptr,
    nbt_ptr,
    M,
    C,
    HW,
    W,
    sx_n,
    sx_h,
    sx_w,
    sx_c,
    sy_n,
    sy_h,
    sy_w,
    sy_c,
    sr_n,
    sr_h,
    sr_w,
    sr_c,
    eps,
    alpha,
    STAT_IS_VAR: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    INC_NBT: tl.constexpr,
    ACT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ALIGN: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr = False,
    RES_ACT: tl.constexpr = 0,
):
    """y = act((x - mean) * (invstd * weight) + bias) on one BLOCK_M x BLOCK_C tile; with
    HAS_RESIDUAL, y = res_act(that + r) (a residual block's BN -> add -> activation in one
    pass: the BN output is never stored).

    Layout: x and y are M x C row matrices read / written through their own strides (sx_*,
    sy_*; see module docstring). Math in fp32; y stored in its own dtype. One program per
    BLOCK_M x BLOCK_C tile, in tile_order's order (a row tile's channel blocks side by side).

    mean_ptr: fp32 [C] mean (batch or running). stat_ptr: [C] invstd, or the variance when
    STAT_IS_VAR (eval: invstd = 1/sqrt(var + eps) is computed here).
    w_ptr, b_ptr: fp32 [C] weight and bias (read only if HAS_WEIGHT / HAS_BIAS).
    nbt_ptr: int64 num_batches_tracked, incremented by tile (0, 0)'s program when INC_NBT (the
    statistics kernel read it in an earlier launch, so this is race free).
    ACT, alpha: fused activation (elementwise.ACT codes) and its parameter.
    ALIGN: row offsets and C are multiples of this (kernels/alignment.py; 1: unknown).
    r_ptr: the residual, an M x C row matrix through strides sr_* (read only if HAS_RESIDUAL).
    RES_ACT: activation after the residual add (ELU / LeakyReLU parameter: alpha too).
    """
    wait_for_inputs()
    pid_m, pid_c = row_channel_tile(C, BLOCK_C)
    if INC_NBT:
        if (pid_m == 0) & (pid_c == 0):
            tl.store(nbt_ptr, tl.load(nbt_ptr) + 1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = below(offs_c, C, ALIGN)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = (rows < M)[:, None] & mask_c[None, :]

    mean, invstd = channel_stats(mean_ptr, stat_ptr, offs_c, mask_c, eps, STAT_IS_VAR)
    w, b = affine_params(w_ptr, b_ptr, offs_c, mask_c, HAS_WEIGHT, HAS_BIAS, BLOCK_C)
    scale = invstd * w

    c64 = offs_c.to(tl.int64)
    x_offs = _row_offsets(rows, HW, W, sx_n, sx_h, sx_w, ALIGN)[:, None] + (c64 * sx_c)[None, :]
    x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)
    # (x - mean) first: folding mean into a shift (x * scale + shift) would cancel badly
    # for large-mean inputs. The backward recomputes z with exactly this expression.
    z = (x - mean[None, :]) * scale[None, :] + b[None, :]
    y = apply_activation(z, ACT, alpha)
    if HAS_RESIDUAL:
        r_rows = _row_offsets(rows, HW, W, sr_n, sr_h, sr_w, ALIGN)
        r = tl.load(r_ptr + r_rows[:, None] + (c64 * sr_c)[None, :], mask=mask, other=0.0)
        y = apply_activation(y + r.to(tl.float32), RES_ACT, alpha)
    y_offs = _row_offsets(rows, HW, W, sy_n, sy_h, sy_w, ALIGN)[:, None] + (c64 * sy_c)[None, :]
    tl.store(y_ptr + y_offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sum_partials(
    psum_g_ptr, psum_gx_ptr, p_lo, p_hi, C, offs_c, mask_c,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Per-channel totals of partials [p_lo, p_hi) of two fp32 [n_parts, C] buffers, added
    in a fixed order (BLOCK_P rows at a time, then down the tile)."""
    tot_g = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    tot_gx = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for p0 in range(p_lo, p_hi, BLOCK_P):
        parts = p0 + tl.arange(0, BLOCK_P)
        pmask = (parts < p_hi)[:, None] & mask_c[None, :]
        offs = parts.to(tl.int64)[:, None] * C + offs_c[None, :]
        # .cg: other programs wrote these; read them from L2, never from a stale L1 line
        tot_g += tl.load(psum_g_ptr + offs, mask=pmask, other=0.0, cache_modifier=".cg")
        tot_gx += tl.load(psum_gx_ptr + offs, mask=pmask, other=0.0, cache_modifier=".cg")
    return tl.sum(tot_g, axis=0), tl.sum(tot_gx, axis=0)


@triton.jit
def _finish_grad_sums(
    psum_g_ptr, psum_gx_ptr, p_lo, p_hi, means_ptr, gw_ptr, gb_ptr, offs_c, mask_c, M, C,
    WRITE_GRAD_W: tl.constexpr, WRITE_GRAD_B: tl.constexpr,
    ACCUMULATE_W: tl.constexpr, ACCUMULATE_B: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Stage 2 of the backward reductions: add partials [p_lo, p_hi) of sum(g) and
    sum(g * xhat), store their means (for bn_bwd_input_kernel) and the parameter gradients
    (grad_weight = sum(g * xhat), grad_bias = sum(g); added to the old values if ACCUMULATE_*)."""
    # fmt: off
    sum_g, sum_gx = _sum_partials(psum_g_ptr, psum_gx_ptr, p_lo, p_hi, C, offs_c, mask_c,
                                  BLOCK_P, BLOCK_C)
    # fmt: on
    tl.store(means_ptr + offs_c, sum_g / M, mask=mask_c)
    tl.store(means_ptr + C + offs_c, sum_gx / M, mask=mask_c)
    if WRITE_GRAD_W:
        gw = sum_gx
        if ACCUMULATE_W:
            gw += tl.load(gw_ptr + offs_c, mask=mask_c, other=0.0)
        tl.store(gw_ptr + offs_c, gw, mask=mask_c)
    if WRITE_GRAD_B:
        gb = sum_g
        if ACCUMULATE_B:
            gb += tl.load(gb_ptr + offs_c, mask=mask_c, other=0.0)
        tl.store(gb_ptr + offs_c, gb, mask=mask_c)


@triton.jit
def bn_bwd_sums_from_tiles_kernel(
    pg_ptr, pgx_ptr, qg_ptr, qgx_ptr, tickets_ptr, means_ptr, gw_ptr, gb_ptr,
    M, C, n_parts, SLAB, n_slabs,
    WRITE_GRAD_W: tl.constexpr, WRITE_GRAD_B: tl.constexpr,
    ACCUMULATE_W: tl.constexpr, ACCUMULATE_B: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """The backward reductions from the per-tile sums a consumer's dgrad epilogue stored
    (``store_grad_sums``), without reading g and x again.

    Layout: pg_ptr, pgx_ptr are fp32 [n_parts, C] partial sums of g' and g' * xhat. Program
    (pid_s, pid_c) adds partials [pid_s*SLAB, +SLAB) for channels [pid_c*BLOCK_C, +BLOCK_C)
    into qg/qgx [n_slabs, C] row pid_s; the channel block's last program (a ticket of
    tickets_ptr, left zero) adds the slabs in order and writes means_ptr, gw_ptr, gb_ptr as
    bn_bwd_reduce_kernel does (same arguments). M: rows of the batch norm's input.
    """
    wait_for_inputs()
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    p_lo = pid_s * SLAB
    p_hi = tl.minimum(p_lo + SLAB, n_parts)
    # fmt: off
    sum_g, sum_gx = _sum_partials(pg_ptr, pgx_ptr, p_lo, p_hi, C, offs_c, mask_c, BLOCK_P,
                                  BLOCK_C)
    # fmt: on
    out = pid_s.to(tl.int64) * C + offs_c
    tl.store(qg_ptr + out, sum_g, mask=mask_c)
    tl.store(qgx_ptr + out, sum_gx, mask=mask_c)

    if last_to_finish(tickets_ptr, pid_c, n_slabs):
        # fmt: off
        _finish_grad_sums(qg_ptr, qgx_ptr, 0, n_slabs, means_ptr, gw_ptr, gb_ptr, offs_c,
                          mask_c, M, C, WRITE_GRAD_W, WRITE_GRAD_B, ACCUMULATE_W,
                          ACCUMULATE_B, BLOCK_P, BLOCK_C)
        # fmt: on
        tl.store(tickets_ptr + pid_c, 0)


@triton.jit
def bn_bwd_reduce_kernel(
    g_ptr,
    x_ptr,
    mean_ptr,
    stat_ptr,
    w_ptr,
    b_ptr,
    psum_g_ptr,
    psum_gx_ptr,
    qsum_g_ptr,
    qsum_gx_ptr,
    tickets_ptr,
    means_ptr,
    gw_ptr,
    gb_ptr,
    M,
    C,
    HW,
    W,
    sg_n,
    sg_h,
    sg_w,
    sg_c,
    sx_n,
    sx_h,
    sx_w,
    sx_c,
    ROWS,
    n_parts,
    GROUP,
    n_groups,
    eps,
    alpha,
    STAT_IS_VAR: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    WRITE_GRAD_W: tl.constexpr,
    WRITE_GRAD_B: tl.constexpr,
    ACCUMULATE_W: tl.constexpr,
    ACCUMULATE_B: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    ALIGN: tl.constexpr,
    STAGES: tl.constexpr,
):
    """Backward reductions: per-channel sums of g and g * xhat over one slab of rows; the
    channel block's last program adds all slabs and writes the parameter gradients.

    Layout: g and x are M x C row matrices read through their own strides (sg_*, sx_*).
    Program (pid_m, pid_c) sums rows [pid_m*ROWS, +ROWS) for channels [pid_c*BLOCK_C,
    +BLOCK_C) into BLOCK_M x BLOCK_C fp32 accumulators, reduced once into partial pid_m.
    The partials are added in two levels, so no program walks hundreds of them serially
    (~1 us of L2 latency per BLOCK_P of them): partials come in groups of GROUP; the last
    program of a group to finish (a ticket per group and channel block) adds the group's
    partials in order into row pid_m // GROUP of qsum_g / qsum_gx, and the last of the
    channel block's n_groups group finishers adds those rows in order and writes the outputs.
    Both re-arm their tickets.

    g_ptr: gradient of the layer output. x_ptr: forward input.
    mean_ptr, stat_ptr: fp32 [C] mean and invstd (or variance when STAT_IS_VAR) used forward;
    xhat = (x - mean) * invstd.
    w_ptr, b_ptr: weight and bias (read only if HAS_WEIGHT / HAS_BIAS), used only to recompute
    the fused activation's input z = (x - mean) * invstd * w + b when ACT is set (g is then
    g * act'(z)).
    psum_g_ptr, psum_gx_ptr: fp32 [n_parts, C] scratch partial sums of g and g * xhat.
    qsum_g_ptr, qsum_gx_ptr: fp32 [n_groups, C] scratch sums of each group of partials.
    tickets_ptr: int32 [cdiv(C, BLOCK_C) * (n_groups + 1)] zeros (left zero): the group
    tickets (channel block major), then one per channel block.
    means_ptr: fp32 [2, C] output: sum(g) / M and sum(g * xhat) / M (for bn_bwd_input_kernel).
    gw_ptr, gb_ptr: fp32 [C] grad_weight = sum(g * xhat) and grad_bias = sum(g), stored when
    WRITE_GRAD_W / WRITE_GRAD_B: added into the existing values when ACCUMULATE_W /
    ACCUMULATE_B is set, else overwritten.
    ALIGN: row offsets and C are multiples of this (kernels/alignment.py; 1: unknown).
    STAGES: pipeline stages of the row loop's loads (STAGES - 1 row tiles in flight; LOOP_STAGES).
    """
    wait_for_inputs()
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = below(offs_c, C, ALIGN)
    c64 = offs_c.to(tl.int64)
    row0 = pid_m * ROWS
    n_rows = tl.minimum(ROWS, M - row0)

    mean, invstd = channel_stats(mean_ptr, stat_ptr, offs_c, mask_c, eps, STAT_IS_VAR)
    if ACT != 0:
        w, b = affine_params(w_ptr, b_ptr, offs_c, mask_c, HAS_WEIGHT, HAS_BIAS, BLOCK_C)
        scale = invstd * w

    acc_g = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    acc_gx = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    for start in tl.range(0, n_rows, BLOCK_M, num_stages=STAGES):
        rows = row0 + start + tl.arange(0, BLOCK_M)
        mask = (rows < row0 + n_rows)[:, None] & mask_c[None, :]
        g_offs = _row_offsets(rows, HW, W, sg_n, sg_h, sg_w, ALIGN)[:, None] + (c64 * sg_c)[None, :]
        x_offs = _row_offsets(rows, HW, W, sx_n, sx_h, sx_w, ALIGN)[:, None] + (c64 * sx_c)[None, :]
        g = tl.load(g_ptr + g_offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)
        diff = x - mean[None, :]
        if ACT != 0:
            z = diff * scale[None, :] + b[None, :]
            g = activation_grad(g, z, ACT, alpha)
        xhat = tl.where(mask, diff * invstd[None, :], 0.0)
        acc_g += g
        acc_gx += g * xhat

    out = pid_m.to(tl.int64) * C + offs_c
    tl.store(psum_g_ptr + out, tl.sum(acc_g, axis=0), mask=mask_c)
    tl.store(psum_gx_ptr + out, tl.sum(acc_gx, axis=0), mask=mask_c)

    group = pid_m // GROUP
    p_lo = group * GROUP
    p_hi = tl.minimum(p_lo + GROUP, n_parts)
    group_ticket = pid_c * n_groups + group
    if last_to_finish(tickets_ptr, group_ticket, p_hi - p_lo):
        # fmt: off
        sum_g, sum_gx = _sum_partials(psum_g_ptr, psum_gx_ptr, p_lo, p_hi, C, offs_c, mask_c,
                                      BLOCK_P, BLOCK_C)
        # fmt: on
        out = group.to(tl.int64) * C + offs_c
        tl.store(qsum_g_ptr + out, sum_g, mask=mask_c)
        tl.store(qsum_gx_ptr + out, sum_gx, mask=mask_c)
        tl.store(tickets_ptr + group_ticket, 0)
        block_tickets = tickets_ptr + tl.num_programs(1) * n_groups
        if last_to_finish(block_tickets, pid_c, n_groups):
            # fmt: off
            _finish_grad_sums(qsum_g_ptr, qsum_gx_ptr, 0, n_groups, means_ptr, gw_ptr, gb_ptr,
                              offs_c, mask_c, M, C, WRITE_GRAD_W, WRITE_GRAD_B, ACCUMULATE_W,
                              ACCUMULATE_B, BLOCK_P, BLOCK_C)
            # fmt: on
            tl.store(block_tickets + pid_c, 0)


@triton.jit
def bn_bwd_input_kernel(
    g_ptr,
    x_ptr,
    dx_ptr,
    mean_ptr,
    stat_ptr,
    w_ptr,
    b_ptr,
    means_ptr,
    M,
    C,
    HW,
    W,
    sg_n,
    sg_h,
    sg_w,
    sg_c,
    sx_n,
    sx_h,
    sx_w,
    sx_c,
    sd_n,
    sd_h,
    sd_w,
    sd_c,
    eps,
    alpha,
    BATCH_STATS: tl.constexpr,
    STAT_IS_VAR: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """Input gradient on one BLOCK_M x BLOCK_C tile.

    Batch statistics (training): dx = invstd * w * (g - mean(g) - xhat * mean(g * xhat)).
    Running statistics (eval):   dx = g * w * invstd.
    With a fused activation, g is first replaced by g * act'(z), z recomputed from x.

    Layout: g, x and dx are M x C row matrices with their own strides (sg_*, sx_*, sd_*).
    One program per BLOCK_M x BLOCK_C tile, in tile_order's order.
    mean_ptr, stat_ptr: fp32 [C] mean and invstd (or variance when STAT_IS_VAR) of the forward.
    w_ptr, b_ptr: fp32 [C] weight and bias (read only if HAS_WEIGHT / HAS_BIAS).
    means_ptr: fp32 [2, C] mean(g) and mean(g * xhat) from bn_bwd_reduce_kernel (read only
    when BATCH_STATS).
    ALIGN: row offsets and C are multiples of this (kernels/alignment.py; 1: unknown).
    """
    wait_for_inputs()
    pid_m, pid_c = row_channel_tile(C, BLOCK_C)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = below(offs_c, C, ALIGN)
    c64 = offs_c.to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = (rows < M)[:, None] & mask_c[None, :]

    mean, invstd = channel_stats(mean_ptr, stat_ptr, offs_c, mask_c, eps, STAT_IS_VAR)
    w, b = affine_params(w_ptr, b_ptr, offs_c, mask_c, HAS_WEIGHT, HAS_BIAS, BLOCK_C)
    scale = invstd * w

    g_offs = _row_offsets(rows, HW, W, sg_n, sg_h, sg_w, ALIGN)[:, None] + (c64 * sg_c)[None, :]
    g = tl.load(g_ptr + g_offs, mask=mask, other=0.0).to(tl.float32)
    if BATCH_STATS or ACT != 0:
        x_offs = _row_offsets(rows, HW, W, sx_n, sx_h, sx_w, ALIGN)[:, None] + (c64 * sx_c)[None, :]
        x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)
        diff = x - mean[None, :]
        if ACT != 0:
            z = diff * scale[None, :] + b[None, :]
            g = activation_grad(g, z, ACT, alpha)
    if BATCH_STATS:
        mean_g = tl.load(means_ptr + offs_c, mask=mask_c, other=0.0)
        mean_gx = tl.load(means_ptr + C + offs_c, mask=mask_c, other=0.0)
        xhat = diff * invstd[None, :]
        dx = scale[None, :] * (g - mean_g[None, :] - xhat * mean_gx[None, :])
    else:
        dx = g * scale[None, :]
    d_offs = _row_offsets(rows, HW, W, sd_n, sd_h, sd_w, ALIGN)[:, None] + (c64 * sd_c)[None, :]
    tl.store(dx_ptr + d_offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# --- launch helpers --------------------------------------------------------------------------


def _target_programs() -> int:
    """Stage-1 programs to aim for: a few per SM on the GPU; few in the (serial) interpreter."""
    if runtime.INTERPRETED:
        return 4
    return PROGRAMS_PER_SM * runtime.sm_count()


def _geometry(t: torch.Tensor) -> tuple[int, int, int, int, tuple[int, int, int, int]]:
    """(M, C, HW, W, (s_n, s_h, s_w, s_c)) of an (N,C), (N,C,L) or (N,C,H,W) tensor."""
    if t.dim() == 2:
        n, c = t.shape
        return n, c, 1, 1, (t.stride(0), 0, 0, t.stride(1))
    if t.dim() == 3:
        n, c, length = t.shape
        return n * length, c, length, length, (t.stride(0), 0, t.stride(2), t.stride(1))
    if t.dim() == 4:
        n, c, h, w = t.shape
        return n * h * w, c, h * w, w, runtime.nhwc_strides(t)
    raise ValueError(f"batch norm expects a 2-d, 3-d or 4-d input, got {t.dim()}-d")


def _dense_row_stride(m: int, hw: int, w: int, strides: tuple[int, int, int, int]) -> int | None:
    """The stride s with row r = (n*H + h)*W + w at element r * s, if there is one, for a
    tensor of ``_geometry`` (m, _, hw, w, strides): dense NHWC, an (N, C) matrix, an (N, C, L)
    tensor of contiguous rows; else None."""
    s_n, s_h, s_w, _ = strides
    h, n = hw // w, m // hw
    stride = s_w if w > 1 else s_h if h > 1 else s_n
    dense = (w == 1 or s_w == stride) and (h == 1 or s_h == w * stride)
    return stride if dense and (n == 1 or s_n == hw * stride) else None


def _row_decode(*tensors: torch.Tensor) -> tuple[int, int, list[tuple[int, int, int, int]]]:
    """(HW, W, each tensor's (s_n, s_h, s_w, s_c)) for a row kernel's launch over ``tensors``
    (one shape). When every tensor's rows are evenly spaced (``_dense_row_stride``): HW = W = 1
    and s_n = that spacing. Triton specialises an integer argument equal to 1 into the
    kernel, so ``_row_offsets``'s int64 divisions fold away: ptxas (sm_90) gives
    bn_bwd_reduce_kernel 102 registers instead of 156 (5 four-warp programs per SM, not 3),
    bn_apply_kernel 44 instead of 68, bn_stats_kernel 102 instead of 128."""
    m, _, hw, w, _ = _geometry(tensors[0])
    strides = [_geometry(t)[4] for t in tensors]
    rows = [_dense_row_stride(m, hw, w, s) for s in strides]
    if any(r is None for r in rows):
        return hw, w, strides
    return 1, 1, [(r, 0, 0, s[3]) for r, s in zip(rows, strides, strict=True)]


def _align(c: int, *tensors: torch.Tensor) -> int:
    """ALIGN (kernels/alignment.py) of a launch over ``tensors``, each an M x C row matrix."""
    aligns = (alignment.tensor_align(t, _geometry(t)[4], c) for t in tensors)
    return alignment.common_align(*aligns)


def pick_config(channels: int, elementwise: bool = False) -> NormConfig:
    """The narrowest listed channel block that covers ``channels``. Beyond the widest: for the
    row-slab reductions, the widest block that pads the channels by at most 1/8 (144 channels:
    5 blocks of 32, not 2 of 128 with 112 of the 256 lanes masked off); for the ``elementwise``
    kernels (apply, input grad) the widest block, whose longer contiguous row segments matter
    more than the masked lanes (H200, MobileNetV2 b512, 144 channels: bn_apply 122 us with
    blocks of 128, 162 us with blocks of 32)."""
    if runtime.INTERPRETED:  # few, large tiles: see runtime.interpreter_block
        block_c = runtime.interpreter_block(channels, 128)
        return NormConfig(max(16, runtime.INTERPRETER_TILE // block_c), block_c, 4)
    for cfg in NORM_CONFIGS:
        if cfg.block_c >= channels:
            return cfg
    if elementwise:
        return NORM_CONFIGS[-1]
    for cfg in reversed(NORM_CONFIGS):
        padded = triton.cdiv(channels, cfg.block_c) * cfg.block_c
        if 8 * (padded - channels) <= channels:
            return cfg
    return NORM_CONFIGS[0]


# Each stage-1 program reduces at least this many tiles, so a small tensor isn't split into
# hundreds of one-tile partials that stage 2 then walks serially.
MIN_STAGE1_TILES = 2


def _split_rows(m: int, c: int, cfg: NormConfig) -> tuple[int, int]:
    """(rows per stage-1 program, number of partials): enough programs to fill the device and
    no more than _target_programs() in all. Every program walks a slab of equal length, so one
    program beyond the ones resident at once is a second wave as long as the first (144
    channels at 32x32, b512: 106 partials x 5 channel blocks = 530 programs for an H100's 528)."""
    c_blocks = triton.cdiv(c, cfg.block_c)
    want = max(1, _target_programs() // c_blocks)
    tiles = max(triton.cdiv(triton.cdiv(m, want), cfg.block_m), MIN_STAGE1_TILES)
    rows = tiles * cfg.block_m
    return rows, triton.cdiv(m, rows)


def reduce_groups(n_parts: int, cfg: NormConfig) -> tuple[int, int]:
    """(partials per group, groups) of bn_bwd_reduce_kernel's two-level sum: groups of
    TILE_MERGE_ITERS stage-2 iterations."""
    group = TILE_MERGE_ITERS * stage2_block(cfg)
    return group, triton.cdiv(n_parts, group)


def _check(x: torch.Tensor, *per_channel: torch.Tensor | None) -> None:
    if x.dtype not in runtime.SUPPORTED_DTYPES:
        raise ValueError(f"batch norm: unsupported input dtype {x.dtype}")
    if x.dim() not in (2, 3, 4):
        raise ValueError(f"batch norm expects a 2-d, 3-d or 4-d input, got {x.dim()}-d")
    c = x.shape[1]
    for t in per_channel:
        if t is not None and (t.dim() != 1 or t.shape[0] != c):
            raise ValueError(f"batch norm: per-channel tensor of shape {tuple(t.shape)}, C={c}")


def _running_update_flags(
    rows: int,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    num_batches_tracked: torch.Tensor | None,
    momentum: float | None,
) -> tuple[bool, bool, bool]:
    """(update running stats, cumulative average, increment num_batches_tracked) of a
    batch-statistics forward over ``rows`` values per channel; torch's errors for the rest."""
    if rows < 2:  # as torch's F.batch_norm(training=True)
        raise ValueError(f"Expected more than 1 value per channel when training, got {rows}")
    update = running_mean is not None and running_var is not None
    cumulative = update and momentum is None
    if cumulative and num_batches_tracked is None:
        raise ValueError("momentum=None (cumulative average) needs num_batches_tracked")
    return update, cumulative, update and num_batches_tracked is not None


def _apply_batch_stats(
    x: torch.Tensor,
    save_mean: torch.Tensor,
    save_invstd: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    num_batches_tracked: torch.Tensor | None,
    eps: float,
    act: int,
    alpha: float,
    cfg: NormConfig,
    residual: torch.Tensor | None = None,
    residual_act: int = ACT_NONE,
) -> torch.Tensor:
    """y = act((x - mean) * invstd * weight + bias) with the batch statistics just computed
    (then residual_act(y + residual) with a residual); increments ``num_batches_tracked``
    when given (one launch)."""
    m, c = _geometry(x)[:2]
    y = runtime.empty_like(x)
    dummy = save_mean  # stands in for pointers a constexpr flag says are never touched
    inc = num_batches_tracked is not None
    r, r_flags = _residual_args(residual, residual_act, x, y)
    hw, w, (sx, sy, sr) = _row_decode(x, y, r)
    # fmt: off
    bn_apply_kernel[row_channel_grid(m, cfg.block_m, c, cfg.block_c)](
        x, y, r, save_mean, save_invstd,
        dummy if weight is None else weight, dummy if bias is None else bias,
        num_batches_tracked if inc else dummy,
        m, c, hw, w, *sx, *sy, *sr, float(eps), float(alpha),
        STAT_IS_VAR=False, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        INC_NBT=inc, ACT=act, BLOCK_M=cfg.block_m, BLOCK_C=cfg.block_c,
        ALIGN=_align(c, x, y, r), num_warps=cfg.num_warps, **r_flags,
        launch_pdl=LAUNCH_PDL,
    )
    # fmt: on
    return y


def _residual_args(residual: torch.Tensor | None, residual_act: int, x, y):
    """bn_apply_kernel's (r_ptr, HAS_RESIDUAL / RES_ACT flags); y stands in for an absent
    residual."""
    if residual is None:
        if residual_act != ACT_NONE:
            raise ValueError("batch norm: residual_act needs a residual")
        return y, {}
    if residual.shape != x.shape or residual.dtype not in runtime.SUPPORTED_DTYPES:
        raise ValueError(
            f"batch norm: residual {tuple(residual.shape)} {residual.dtype} must have the "
            f"input's shape {tuple(x.shape)} and a supported dtype"
        )
    flags = {"HAS_RESIDUAL": True, "RES_ACT": residual_act}
    return residual, flags


# Tile partials each program of bn_stats_from_tiles_kernel merges, in loop iterations of
# BLOCK_P partials: two, so a 4096-tile output (MobileNetV2's 32x32 layers at batch 512) takes
# a few dozen programs per channel block and its last program merges a single tile of slabs.
# bn_bwd_reduce_kernel's groups of partials are as large: its 512 partials of a 64-channel
# layer took 16 serial iterations of one program (~20 us of a 26 us kernel on an H200 where
# the input gradient took 6), and take 2 + 1 in two levels.
TILE_MERGE_ITERS = 2


def _stats_from_tiles(
    moments: TileMoments,
    m: int,
    c: int,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    num_batches_tracked: torch.Tensor | None,
    momentum: float | None,
    eps: float,
    update: bool,
    cumulative: bool,
    cfg: NormConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(save_mean, save_invstd) [C] from per-tile moments (bn_stats_from_tiles_kernel)."""
    partials, rows = moments
    n_parts = triton.cdiv(m, rows)
    if partials.shape != (2, n_parts, c) or partials.dtype != torch.float32:
        raise ValueError(
            f"batch norm: tile moments of shape {tuple(partials.shape)} ({partials.dtype}) "
            f"don't match a {m} x {c} input in tiles of {rows} rows"
        )
    block_p = stage2_block(cfg)
    slab = TILE_MERGE_ITERS * block_p
    n_slabs = triton.cdiv(n_parts, slab)
    c_blocks = triton.cdiv(c, cfg.block_c)
    slabs = runtime.empty((2, n_slabs, c))
    save_mean = runtime.empty((c,))
    save_invstd = runtime.empty((c,))
    dummy = save_mean  # stands in for pointers a constexpr flag says are never touched
    # fmt: off
    bn_stats_from_tiles_kernel[(n_slabs, c_blocks)](
        partials[0], partials[1], slabs[0], slabs[1], runtime.tickets(c_blocks),
        save_mean, save_invstd,
        running_mean if update else dummy, running_var if update else dummy,
        num_batches_tracked if cumulative else dummy,
        m, c, rows, n_parts, slab, n_slabs,
        0.0 if momentum is None else float(momentum), float(eps),
        UPDATE_RUNNING=update, CUMULATIVE=cumulative, BLOCK_P=block_p, BLOCK_C=cfg.block_c,
        num_warps=cfg.num_warps,
        launch_pdl=LAUNCH_PDL,
    )
    # fmt: on
    return save_mean, save_invstd


def batch_norm_forward_train(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    num_batches_tracked: torch.Tensor | None,
    momentum: float | None,
    eps: float,
    act: int = ACT_NONE,
    alpha: float = 0.0,
    config: NormConfig | None = None,
    moments: TileMoments | None = None,
    residual: torch.Tensor | None = None,
    residual_act: int = ACT_NONE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch-statistics forward: returns (y, save_mean, save_invstd), the last two fp32 [C].

    x: (N, C), (N, C, L) or (N, C, H, W), read through its strides; y is allocated like x.
    weight, bias: fp32 [C] or None (affine=False; bias=False).
    running_mean, running_var: fp32 [C] updated in place (momentum as torch; momentum=None is
    the cumulative average over num_batches_tracked), or both None to leave them alone.
    num_batches_tracked: int64 scalar incremented on the device when the running stats are
    updated (None: not tracked). act, alpha: fused activation (elementwise.ACT codes) applied
    to the normalised output. config: tile config (default: pick_config(C)).
    moments: x's per-tile moments, stored by the kernel that produced x (``TileMoments``):
    the statistics then come from them, and x is read once (by the apply) instead of twice.
    residual, residual_act: a residual block's skip tensor (x's shape, any layout) and the
    activation after the add: y = residual_act(act(normalised x) + residual), in the same
    pass (the backward is unchanged: the block differentiates the add and its activation).
    """
    _check(x, weight, bias, running_mean, running_var)
    save_mean, save_invstd, inc = _train_statistics(
        x, running_mean, running_var, num_batches_tracked, momentum, eps, config, moments
    )
    nbt = num_batches_tracked if inc else None
    apply_cfg = config or pick_config(x.shape[1], elementwise=True)
    # fmt: off
    y = _apply_batch_stats(x, save_mean, save_invstd, weight, bias, nbt, eps, act, alpha,
                           apply_cfg, residual, residual_act)
    # fmt: on
    return y, save_mean, save_invstd


def batch_norm_train_statistics(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    num_batches_tracked: torch.Tensor | None,
    momentum: float | None,
    eps: float,
    config: NormConfig | None = None,
    moments: TileMoments | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_norm_forward_train`` without the apply: (save_mean, save_invstd), the running
    statistics and num_batches_tracked updated the same way. For a consumer that normalises
    x as it loads it (``PendingNorm``)."""
    _check(x, None, None, running_mean, running_var)
    save_mean, save_invstd, inc = _train_statistics(
        x, running_mean, running_var, num_batches_tracked, momentum, eps, config, moments
    )
    if inc:
        count_batch_kernel[(1,)](num_batches_tracked, launch_pdl=LAUNCH_PDL)
    return save_mean, save_invstd


def _train_statistics(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    num_batches_tracked: torch.Tensor | None,
    momentum: float | None,
    eps: float,
    config: NormConfig | None,
    moments: TileMoments | None,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(save_mean, save_invstd, whether num_batches_tracked is still to be incremented): the
    statistics pass, or the merge of ``moments``; running statistics updated in place."""
    m, c = _geometry(x)[:2]
    update, cumulative, inc = _running_update_flags(
        m, running_mean, running_var, num_batches_tracked, momentum
    )
    cfg = config or pick_config(c)
    if moments is not None:
        save_mean, save_invstd = _stats_from_tiles(
            moments, m, c, running_mean, running_var, num_batches_tracked, momentum, eps,
            update, cumulative, cfg,
        )  # fmt: skip
        return save_mean, save_invstd, inc
    rows, n_parts = _split_rows(m, c, cfg)
    c_blocks = triton.cdiv(c, cfg.block_c)
    tile = {"BLOCK_C": cfg.block_c, "num_warps": cfg.num_warps}

    pmean = runtime.empty((n_parts, c))
    pm2 = runtime.empty((n_parts, c))
    save_mean = runtime.empty((c,))
    save_invstd = runtime.empty((c,))
    dummy = save_mean  # stands in for pointers a constexpr flag says are never touched
    hw, w, (sx,) = _row_decode(x)
    # fmt: off
    bn_stats_kernel[(n_parts, c_blocks)](
        x, pmean, pm2, runtime.tickets(c_blocks), save_mean, save_invstd,
        running_mean if update else dummy, running_var if update else dummy,
        num_batches_tracked if cumulative else dummy,
        m, c, hw, w, *sx, rows, n_parts,
        0.0 if momentum is None else float(momentum), float(eps),
        UPDATE_RUNNING=update, CUMULATIVE=cumulative, STORE_M2=False,
        BLOCK_M=cfg.block_m, BLOCK_P=stage2_block(cfg), STAGES=LOOP_STAGES,
        ALIGN=_align(c, x), **tile,
        launch_pdl=LAUNCH_PDL,
    )
    # fmt: on
    return save_mean, save_invstd, inc


def batch_norm_local_moments(x: torch.Tensor, config: NormConfig | None = None) -> torch.Tensor:
    """fp32 [2, C]: this rank's per-channel batch mean and M2 (sum of squared deviations), the
    first half of a synchronised batch-norm forward (one launch)."""
    _check(x)
    m, c = _geometry(x)[:2]
    cfg = config or pick_config(c)
    rows, n_parts = _split_rows(m, c, cfg)
    c_blocks = triton.cdiv(c, cfg.block_c)
    tile = {"BLOCK_C": cfg.block_c, "num_warps": cfg.num_warps}
    pmean = runtime.empty((n_parts, c))
    pm2 = runtime.empty((n_parts, c))
    moments = runtime.empty((2, c))
    hw, w, (sx,) = _row_decode(x)
    # fmt: off
    bn_stats_kernel[(n_parts, c_blocks)](
        x, pmean, pm2, runtime.tickets(c_blocks), moments[0], moments[1],
        moments, moments, moments, m, c, hw, w, *sx, rows, n_parts, 0.0, 0.0,
        UPDATE_RUNNING=False, CUMULATIVE=False, STORE_M2=True,
        BLOCK_M=cfg.block_m, BLOCK_P=stage2_block(cfg), STAGES=LOOP_STAGES,
        ALIGN=_align(c, x), **tile,
        launch_pdl=LAUNCH_PDL,
    )
    # fmt: on
    return moments


def batch_norm_forward_train_synced(
    x: torch.Tensor,
    moments: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    num_batches_tracked: torch.Tensor | None,
    momentum: float | None,
    eps: float,
    act: int = ACT_NONE,
    alpha: float = 0.0,
    config: NormConfig | None = None,
    residual: torch.Tensor | None = None,
    residual_act: int = ACT_NONE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Second half of a synchronised batch-norm forward: normalise x with the statistics of
    the global batch. moments: fp32 [world, 2, C], every rank's ``batch_norm_local_moments``
    (each over as many rows as x has). Returns (y, save_mean, save_invstd) and updates the
    running stats as batch_norm_forward_train does for the global batch (residual as there)."""
    _check(x, weight, bias, running_mean, running_var)
    m, c = _geometry(x)[:2]
    world = moments.shape[0]
    if tuple(moments.shape) != (world, 2, c) or not moments.is_contiguous():
        raise ValueError(f"moments must be a contiguous [world, 2, {c}] tensor")
    update, cumulative, inc = _running_update_flags(
        world * m, running_mean, running_var, num_batches_tracked, momentum
    )
    cfg = config or pick_config(c)
    c_blocks = triton.cdiv(c, cfg.block_c)
    save_mean = runtime.empty((c,))
    save_invstd = runtime.empty((c,))
    dummy = save_mean
    # fmt: off
    bn_stats_merge_ranks_kernel[(c_blocks,)](
        moments, save_mean, save_invstd,
        running_mean if update else dummy, running_var if update else dummy,
        num_batches_tracked if cumulative else dummy,
        world, c, m, 0.0 if momentum is None else float(momentum), float(eps),
        UPDATE_RUNNING=update, CUMULATIVE=cumulative, BLOCK_C=cfg.block_c,
        num_warps=cfg.num_warps,
        launch_pdl=LAUNCH_PDL,
    )
    # fmt: on
    nbt = num_batches_tracked if inc else None
    apply_cfg = config or pick_config(c, elementwise=True)
    # fmt: off
    y = _apply_batch_stats(x, save_mean, save_invstd, weight, bias, nbt, eps, act, alpha,
                           apply_cfg, residual, residual_act)
    # fmt: on
    return y, save_mean, save_invstd


def batch_norm_forward_eval(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
    act: int = ACT_NONE,
    alpha: float = 0.0,
    config: NormConfig | None = None,
    residual: torch.Tensor | None = None,
    residual_act: int = ACT_NONE,
) -> torch.Tensor:
    """Running-statistics forward in one pass: act((x - rm) / sqrt(rv + eps) * weight + bias).

    Arguments (residual too) as batch_norm_forward_train; the running stats are only read.
    """
    _check(x, weight, bias, running_mean, running_var)
    m, c = _geometry(x)[:2]
    cfg = config or pick_config(c, elementwise=True)
    y = runtime.empty_like(x)
    dummy = running_mean
    r, r_flags = _residual_args(residual, residual_act, x, y)
    hw, w, (sx, sy, sr) = _row_decode(x, y, r)
    # fmt: off
    bn_apply_kernel[row_channel_grid(m, cfg.block_m, c, cfg.block_c)](
        x, y, r, running_mean, running_var,
        dummy if weight is None else weight, dummy if bias is None else bias, dummy,
        m, c, hw, w, *sx, *sy, *sr, float(eps), float(alpha),
        STAT_IS_VAR=True, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        INC_NBT=False, ACT=act, BLOCK_M=cfg.block_m, BLOCK_C=cfg.block_c,
        ALIGN=_align(c, x, y, r), num_warps=cfg.num_warps, **r_flags,
        launch_pdl=LAUNCH_PDL,
    )
    # fmt: on
    return y


def _backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    has_bias: bool | None,
    mean: torch.Tensor,
    stat: torch.Tensor,
    eps: float,
    batch_stats: bool,
    grad_weight: torch.Tensor | None,
    grad_bias: torch.Tensor | None,
    act: int,
    alpha: float,
    config: NormConfig | None,
    average_means: Callable[[torch.Tensor], object] | None = None,
    sums: GradSums | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Shared body of both backwards; ``stat`` is invstd (batch_stats) or the running var.
    average_means: synchronised batch norm's in-place mean over the ranks of the [2, C]
    mean(g), mean(g * xhat) (equal row counts per rank), applied before the input grad.
    sums: g's per-tile backward sums (batch statistics only), replacing the reduction pass."""
    _check(x, weight, bias, mean, stat)
    if grad_out.shape != x.shape:
        raise ValueError(
            f"batch norm backward: grad_out {tuple(grad_out.shape)} != input {tuple(x.shape)}"
        )
    has_bias = (weight is not None or bias is not None) if has_bias is None else has_bias
    if has_bias and bias is None and act != ACT_NONE:
        raise ValueError("batch norm backward with a fused activation needs the layer's bias")
    m, c = _geometry(x)[:2]
    cfg = config or pick_config(c)
    c_blocks = triton.cdiv(c, cfg.block_c)
    tile = {"BLOCK_C": cfg.block_c, "num_warps": cfg.num_warps}
    flags = {
        "STAT_IS_VAR": not batch_stats,
        "HAS_WEIGHT": weight is not None,
        "HAS_BIAS": bias is not None,
        "ACT": act,
    }
    grad_in = runtime.empty_like(x)
    hw, w, (sg, sx, sd) = _row_decode(grad_out, x, grad_in)
    dummy = mean  # stands in for pointers a constexpr flag says are never touched
    w_arg = dummy if weight is None else weight
    b_arg = dummy if bias is None else bias
    want_gw = weight is not None
    want_gb = has_bias

    if sums is not None and not batch_stats:
        raise ValueError("batch norm backward: per-tile sums are for batch statistics only")
    means = dummy  # mean(g), mean(g * xhat): only the batch-statistics input grad reads them
    if batch_stats or want_gw or want_gb:
        means = runtime.empty((2, c))
        acc_w, acc_b = grad_weight is not None, grad_bias is not None
        if want_gw and not acc_w:
            grad_weight = runtime.empty((c,))
        if want_gb and not acc_b:
            grad_bias = runtime.empty((c,))
        outputs = (means, grad_weight if want_gw else means, grad_bias if want_gb else means)
        writes = {
            "WRITE_GRAD_W": want_gw,
            "WRITE_GRAD_B": want_gb,
            "ACCUMULATE_W": acc_w,
            "ACCUMULATE_B": acc_b,
            "BLOCK_P": stage2_block(cfg),
        }
        if sums is not None:
            _grad_sums_from_tiles(sums, m, c, outputs, writes, cfg)
        else:
            rows, n_parts = _split_rows(m, c, cfg)
            group, n_groups = reduce_groups(n_parts, cfg)
            psums = runtime.empty((2, n_parts, c))
            qsums = runtime.empty((2, n_groups, c))
            # fmt: off
            bn_bwd_reduce_kernel[(n_parts, c_blocks)](
                grad_out, x, mean, stat, w_arg, b_arg, psums[0], psums[1], qsums[0], qsums[1],
                runtime.tickets(c_blocks * (n_groups + 1)), *outputs,
                m, c, hw, w, *sg, *sx, rows, n_parts, group, n_groups, float(eps), float(alpha),
                BLOCK_M=cfg.block_m, STAGES=LOOP_STAGES, ALIGN=_align(c, grad_out, x),
                **writes, **flags, **tile,
                launch_pdl=LAUNCH_PDL,
            )
            # fmt: on
        if average_means is not None and batch_stats:
            average_means(means)
    ew = config or pick_config(c, elementwise=True)
    # fmt: off
    bn_bwd_input_kernel[row_channel_grid(m, ew.block_m, c, ew.block_c)](
        grad_out, x, grad_in, mean, stat, w_arg, b_arg, means,
        m, c, hw, w, *sg, *sx, *sd, float(eps), float(alpha),
        BATCH_STATS=batch_stats, BLOCK_M=ew.block_m, BLOCK_C=ew.block_c,
        ALIGN=_align(c, grad_out, x, grad_in), num_warps=ew.num_warps, **flags,
        launch_pdl=LAUNCH_PDL,
    )
    # fmt: on
    return grad_in, (grad_weight if want_gw else None), (grad_bias if want_gb else None)


def _grad_sums_from_tiles(
    sums: GradSums, m: int, c: int, outputs: tuple, writes: dict, cfg: NormConfig
) -> None:
    """means, grad_weight, grad_bias (``outputs``) from per-tile backward sums
    (bn_bwd_sums_from_tiles_kernel); ``writes``: the kernel's WRITE_/ACCUMULATE_ flags."""
    partials = sums.partials
    if partials.dim() != 3 or partials.shape[::2] != (2, c) or partials.dtype != torch.float32:
        raise ValueError(
            f"batch norm backward: tile sums of shape {tuple(partials.shape)} "
            f"({partials.dtype}) don't match {c} channels (expected fp32 [2, n_parts, {c}])"
        )
    n_parts = partials.shape[1]
    slab = TILE_MERGE_ITERS * writes["BLOCK_P"]
    n_slabs = triton.cdiv(n_parts, slab)
    c_blocks = triton.cdiv(c, cfg.block_c)
    slabs = runtime.empty((2, n_slabs, c))
    # fmt: off
    bn_bwd_sums_from_tiles_kernel[(n_slabs, c_blocks)](
        partials[0], partials[1], slabs[0], slabs[1], runtime.tickets(c_blocks), *outputs,
        m, c, n_parts, slab, n_slabs,
        BLOCK_C=cfg.block_c, num_warps=cfg.num_warps, **writes,
        launch_pdl=LAUNCH_PDL,
    )
    # fmt: on


def batch_norm_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    save_mean: torch.Tensor,
    save_invstd: torch.Tensor,
    grad_weight: torch.Tensor | None = None,
    grad_bias: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    has_bias: bool | None = None,
    act: int = ACT_NONE,
    alpha: float = 0.0,
    config: NormConfig | None = None,
    average_means: Callable[[torch.Tensor], object] | None = None,
    sums: GradSums | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Backward of batch_norm_forward_train: returns (grad_in, grad_weight, grad_bias).

    grad_in has x's shape, dtype and layout. grad_weight (when weight is given) and grad_bias
    (when the layer has a bias: ``has_bias``, by default whenever weight or bias is given) are
    fp32 [C]: fresh tensors when passed as None, else the given tensors with the new gradient
    added in place; None for parameters the layer lacks. bias: the layer's bias, needed only
    with a fused activation (act, alpha as in the forward), whose input is recomputed from x.
    average_means: set for synchronised batch norm (the statistics were the global batch's):
    averages the per-channel gradient means over the ranks; grad_weight / grad_bias stay this
    rank's sums (the gradient all-reduce averages them like every other parameter's).
    sums: grad_out's per-tile sums, stored by the kernel that computed grad_out
    (``GradSums``): the reductions then come from them, and g and x are read once (by the
    input gradient) instead of twice.
    """
    return _backward(
        grad_out, x, weight, bias, has_bias, save_mean, save_invstd, 0.0, True,
        grad_weight, grad_bias, act, alpha, config, average_means, sums,
    )  # fmt: skip


def batch_norm_backward_eval(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
    grad_weight: torch.Tensor | None = None,
    grad_bias: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    has_bias: bool | None = None,
    act: int = ACT_NONE,
    alpha: float = 0.0,
    config: NormConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Backward of batch_norm_forward_eval (the running stats are constants there).

    grad_in = g * weight / sqrt(running_var + eps); grad_weight = sum(g * xhat) and
    grad_bias = sum(g), returned, written or accumulated as in batch_norm_backward.
    """
    return _backward(
        grad_out, x, weight, bias, has_bias, running_mean, running_var, eps, False,
        grad_weight, grad_bias, act, alpha, config,
    )  # fmt: skip
