"""Persistent 1x1 convolution for short reductions: MobileNetV2's expand forwards and its
projections' input gradients.

A 1x1, stride-1 conv over dense NHWC activations is the GEMM y[M, C_out] = x[M, C_in] @ w^T
with M = N * H * W. When C_in is small the pointer kernel (conv.py) gives each program one
BLOCK_M x BLOCK_N tile and one to four K steps of 32 (one for C_in = 24): it loads its A
tile, waits for it, issues the MMA and spends the rest in the epilogue, and the next program
on that SM starts only then. The 24 -> 144 expand forward at 32x32, b512 (~176 MB moved)
took 216 us so on an H100 (0.8 TB/s, 12-06 trace). Here a program stays resident and walks
row tiles ``pid, pid + P, ...`` of one column block: its weight block is loaded once, and the
loop over row tiles is pipelined (``tl.range(num_stages=...)``), so the next A tile is in
flight while the last one's output is stored.

The input gradient of a 1x1 conv is the same GEMM with the weight transposed (dx[M, C_in] =
g[M, C_out] @ w, a reduction over C_out): ``conv2d_dgrad_pointwise`` runs it through the same
kernel, with the backward sums of the batch norm before the conv in its epilogue when linked
(``bn_grad_sums``), but no added gradient or ReLU mask (those stay on the pointer kernel).

On by default on the GPU (``TRITONCNN_POINTWISE=0`` turns it off; off in the interpreter,
whose tests set ``ENABLED``): on an H100 (2026-12-08) MobileNetV2's graphed b512 step took
11.750 / 11.766 ms with it against 11.863 / 11.868 without, in two processes. Per op it beat
the pointer kernel's best tile on every MobileNetV2 1x1 shape it takes at 32x32 and 16x16
(the 24 -> 144 expand forward 77.6 against 114.0 us; benchmarks/README.md);
``benchmarks/conv_tiles.py --ops fwd_pointwise dgrad_pointwise`` times its tiles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from tritoncnn import runtime
from tritoncnn.kernels import alignment
from tritoncnn.kernels.alignment import below
from tritoncnn.kernels.conv_halo import sm_shared_bytes
from tritoncnn.kernels.elementwise import ACT_NONE, apply_activation
from tritoncnn.kernels.norm_fusion import (
    GradSums,
    PendingNorm,
    TileMoments,
    grad_sums,
    grad_sums_args,
    store_grad_sums,
    store_tile_moments,
    store_tile_moments_one_pass,
    tile_moments,
)
from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs


def env_enabled() -> bool:
    """conv.py sends the 1x1 forwards and dgrads (without an added gradient or ReLU mask)
    that qualify here on the GPU unless TRITONCNN_POINTWISE=0 (in the interpreter only with
    TRITONCNN_POINTWISE=1: its heuristic tiles are slow there)."""
    default = "0" if runtime.INTERPRETED else "1"
    return os.environ.get("TRITONCNN_POINTWISE", default) == "1"


# Read at every launch (benchmarks and tests set it).
ENABLED: bool = env_enabled()

# The forward's BN moments in one reduction (norm_fusion.store_tile_moments_one_pass) instead of
# two dependent ones: in 12-08's H100 trace the step's pointwise forwards, which store the
# moments, took 1.5-3x the plain forwards of the tile sweep, and this kernel's 1-3 programs
# an SM have nothing to hide the epilogue's cross-warp exchanges behind. Off until timed
# (TRITONCNN_ONE_PASS_MOMENTS=1; conv_tiles.py --moments); read at every launch.
ONE_PASS_MOMENTS: bool = os.environ.get("TRITONCNN_ONE_PASS_MOMENTS", "0") == "1"

# The whole reduction is one K block (BLOCK_K = C_in rounded up to a power of two, at least
# 16 for the MMA): beyond this the pointer kernel's pipelined K loop has work to overlap.
MAX_C_IN = 128


# The reductions (BLOCK_K) the kernel compiles for: C_in 1-128 rounded up (reduction_block).
BLOCK_KS = (16, 32, 64, 128)


@dataclass(frozen=True)
class PointwiseConfig:
    """Row tile, column block, warps, pipeline stages of the row-tile loop, and the programs
    per SM its registers leave room for at each BLOCK_K of BLOCK_KS: per_sm for the forward
    with its BN moments (two passes), per_sm_one_pass with them in one (ONE_PASS_MOMENTS),
    per_sm_plain for the dgrad use without them; per_sm_sums (any BLOCK_K) for the dgrad
    with the batch norm's sums (GRAD_SUMS, whose per-channel terms and tiles take registers;
    None: a tile that never stores them, not in SUMS_CONFIGS). The launch lowers it where
    shared memory allows fewer (``resident_per_sm``); a dataclass, as the autotuner's cache
    wants."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    per_sm: tuple[int, int, int, int]
    per_sm_one_pass: tuple[int, int, int, int]
    per_sm_plain: tuple[int, int, int, int]
    per_sm_sums: int | None = None

    def smem_bytes(self, block_k: int, sums: bool = False) -> int:
        """Shared memory of a program: the pipelined A tiles, the weight block and the
        epilogue's tile (ptxas for sm_90, 2026-12-07: 36 KiB at 128 x 64 and C_in 24, 120
        KiB at C_in 128, 64 and 160 KiB for 128 x 128; this counts 44, 128, 64, 160); with
        ``sums``, the pipelined tiles of the batch norm's input too (55 KiB at 64 x 64 and
        K 24; this counts 60)."""
        a = self.num_stages * self.block_m * block_k
        xn = self.num_stages * self.block_m * self.block_n if sums else 0
        return 2 * (a + block_k * self.block_n + self.block_m * self.block_n + xn)


