"""Weight and bias gradients of a 2-d convolution by implicit GEMM (the forward and the input
gradient are in conv.py, whose module docstring gives the layouts and the three GEMMs).

    dw[o, c] (one tap) = sum_p dy[p, o] * x_tap[p, c]     M = Cout_g, N = Cin_g, K = N*HO*WO

The reduction runs over every output pixel of the batch (K = N*HO*WO: 512K at 32x32, batch
512), so it is split (split-K): each program reduces one share of the pixels into an fp32
partial sum, and ``splitk_reduce_kernel`` adds the partials in a fixed order (deterministic,
no atomics) into the fp32 gradient, added to what it held when accumulating. A program
computes one tap (KH*KW programs along the grid's tap axis), a whole filter row (ROW_TAPS:
each dy tile read once for the row's taps), or the (tap, channel) axis flattened (FLAT_N:
few input channels, the RGB stem). ``bias_grad_kernel`` sums dy over the pixels the same
two-stage way.

On the GPU the autotuner chooses the tile, then the split for that tile; the heuristic
(``conv_configs._pick_split`` bounded by ``_max_split``) fills in otherwise. 3x3 stride-1
convs that qualify go to the halo weight-gradient kernel (conv_halo_wgrad.py) by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from tritoncnn import runtime
from tritoncnn.kernels import autotune, conv, conv_configs, conv_halo, conv_halo_wgrad, conv_tma
from tritoncnn.kernels.alignment import below
from tritoncnn.kernels.conv import (
    FLAT_MAX_CHANNELS,
    GROUP_M,
    IntPair,
    _check_act,
    _check_halo_config,
    _check_tma_config,
    _dot,
    _padding4,
    _pair,
    _resolve_config,
    _scratch_runner,
    _tuned,
    vector_align,
)
from tritoncnn.kernels.conv_configs import (
    BIAS_CONFIGS,
    BiasGradConfig,
    ConvConfig,
    SplitChoice,
    _max_split,
    _pick_split,
    gemm_candidates,
    pick_config,
    reduce_rows,
    split_candidates,
)
from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs
from tritoncnn.kernels.tile_order import grouped_tile

# --- kernels ---------------------------------------------------------------------------------


@triton.jit
def conv2d_wgrad_kernel(
    x_ptr, dy_ptr, dw_ptr,
    N, H, W, C_in_g, HO, WO, C_out_g,
    sx_n, sx_h, sx_w, sx_c,
    sdy_n, sdy_h, sdy_w, sdy_c,
    sdw_o, sdw_i, sdw_h, sdw_w, sdw_split,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    pix_per_split,
    KH: tl.constexpr, KW: tl.constexpr, IS_1X1: tl.constexpr, FLAT_N: tl.constexpr,
    ACCUMULATE: tl.constexpr, DOT_PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    X_ALIGN: tl.constexpr, DY_ALIGN: tl.constexpr, ROW_TAPS: tl.constexpr = False,
):  # fmt: skip
    """dw[o, c, kh, kw] = sum over output pixels p of dy[p, o] * x[pixel p shifted by the tap, c]:
    one BLOCK_M x BLOCK_N tile of (out channel, in channel) for one tap, one group, one K split.
    With FLAT_N (small C_in_g) the columns run over flattened (kh, kw, c) instead, all taps in
    one tile, so the RGB stem doesn't spend a program per tap on 3 useful columns.
    With ROW_TAPS (KW <= 3) a program computes the KW taps of one filter row (kh) in KW
    accumulators: each dy tile it loads feeds KW dots instead of one, so dy is read KH times
    rather than KH*KW times (the x tiles of neighbouring taps are one pixel apart).

    Grid: (row tiles * column tiles in grouped order, groups * KH * KW (groups with FLAT_N,
    groups * KH with ROW_TAPS), splits). Split s reduces
    output pixels [s*pix_per_split, (s+1)*pix_per_split) and writes (or, with ACCUMULATE, adds)
    its fp32 sum at dw_ptr + s*sdw_split; with several splits that is a partial buffer which
    ``splitk_reduce_kernel`` then sums in a fixed order.

    x_ptr: forward input, logical N,C_in,H,W, strides sx_*.
    dy_ptr: output gradient, logical N,C_out,HO,WO, strides sdy_*.
    dw_ptr: fp32 destination, logical C_out,C_in_g,KH,KW, strides sdw_* (o, i, kh, kw).
    sdw_split: elements between the destinations of consecutive splits.
    N, H, W, C_in_g, HO, WO, C_out_g, stride_*, pad_* (top/left), dil_*: as in the forward.
    pix_per_split: K (output pixels) per split, a multiple of BLOCK_K.
    KH, KW: kernel size. IS_1X1: 1x1 stride-1 pad-0 conv (no tap arithmetic).
    FLAT_N: columns are flattened (kh, kw, c). ACCUMULATE: add into dw instead of overwriting.
    DOT_PRECISION, EMULATE_BF16: as in the forward.
    X_ALIGN, DY_ALIGN: as the forward's X_ALIGN, for x (C_in_g; never with FLAT_N) and dy
    (C_out_g): their channel runs are the contiguous axes of the B and A tiles here.
    ROW_TAPS: one program per filter row, KW accumulators (not with FLAT_N or IS_1X1).
    """
    wait_for_inputs()
    pid = tl.program_id(0)
    split = tl.program_id(2)
    if FLAT_N:
        g = tl.program_id(1)
        n_cols = KH * KW * C_in_g
    elif ROW_TAPS:  # the row's first tap; the loop adds kw + 1, kw + 2
        g = tl.program_id(1) // KH
        tap = (tl.program_id(1) % KH) * KW
        n_cols = C_in_g
    else:
        g = tl.program_id(1) // (KH * KW)
        tap = tl.program_id(1) % (KH * KW)
        n_cols = C_in_g
    pid_m, pid_n = grouped_tile(pid, tl.cdiv(C_out_g, BLOCK_M), tl.cdiv(n_cols, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = below(offs_m, C_out_g, DY_ALIGN)
    mask_n = below(offs_n, n_cols, X_ALIGN)
    if FLAT_N:  # column j = (kh, kw, c): per-column taps
        c = offs_n % C_in_g
        kh = (offs_n // C_in_g) // KW
        kw = (offs_n // C_in_g) % KW
    else:  # one tap per program: scalar kh, kw
        c = offs_n
        kh = tap // KW
        kw = tap % KW
    co = g * C_out_g + offs_m
    ci = g * C_in_g + c
    # Hints (kernels/alignment.py): each contiguous run of channels starts at a multiple of
    # the alignment. They go on these adds, not on dy_col / x_col below: those multiply by a
    # stride that is specialised to 1 and folds away, and a hint is lost with its op.
    if DY_ALIGN > 1:
        co = tl.multiple_of(co, DY_ALIGN)
    if X_ALIGN > 1:
        ci = tl.multiple_of(ci, X_ALIGN)
    dy_col = co.to(tl.int64) * sdy_c
    x_col = ci.to(tl.int64) * sx_c

    P = N * HO * WO
    k_lo = split * pix_per_split
    k_hi = tl.minimum(P, k_lo + pix_per_split)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # ROW_TAPS: taps kw + 1, kw + 2
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        p = k0 + tl.arange(0, BLOCK_K)
        mp = p < k_hi
        n_img = p // (HO * WO)
        rem = p % (HO * WO)
        ho = rem // WO
        wo = rem % WO
        n64 = n_img.to(tl.int64)
        # dy^T tile [BLOCK_M (o), BLOCK_K (p)].
        dy_pix = n64 * sdy_n + ho * sdy_h + wo * sdy_w
        if DY_ALIGN > 1:
            dy_pix = tl.multiple_of(dy_pix, DY_ALIGN)
        a = tl.load(
            dy_ptr + dy_col[:, None] + dy_pix[None, :],
            mask=mask_m[:, None] & mp[None, :],
            other=0.0,
        )
        # x tile [BLOCK_K (p), BLOCK_N (column)] at the pixel each column's tap reads.
        if IS_1X1:
            x_row = n64 * sx_n + ho * sx_h + wo * sx_w
            if X_ALIGN > 1:
                x_row = tl.multiple_of(x_row, X_ALIGN)
            b = tl.load(
                x_ptr + x_row[:, None] + x_col[None, :],
                mask=mp[:, None] & mask_n[None, :],
                other=0.0,
            )
        elif FLAT_N:
            hi = ho[:, None] * stride_h - pad_h + kh[None, :] * dil_h
            wi = wo[:, None] * stride_w - pad_w + kw[None, :] * dil_w
            x_off = (n64 * sx_n)[:, None] + hi * sx_h + wi * sx_w + x_col[None, :]
            ok = mp[:, None] & mask_n[None, :] & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
            b = tl.load(x_ptr + x_off, mask=ok, other=0.0)
        else:
            b = _wgrad_x_tap(
                x_ptr, x_col, mask_n, n64, ho, wo, mp, kh, kw, H, W, sx_n, sx_h, sx_w,
                stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, X_ALIGN,
            )  # fmt: skip
        acc = _dot(a, b, acc, DOT_PRECISION, EMULATE_BF16)
        if ROW_TAPS:
            if KW > 1:
                b1 = _wgrad_x_tap(
                    x_ptr, x_col, mask_n, n64, ho, wo, mp, kh, kw + 1, H, W, sx_n, sx_h, sx_w,
                    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, X_ALIGN,
                )  # fmt: skip
                acc1 = _dot(a, b1, acc1, DOT_PRECISION, EMULATE_BF16)
            if KW > 2:
                b2 = _wgrad_x_tap(
                    x_ptr, x_col, mask_n, n64, ho, wo, mp, kh, kw + 2, H, W, sx_n, sx_h, sx_w,
                    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, X_ALIGN,
                )  # fmt: skip
                acc2 = _dot(a, b2, acc2, DOT_PRECISION, EMULATE_BF16)

    dw_rows = dw_ptr + split.to(tl.int64) * sdw_split + co.to(tl.int64)[:, None] * sdw_o
    mask = mask_m[:, None] & mask_n[None, :]
    _store_dw_tile(dw_rows, acc, c, kh, kw, sdw_i, sdw_h, sdw_w, mask, ACCUMULATE)
    if ROW_TAPS:
        if KW > 1:
            _store_dw_tile(dw_rows, acc1, c, kh, kw + 1, sdw_i, sdw_h, sdw_w, mask, ACCUMULATE)
        if KW > 2:
            _store_dw_tile(dw_rows, acc2, c, kh, kw + 2, sdw_i, sdw_h, sdw_w, mask, ACCUMULATE)


@triton.jit
def _wgrad_x_tap(
    x_ptr, x_col, mask_n, n64, ho, wo, mp, kh, kw, H, W, sx_n, sx_h, sx_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, X_ALIGN: tl.constexpr,
):  # fmt: skip
    """The wgrad's x tile [BLOCK_K pixels, BLOCK_N channels] that tap (kh, kw) reads for the
    output pixels (n64, ho, wo) (masked by mp) and the channel columns x_col (mask_n);
    zeros where the tap falls in the padding."""
    hi = ho * stride_h - pad_h + kh * dil_h
    wi = wo * stride_w - pad_w + kw * dil_w
    row_ok = mp & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
    x_row = n64 * sx_n + hi * sx_h + wi * sx_w
    if X_ALIGN > 1:
        x_row = tl.multiple_of(x_row, X_ALIGN)
    return tl.load(
        x_ptr + x_row[:, None] + x_col[None, :],
        mask=row_ok[:, None] & mask_n[None, :],
        other=0.0,
    )


@triton.jit
def _store_dw_tile(dw_rows, acc, c, kh, kw, sdw_i, sdw_h, sdw_w, mask, ACCUMULATE: tl.constexpr):
    """Write (or with ACCUMULATE add) one wgrad accumulator at tap (kh, kw): dw_rows points at
    each tile row's output channel, c holds the columns' input channels (or per-column taps)."""
    dw_ptrs = dw_rows + (c * sdw_i + kh * sdw_h + kw * sdw_w)[None, :]
    if ACCUMULATE:
        acc += tl.load(dw_ptrs, mask=mask, other=0.0)
    tl.store(dw_ptrs, acc, mask=mask)


@triton.jit
def bias_grad_kernel(
    dy_ptr, out_ptr,
    N, HO, WO, C,
    sdy_n, sdy_h, sdy_w, sdy_c,
    s_out, s_split, pix_per_split,
    ACCUMULATE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """db[c] = sum over pixels (n, ho, wo) of dy[n, c, ho, wo], in fp32: one program sums the
    pixels [split*pix_per_split, ...) of BLOCK_C channels.

    Grid: (channel blocks, splits). Each program writes (or with ACCUMULATE adds) its sum at
    out_ptr + split*s_split + c*s_out; several splits write a partial buffer that
    ``splitk_reduce_kernel`` sums in a fixed order (deterministic, no atomics).

    dy_ptr: output gradient, logical N,C,HO,WO, strides sdy_*.
    out_ptr: fp32 destination (C,) per split, element stride s_out.
    pix_per_split: pixels per split, a multiple of BLOCK_P.
    """
    wait_for_inputs()
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(1)
    mask_c = offs_c < C
    P = N * HO * WO
    k_lo = split * pix_per_split
    k_hi = tl.minimum(P, k_lo + pix_per_split)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_P):
        p = k0 + tl.arange(0, BLOCK_P)
        mp = p < k_hi
        n_img = p // (HO * WO)
        rem = p % (HO * WO)
        row = n_img.to(tl.int64) * sdy_n + (rem // WO) * sdy_h + (rem % WO) * sdy_w
        v = tl.load(
            dy_ptr + row[:, None] + offs_c[None, :] * sdy_c,
            mask=mp[:, None] & mask_c[None, :],
            other=0.0,
        )
        acc += v.to(tl.float32)
    total = tl.sum(acc, axis=0)
    ptrs = out_ptr + split.to(tl.int64) * s_split + offs_c * s_out
    if ACCUMULATE:
        total += tl.load(ptrs, mask=mask_c, other=0.0)
    tl.store(ptrs, total, mask=mask_c)


@triton.jit
def splitk_reduce_kernel(
    part_ptr, out_ptr, numel, n_split,
    D1, D2, D3, s0, s1, s2, s3,
    ACCUMULATE: tl.constexpr, BLOCK: tl.constexpr, SPLIT_BLOCK: tl.constexpr,
):  # fmt: skip
    """out[e] (+)= sum over s of part[s, e], summed in a fixed order (deterministic).

    part_ptr: contiguous fp32 (n_split, numel) partial sums; element e decodes as the 4-d index
    (i0, i1, i2, i3) of a row-major D0 x D1 x D2 x D3 array (wgrad: o, kh, kw, c), and out_ptr
    is the fp32 destination addressed by strides s0..s3 of that index order. One program owns
    BLOCK elements and loads SPLIT_BLOCK partial rows per step into a SPLIT_BLOCK x BLOCK
    accumulator, summed over its rows once at the end: a small weight gradient's 64 splits are
    8 dependent loads, not 64 (one per split, each waiting out the L2 latency of the last).
    """
    wait_for_inputs()
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    rows = tl.zeros((SPLIT_BLOCK, BLOCK), dtype=tl.float32)
    for first in range(0, n_split, SPLIT_BLOCK):
        s = first + tl.arange(0, SPLIT_BLOCK)
        ptrs = part_ptr + s.to(tl.int64)[:, None] * numel + offs[None, :]
        rows += tl.load(ptrs, mask=(s < n_split)[:, None] & mask[None, :], other=0.0)
    acc = tl.sum(rows, axis=0)
    i3 = offs % D3
    t = offs // D3
    i2 = t % D2
    t = t // D2
    i1 = t % D1
    i0 = t // D1
    ptrs = out_ptr + i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3
    if ACCUMULATE:
        acc += tl.load(ptrs, mask=mask, other=0.0)
    tl.store(ptrs, acc, mask=mask)


# --- launch helpers --------------------------------------------------------------------------


# ROW_TAPS wgrad programs keep one accumulator per tap of a filter row: up to 3 of them.
ROW_TAPS_MAX_KW = 3


# ... and use the row form when the KW accumulators take at most this many fp32 registers per
# thread. ptxas (benchmarks/ptx_report.py --row-taps) fits every 4-warp tile up to 64 x 128 or
# 128 x 64 of a 3x3 conv (192 accumulator registers, 240-255 in all) without spilling; three
# 128 x 128 accumulators (384) spill 6.7 KB, so that tile keeps one tap per program.
ROW_TAPS_MAX_ACC_REGS = 192


# Whether conv2d_wgrad(row_taps=None) uses the row form where it fits: it reads each dy tile
# once per filter row instead of once per tap. On an H100 (benchmarks/results, 2026-12-05)
# ResNet-18's 64-channel 3x3 wgrad went from 308 to 183 us (cuDNN 100) and its b512 graphed
# step from 10.73 to 10.23 ms; MobileNetV2 (depthwise 3x3 has its own kernel) is unchanged.
WGRAD_ROW_TAPS = True


def use_row_taps(cfg: ConvConfig, kw: int) -> bool:
    """Whether a tap-looping wgrad with this tile computes a filter row per program: when
    WGRAD_ROW_TAPS is on, for kernels 2-3 taps across whose accumulators fit
    ROW_TAPS_MAX_ACC_REGS."""
    regs = cfg.BLOCK_M * cfg.BLOCK_N * kw // (32 * cfg.num_warps)
    return WGRAD_ROW_TAPS and 1 < kw <= ROW_TAPS_MAX_KW and regs <= ROW_TAPS_MAX_ACC_REGS


def _reduce_splits(part: torch.Tensor, out: torch.Tensor, dims, strides, accumulate: bool):
    n_split, numel = part.shape
    split_block = reduce_rows(n_split, numel)
    block = 2048 // split_block
    splitk_reduce_kernel[(triton.cdiv(numel, block),)](
        part, out, numel, n_split, dims[1], dims[2], dims[3], *strides,
        ACCUMULATE=accumulate, BLOCK=block, SPLIT_BLOCK=split_block,
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip


def conv2d_wgrad(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    weight_shape,
    stride: IntPair,
    padding,
    dilation: IntPair,
    groups: int,
    grad_weight: torch.Tensor | None = None,
    config: ConvConfig | int | None = None,
    split_k: int | None = None,
    flat_taps: bool | None = None,
    row_taps: bool | None = None,
) -> torch.Tensor:
    """fp32 gradient of conv2d with respect to its weight (logical O,I/g,KH,KW). Allocated
    channels_last and written when ``grad_weight`` is None, else added into ``grad_weight``.
    ``split_k`` splits the pixel reduction into that many fp32 partial sums that a second
    kernel adds in order (deterministic). With neither ``config`` nor ``split_k`` given the
    autotuner chooses the tile, then the split factor for that tile (timed into a scratch
    gradient: the real one may be accumulated into); otherwise the heuristic fills in.
    ``flat_taps`` forces the GEMM's columns to (tap, channel) flattened (True) or one tap per
    program (False); None: flattened for fewer than FLAT_MAX_CHANNELS input channels.
    ``row_taps`` forces one program per filter row (True, ROW_TAPS) or per tap (False); None:
    ``use_row_taps`` decides for each tile."""
    _check_act(x, "input")
    _check_act(grad_out, "grad_out")
    c_out, c_in_g, kh, kw = (int(s) for s in weight_shape)
    n, c_in, h, w = x.shape
    _, c_out2, ho, wo = grad_out.shape
    if c_out2 != c_out or c_in != c_in_g * groups or grad_out.shape[0] != n:
        raise ValueError(
            f"conv2d_wgrad: input {tuple(x.shape)}, grad_out {tuple(grad_out.shape)}, weight "
            f"{tuple(weight_shape)} and groups={groups} disagree"
        )
    sh, sw = _pair(stride)
    pt, _, pl, _ = _padding4(padding)
    dh, dw = _pair(dilation)
    c_out_g = c_out // groups
    pixels = n * ho * wo
    is_1x1 = kh == kw == 1 and sh == sw == 1 and pt == pl == 0
    flat_n = (not is_1x1) and (c_in_g < FLAT_MAX_CHANNELS if flat_taps is None else flat_taps)
    n_cols = kh * kw * c_in_g if flat_n else c_in_g  # GEMM columns per program group
    tap_loop = not (flat_n or is_1x1)  # a program per tap, or per row with ROW_TAPS
    if row_taps and not (tap_loop and kw <= ROW_TAPS_MAX_KW):
        raise ValueError(
            f"conv2d_wgrad: row_taps=True needs a tap-looping conv with at most "
            f"{ROW_TAPS_MAX_KW} columns of taps (kernel {kh}x{kw}, flat_taps={flat_n}, "
            f"1x1={is_1x1}); pass row_taps=None"
        )

    tma = (
        not flat_n
        and row_taps is not True
        and conv_tma.tma_wgrad_applicable(x, grad_out, (sh, sw), (dh, dw), groups)
        and (grad_weight is None or grad_weight.is_contiguous(memory_format=torch.channels_last))
    )
    halo = (
        not flat_n
        and row_taps is not True
        and conv_halo_wgrad.halo_wgrad_applicable(
            x, grad_out, weight_shape, (sh, sw), _padding4(padding), (dh, dw), groups
        )
        and (grad_weight is None or grad_weight.is_contiguous(memory_format=torch.channels_last))
    )

    def rows_of(cfg) -> bool:
        if isinstance(cfg, conv_halo.HaloConfig):  # three taps a program (a filter column)
            return True
        if isinstance(cfg, conv_tma.TmaConfig):
            return cfg.row_taps
        if row_taps is not None:
            return row_taps
        return tap_loop and use_row_taps(cfg, kw)

    def grid_1(cfg: ConvConfig) -> int:  # (group, tap) or (group, filter row) of each program
        return groups if flat_n else groups * kh * (1 if rows_of(cfg) else kw)

    accumulate = grad_weight is not None
    if grad_weight is None:
        grad_weight = runtime.empty_nhwc(c_out, c_in_g, kh, kw, torch.float32)

    numel = c_out * kh * kw * c_in_g  # outputs: the size of one split's partial sums

    def tiles(cfg: ConvConfig) -> int:
        return triton.cdiv(c_out_g, cfg.BLOCK_M) * triton.cdiv(n_cols, cfg.BLOCK_N)

    def heuristic_split(cfg: ConvConfig) -> int:
        # 4 programs per SM: on an H200 the autotuner's best split for ResNet-18's 3x3 wgrads
        # at batch 512 was 2-4x the 2-per-SM count, 11-16% faster than it
        most = _max_split(pixels, cfg.BLOCK_K, numel)
        return _pick_split(tiles(cfg) * grid_1(cfg), pixels, cfg.BLOCK_K, per_sm=4, most=most)

    def launch(gw: torch.Tensor, cfg: ConvConfig, split: int) -> None:
        per_split = triton.cdiv(triton.cdiv(pixels, split), cfg.BLOCK_K) * cfg.BLOCK_K
        split = triton.cdiv(pixels, per_split)  # no empty splits
        if split == 1:
            dst, dst_strides, split_stride, dst_acc = gw, gw.stride(), 0, accumulate
        else:  # partials laid out (split, o, kh, kw, c) contiguous
            dst = runtime.empty((split, numel), torch.float32)
            dst_strides = (kh * kw * c_in_g, 1, kw * c_in_g, c_in_g)
            split_stride, dst_acc = numel, False
        if isinstance(cfg, conv_halo.HaloConfig):  # (o, kh, kw, c) with c contiguous
            strides = (split_stride, dst_strides[0], dst_strides[3])
            conv_halo_wgrad.launch_halo_wgrad(
                x, grad_out, dst, strides, cfg, split, per_split, dst_acc
            )
        elif isinstance(cfg, conv_tma.TmaConfig):  # (o, kh, kw, c) with c contiguous
            strides = (split_stride, dst_strides[0], dst_strides[3])
            conv_tma.conv2d_wgrad_tma(
                x, grad_out, dst, strides, (pt, pl), (kh, kw), cfg, split, per_split, dst_acc
            )
        else:
            pointer_kernel(dst, dst_strides, split_stride, dst_acc, cfg, split, per_split)
        if split > 1:
            so, si, s_h, s_w = gw.stride()
            _reduce_splits(dst, gw, (c_out, kh, kw, c_in_g), (so, s_h, s_w, si), accumulate)

    def pointer_kernel(dst, dst_strides, split_stride, dst_acc, cfg, split, per_split):
        conv2d_wgrad_kernel[(tiles(cfg), grid_1(cfg), split)](
            x, grad_out, dst,
            n, h, w, c_in_g, ho, wo, c_out_g,
            *runtime.nhwc_strides(x), *runtime.nhwc_strides(grad_out),
            *dst_strides, split_stride,
            sh, sw, pt, pl, dh, dw,
            per_split,
            KH=kh, KW=kw, IS_1X1=is_1x1, FLAT_N=flat_n, ACCUMULATE=dst_acc,
            DOT_PRECISION=runtime.dot_precision(grad_out.dtype),
            EMULATE_BF16=runtime.bf16_dot_emulated(grad_out.dtype),
            BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K, GROUP_M=GROUP_M,
            X_ALIGN=1 if flat_n else vector_align(x, c_in_g),
            DY_ALIGN=vector_align(grad_out, c_out_g), ROW_TAPS=rows_of(cfg),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            launch_pdl=LAUNCH_PDL,
        )  # fmt: skip

    heuristic = pointer_heuristic = pick_config(
        c_out_g, n_cols, pixels, grad_out.dtype, split_k=True, is_1x1=is_1x1
    )
    if tma and "wgrad" in conv.TMA_CONVS:  # (read at the call: benchmarks and tests set it)
        heuristic = conv_tma.pick_tma_wgrad_config(c_in, c_out, kw)
    if halo:
        heuristic = conv_halo_wgrad.pick_halo_wgrad_config(ho, wo)
    if config is not None or split_k is not None or runtime.INTERPRETED:
        cfg = heuristic
        if config is not None:
            cfg = _resolve_config(config, c_out_g, n_cols, pixels, grad_out.dtype, split_k=True)
        _check_tma_config(cfg, tma, "conv2d_wgrad")
        _check_halo_config(cfg, halo, "conv2d_wgrad")
        launch(grad_weight, cfg, split_k if split_k is not None else heuristic_split(cfg))
        return grad_weight

    # Tuned in two steps: the tile (each with its heuristic split), then the split factor.
    problem = dict(
        n=n, c_in=c_in, h=h, w=w, c_out=c_out, ho=ho, wo=wo, k=(kh, kw), stride=(sh, sw),
        pad=(pt, pl), dil=(dh, dw), groups=groups, x=autotune.tensor_flag(x),
        grad_out=autotune.tensor_flag(grad_out), grad_weight=autotune.tensor_flag(grad_weight),
        accumulate=accumulate,
    )  # fmt: skip
    act_bytes = grad_out.element_size()
    scratch = []  # one scratch gradient shared by both tuning steps, allocated on first need

    def scratch_gw() -> torch.Tensor:
        if not scratch:
            scratch.append(runtime.empty_like(grad_weight))
        return scratch[0]

    def tile_runner():
        gw = scratch_gw()
        return autotune.CheckedRunner(lambda c: launch(gw, c, heuristic_split(c)), gw)

    def candidates():
        out = [
            c
            for c in gemm_candidates(c_out_g, n_cols, pixels, act_bytes, act_bytes, is_1x1)
            # a row-tapped tile stages KW x tiles per K step
            if not rows_of(c)
            or c.smem_bytes(act_bytes, kw * act_bytes) <= conv_configs.operand_smem_limit()
        ]
        if tma:  # the TMA kernel's tiles are timed beside the pointer kernel's
            out += conv_tma.tma_wgrad_candidates(
                c_in, c_out, ho, wo, conv_configs.operand_smem_limit(), kw
            )
        if halo:
            out += conv_halo_wgrad.halo_wgrad_candidates(
                c_in, c_out, ho, wo, conv_configs.operand_smem_limit()
            )
        return out

    cfg = _tuned(
        "conv2d_wgrad", problem, candidates, heuristic, tile_runner, reference=pointer_heuristic
    )

    def split_runner():
        gw = scratch_gw()
        return autotune.CheckedRunner(lambda s: launch(gw, cfg, s.split), gw)

    base = heuristic_split(cfg)
    choice = _tuned(
        "conv2d_wgrad_split",
        {**problem, "tile": cfg},
        lambda: split_candidates(base, _max_split(pixels, cfg.BLOCK_K, numel)),
        SplitChoice(base),
        split_runner,
    )
    launch(grad_weight, cfg, choice.split)
    return grad_weight


@dataclass(frozen=True)
class BiasGradChoice:
    """A bias-gradient tile and its number of pixel splits."""

    config: BiasGradConfig
    split: int


def conv2d_bias_grad(
    grad_out: torch.Tensor,
    grad_bias: torch.Tensor | None = None,
    split: int | None = None,
    config: BiasGradConfig | None = None,
) -> torch.Tensor:
    """fp32 per-channel sum of grad_out over N, H, W: written into a new (C,) tensor when
    ``grad_bias`` is None, else added into it. ``split`` sets how many pixel ranges are summed
    separately before an ordered second pass (deterministic). With neither ``split`` nor
    ``config`` given the autotuner chooses both (timed into a scratch gradient)."""
    _check_act(grad_out, "grad_out")
    n, c, ho, wo = grad_out.shape
    pixels = n * ho * wo
    accumulate = grad_bias is not None
    if grad_bias is None:
        grad_bias = runtime.empty((c,), torch.float32)

    def heuristic_split(cfg: BiasGradConfig) -> int:
        c_blocks = triton.cdiv(c, cfg.BLOCK_C)
        return _pick_split(c_blocks, pixels, cfg.BLOCK_P, min_pixels=2048)

    def launch(gb: torch.Tensor, choice: BiasGradChoice) -> None:
        cfg = choice.config
        per_split = triton.cdiv(triton.cdiv(pixels, choice.split), cfg.BLOCK_P) * cfg.BLOCK_P
        n_split = triton.cdiv(pixels, per_split)
        if n_split == 1:
            dst, s_out, s_split, dst_acc = gb, gb.stride(0), 0, accumulate
        else:
            dst, s_out, s_split, dst_acc = runtime.empty((n_split, c), torch.float32), 1, c, False
        bias_grad_kernel[(triton.cdiv(c, cfg.BLOCK_C), n_split)](
            grad_out, dst, n, ho, wo, c, *runtime.nhwc_strides(grad_out),
            s_out, s_split, per_split,
            ACCUMULATE=dst_acc, BLOCK_P=cfg.BLOCK_P, BLOCK_C=cfg.BLOCK_C,
            launch_pdl=LAUNCH_PDL,
        )  # fmt: skip
        if n_split > 1:
            _reduce_splits(dst, gb, (c, 1, 1, 1), (gb.stride(0), 0, 0, 0), accumulate)

    cfg0 = config or BIAS_CONFIGS[0]
    default = BiasGradChoice(cfg0, split if split is not None else heuristic_split(cfg0))
    if config is not None or split is not None or runtime.INTERPRETED:
        launch(grad_bias, default)
        return grad_bias

    def candidates():
        return [
            BiasGradChoice(cfg, s.split)
            for cfg in BIAS_CONFIGS
            for s in split_candidates(heuristic_split(cfg), _max_split(pixels, cfg.BLOCK_P, c))
        ]

    problem = dict(
        n=n, c=c, ho=ho, wo=wo, grad_out=autotune.tensor_flag(grad_out), accumulate=accumulate
    )
    choice = _tuned(
        "conv2d_bias_grad",
        problem,
        candidates,
        default,
        lambda: _scratch_runner(launch, runtime.empty_like(grad_bias)),
    )
    launch(grad_bias, choice)
    return grad_bias