# The programs per SM: those of 128 / 256 threads that ptxas's registers (sm_90, triton 3.6,
# 2026-12-08) leave room for; tests/test_ptx.py compiles every tile at every BLOCK_K in each
# use and checks each count is exactly what fits. A program beyond those would start only
# when one finishes, and every program walks the same number of row tiles: a second wave as
# long as the first; one fewer leaves a share of every SM idle. Registers, two-pass moments /
# one-pass / plain at BLOCK_K 16, 32, 64, 128: 128 x 64 128/120/96, 138/166/91, 168/171/156,
# 138/163/92; 128 x 128 (8 warps) 128/128/106, 144/128/106, 150/184/104, 167/206/152; 64 x
# 64 72/72/58, 78/80/58, 96/116/90, 78/78/58; the 4-stage 128 x 64 128/120/96,
# 138/166/91, 209/195/164, 138/163/92. With GRAD_SUMS (K 24-128) the 128-row tiles spill
# (255 registers + 136 bytes at 128 x 64, + 216 at 128 x 128) and 64 x 64 takes 172-211 (2).
# The last has a deeper row-tile pipeline (two A tiles in flight instead of one, 44 KiB at
# C_in 24); an autotuning candidate: on an H100 it was the best pointwise tile (or tied) on
# 5 of MobileNetV2's 11 short-K ops at 32x32 / 16x16 and up to 13% behind the best
# elsewhere (2026-12-07).
POINTWISE_CONFIGS: tuple[PointwiseConfig, ...] = (
    PointwiseConfig(128, 64, 4, 3, (4, 3, 3, 3), (4, 3, 2, 3), (5, 5, 3, 5)),
    PointwiseConfig(128, 128, 8, 3, (2, 1, 1, 1), (2, 2, 1, 1), (2, 2, 2, 1)),
    PointwiseConfig(64, 64, 4, 4, (7, 6, 5, 6), (7, 6, 4, 6), (8, 8, 5, 8), per_sm_sums=2),
    PointwiseConfig(128, 64, 4, 4, (4, 3, 2, 3), (4, 3, 2, 3), (5, 5, 3, 5)),
)
# The tiles that store the dgrad's batch-norm sums without spilling.
SUMS_CONFIGS: tuple[PointwiseConfig, ...] = (POINTWISE_CONFIGS[2],)


def reduction_block(c_in: int) -> int:
    """BLOCK_K: the whole reduction in one block (at least 16, the MMA's K)."""
    return max(16, triton.next_power_of_2(c_in))


def resident_per_sm(cfg: PointwiseConfig, c_in: int, use: str = "moments") -> int:
    """Programs of ``cfg`` that fit on one SM at once in ``use`` ("moments": the forward
    with its BN moments, "one_pass": with them in one reduction, "plain": the dgrad without
    them, "sums": with the dgrad's batch-norm sums), or fewer where their shared memory (228
    KiB an SM on sm_90) runs out first."""
    block_k = reduction_block(c_in)
    at = BLOCK_KS.index(block_k)
    per_sm = {
        "moments": cfg.per_sm[at],
        "one_pass": cfg.per_sm_one_pass[at],
        "plain": cfg.per_sm_plain[at],
        "sums": cfg.per_sm_sums,
    }[use]
    if per_sm is None:
        raise ValueError(
            f"pointwise tile {cfg} does not store batch-norm sums without spilling: force one "
            "of conv_pointwise.SUMS_CONFIGS on a dgrad with bn_grad_sums"
        )
    if runtime.INTERPRETED:
        return per_sm
    fit = sm_shared_bytes() // (cfg.smem_bytes(block_k, use == "sums") + 1024)
    return max(1, min(per_sm, fit))


def pick_pointwise_config(c_out: int, sums: bool = False) -> PointwiseConfig:
    """64-wide column blocks pad MobileNetV2's 144 / 192 / 576 / 960 channels least (as the
    pointer forward's heuristic), 128-wide ones where they pad no more; with the dgrad's
    batch-norm sums, the tile that holds them without spilling."""
    if sums:
        return SUMS_CONFIGS[0]
    if triton.cdiv(c_out, 128) * 128 <= triton.cdiv(c_out, 64) * 64:
        return POINTWISE_CONFIGS[1]
    return POINTWISE_CONFIGS[0]


def pointwise_applicable(
    x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups: int
) -> bool:
    """A 1x1, stride-1, unpadded, ungrouped forward of dense NHWC fp16 / bf16 ``x`` with at
    most MAX_C_IN input channels (weights of any float dtype: cast as loaded). For a dgrad:
    ``x`` is grad_out and ``weight`` the transposed weight (``weight.transpose(0, 1)``)."""
    c_out, c_in, kh, kw = weight.shape
    return (
        kh == kw == 1
        and tuple(stride) == (1, 1)
        and tuple(padding) == (0, 0, 0, 0)
        and tuple(dilation) == (1, 1)
        and groups == 1
        and c_in <= MAX_C_IN
        and x.dtype in (torch.float16, torch.bfloat16)
        and x.is_contiguous(memory_format=torch.channels_last)
    )


@triton.jit
def pointwise_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, pmean_ptr, pm2_ptr, nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr,
    xn_ptr, psum_g_ptr, psum_gx_ptr,
    M, C_in, C_out,
    sw_o, sw_i,
    alpha, n_alpha,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, MOMENTS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr, X_ALIGN: tl.constexpr, Y_ALIGN: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
    GRAD_SUMS: tl.constexpr = False, IN_HAS_W: tl.constexpr = False,
    IN_HAS_B: tl.constexpr = False, IN_ACT: tl.constexpr = 0,
    ONE_PASS: tl.constexpr = False,
):  # fmt: skip
    """y = act(x @ w^T + b) for dense NHWC x (M rows of C_in) and y (M rows of C_out).

    Grid (P, column blocks): program (p, j) owns output channels [j*BLOCK_N, +BLOCK_N) and
    row tiles p, p + P, p + 2P, ... of BLOCK_M rows. Its weight block (BLOCK_K x BLOCK_N, the
    whole reduction: BLOCK_K >= C_in) is loaded once; each row tile is one A load (BLOCK_M x
    BLOCK_K), one MMA into fp32, then bias, activation, one rounding and the store. The row
    tile loop is software-pipelined over STAGES so the next A tile loads during the epilogue.

    w_ptr: weight, logical C_out x C_in (strides sw_o, sw_i; any float dtype, cast to x's).
    b_ptr: fp32 bias (read when HAS_BIAS). ACT, alpha: the fused activation (elementwise.py).
    pmean_ptr, pm2_ptr: with MOMENTS, fp32 [cdiv(M, BLOCK_M), C_out] (mean, M2) of each row
    tile of y as stored (norm_fusion.TileMoments with BLOCK_M rows, as conv2d_fwd_kernel's); with
    ONE_PASS, in one reduction (norm_fusion.store_tile_moments_one_pass).
    X_ALIGN, Y_ALIGN: C_in and C_out are multiples of these (16-byte rows: vector accesses).
    EMULATE_BF16: the MMA in fp32 (the interpreter can't multiply bf16).
    GRAD_SUMS (the dgrad use): y is the gradient of a training batch norm's output (after
    its activation IN_ACT) and xn_ptr that batch norm's input (dense NHWC, M rows of C_out):
    each row tile also stores its per-column sum(g') and sum(g' * xhat)
    (norm_fusion.store_grad_sums' terms) as partial ``tile`` of the fp32 [cdiv(M, BLOCK_M),
    C_out] buffers psum_g_ptr, psum_gx_ptr; nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr, n_alpha,
    IN_HAS_W, IN_HAS_B, IN_ACT: that batch norm's statistics, parameters and activation (as
    norm_fusion.store_grad_sums takes them).
    """
    wait_for_inputs()
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = below(cols, C_out, Y_ALIGN)
    offs_k = tl.arange(0, BLOCK_K)
    mask_k = below(offs_k, C_in, X_ALIGN)
    w_offs = cols.to(tl.int64)[None, :] * sw_o + offs_k[:, None] * sw_i
    w = tl.load(w_ptr + w_offs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
    w = w.to(x_ptr.dtype.element_ty)
    if HAS_BIAS:
        bias = tl.load(b_ptr + cols, mask=mask_n, other=0.0).to(tl.float32)

    for tile in tl.range(pid, tl.cdiv(M, BLOCK_M), programs, num_stages=STAGES):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = rows < M
        x_row = rows.to(tl.int64) * C_in
        if X_ALIGN > 1:
            x_row = tl.multiple_of(x_row, X_ALIGN)
        a = tl.load(
            x_ptr + x_row[:, None] + offs_k[None, :],
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )
        if EMULATE_BF16:
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), input_precision="ieee")
        else:
            acc = tl.dot(a, w)
        if HAS_BIAS:
            acc += bias[None, :]
        acc = apply_activation(acc, ACT, alpha)
        y = acc.to(y_ptr.dtype.element_ty)
        y_row = rows.to(tl.int64) * C_out
        if Y_ALIGN > 1:
            y_row = tl.multiple_of(y_row, Y_ALIGN)
        tl.store(y_ptr + y_row[:, None] + cols[None, :], y, mask=mask_m[:, None] & mask_n[None, :])
        if GRAD_SUMS:
            valid = mask_m[:, None] & mask_n[None, :]
            xn = tl.load(xn_ptr + y_row[:, None] + cols[None, :], mask=valid, other=0.0)
            # (the norm's terms load with each tile: hoisted, they held registers all loop)
            # fmt: off
            store_grad_sums(psum_g_ptr, psum_gx_ptr, y.to(tl.float32), xn.to(tl.float32), valid,
                            tl.zeros((), tl.int64) + tile, cols, mask_n, C_out, nmean_ptr,
                            ninvstd_ptr, nw_ptr, nb_ptr, n_alpha, IN_HAS_W, IN_HAS_B, IN_ACT,
                            BLOCK_N)
            # fmt: on
        if MOMENTS:
            part = tl.zeros((), tl.int64) + tile  # (a Python int in the interpreter)
            # fmt: off
            if ONE_PASS:
                store_tile_moments_one_pass(pmean_ptr, pm2_ptr, y.to(tl.float32), mask_m, part,
                                            cols, mask_n, C_out)
            else:
                store_tile_moments(pmean_ptr, pm2_ptr, y.to(tl.float32), mask_m,
                                   tl.minimum(M - tile * BLOCK_M, BLOCK_M), part, cols, mask_n,
                                   C_out)
            # fmt: on


def conv2d_forward_pointwise(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    act: int,
    alpha: float,
    moments: bool,
    cfg: PointwiseConfig,
) -> TileMoments | None:
    """The 1x1 forward of ``x`` into ``out`` (dense NHWC, x's dtype) with pointwise_fwd_kernel;
    with ``moments``, also the per-tile batch-norm moments of ``out`` (norm_fusion.TileMoments)."""
    tiles, _ = _launch(x, weight, bias, out, act, alpha, moments, cfg, None, None)
    return tiles


def conv2d_dgrad_pointwise(
    grad_out: torch.Tensor,
    weight: torch.Tensor,
    out: torch.Tensor,
    cfg: PointwiseConfig,
    bn: PendingNorm | None = None,
    bn_input: torch.Tensor | None = None,
) -> GradSums | None:
    """The input gradient of a 1x1 conv (``weight``: C_out x C_in x 1 x 1) into ``out`` (dense
    NHWC): the forward kernel over grad_out with the transposed weight. With ``bn`` (the
    statistics, parameters and activation of the training batch norm whose output the conv
    read) and ``bn_input`` (that batch norm's input, dense NHWC), also that batch norm's
    backward sums (norm_fusion.GradSums, one partial per row tile), as conv2d_dgrad_grad_sums."""
    _, sums = _launch(
        grad_out, weight.transpose(0, 1), None, out, ACT_NONE, 0.0, False, cfg, bn, bn_input
    )
    return sums


def _launch(x, weight, bias, out, act, alpha, moments, cfg, bn, bn_input):
    """pointwise_fwd_kernel over ``x`` into ``out``: (TileMoments or None, GradSums or
    None)."""
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    if not out.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("conv2d_forward_pointwise: out must be a dense NHWC tensor")
    m = n * h * w
    # the dgrad's batch-norm sums: that norm's input and terms (stand-ins without)
    xn, norm_ptrs, norm_alpha, norm_flags = grad_sums_args(
        bn, bn_input, out.shape, out, "conv2d_dgrad_pointwise:"
    )
    if not xn.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("conv2d_dgrad_pointwise: bn_input must be a dense NHWC tensor")
    tiles = tile_moments(m, c_out, cfg.block_m) if moments else None
    parts = tiles.partials if tiles is not None else (out, out)
    row_tiles = triton.cdiv(m, cfg.block_m)
    sums = grad_sums(row_tiles, c_out) if bn is not None else None
    sum_parts = sums.partials if sums is not None else (out, out)
    col_blocks = triton.cdiv(c_out, cfg.block_n)
    one_pass = moments and ONE_PASS_MOMENTS
    use = "one_pass" if one_pass else "moments" if moments else "plain"
    per_sm = resident_per_sm(cfg, c_in, "sums" if bn is not None else use)
    programs = max(1, min(row_tiles, per_sm * runtime.sm_count() // col_blocks))
    pointwise_fwd_kernel[(programs, col_blocks)](
        x, weight, weight if bias is None else bias, out, parts[0], parts[1], *norm_ptrs,
        xn, sum_parts[0], sum_parts[1],
        m, c_in, c_out,
        weight.stride(0), weight.stride(1),
        float(alpha), norm_alpha,
        HAS_BIAS=bias is not None, ACT=act, MOMENTS=moments,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=reduction_block(c_in),
        STAGES=cfg.num_stages,
        X_ALIGN=alignment.tensor_align(x, runtime.nhwc_strides(x), c_in),
        Y_ALIGN=alignment.tensor_align(out, runtime.nhwc_strides(out), c_out),
        EMULATE_BF16=runtime.bf16_dot_emulated(x.dtype),
        GRAD_SUMS=bn is not None, **norm_flags, ONE_PASS=one_pass,
        num_warps=cfg.num_warps,
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return tiles, sums
