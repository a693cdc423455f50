"""Convolution forward, input gradient and weight gradient whose operand tiles are copied by
the Tensor Memory Accelerator (TMA, sm_90+): conv.py's implicit GEMMs without address
arithmetic or masks in their main loops. Off unless TRITONCNN_TMA=1 (``ENABLED``).

Layout: activations are dense NHWC (channels_last) in fp16 / bf16; the weight is the layer's
copy in their dtype, dense OHWI (channels_last), seen as a [C_out, KH*KW*C_in] matrix; outputs
are new dense NHWC tensors. Only stride-1, undilated, ungrouped convs whose output height and
width are powers of two qualify (``tma_applicable``, ``tma_dgrad_applicable``,
``tma_wgrad_applicable``; everything else takes conv.py's kernels, as does a dgrad whose
epilogue stores batch-norm sums).

Tiles: a program's BLOCK_M output pixels are whole output rows: BIMG images x BH rows x W
columns (``tile_geometry``), a contiguous range of the M = N*H*W output rows, so the batch-norm
moments the forward's epilogue stores are the same ``TileMoments`` as conv.py's. For tap
(kh, kw) and channel block k0 the A operand of that tile is one 4-d box: forward,
x[n0 : n0+BIMG, h0+kh-pad_h : +BH, kw-pad_w : +W, k0 : k0+BLOCK_K]; dgrad, the same box of dy
at h0+pad_h-kh, pad_w-kw. The TMA copy fills elements outside the tensor (the zero padding,
images past N, channels past C) with zeros. The weight tile is the box
[o0 : +BLOCK_N, tap*C_in + k0 : +BLOCK_K] (forward, used transposed) or
[k0 : +BLOCK_K, tap*C_in + c0 : +BLOCK_N] (dgrad). The weight gradient reduces over pixels
instead: per K step of whole output rows, the dy box [.., o0 : +BLOCK_M] (transposed) times
the x box at the tap's offset [.., c0 : +BLOCK_N] (``conv2d_wgrad_tma_kernel``). The copies
land in shared memory in the swizzled layout the tensor cores read (wgmma), pipelined over
num_stages.

Host side: the two TensorDescriptors are built per launch (they hold the tensors' addresses;
a CUDA graph captures them by value with the launch, and its arena keeps the addresses).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from tritoncnn import runtime
from tritoncnn.kernels.elementwise import apply_activation
from tritoncnn.kernels.norm_fusion import TileMoments, store_tile_moments, tile_moments
from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs
from tritoncnn.kernels.tile_order import grouped_tile

GROUP_M = 8


def env_enabled() -> bool:
    """TRITONCNN_TMA=1: offer these kernels (see ENABLED)."""
    return os.environ.get("TRITONCNN_TMA", "0") == "1"


# Whether conv.py may use these kernels at all (the autotuner's candidates, and the heuristic
# with conv.TMA_CONVS). Off unless TRITONCNN_TMA=1 until they have run on a GPU: the autotuner
# rejects a candidate whose result differs from the pointer kernel's heuristic tile's
# (kernels/autotune.py), but a kernel that faults or hangs would take the training process
# with it. Read at every launch (benchmarks and tests set it).
ENABLED: bool = env_enabled()


@dataclass(frozen=True)
class TmaConfig:
    """A tile of ``conv2d_tma_kernel`` or ``conv2d_wgrad_tma_kernel``. ``tma`` is always True:
    it tells this config from conv.ConvConfig's of the same numbers in the autotuner's cache,
    where candidates of both kinds are timed side by side. ``row_taps`` (wgrad of 3-wide
    kernels): a program computes a filter row's three taps from one dy tile per K step."""

    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    num_warps: int
    num_stages: int
    tma: bool = True
    row_taps: bool = False

    def smem_bytes(self, elem_bytes: int = 2) -> int:
        """Shared memory of the pipelined A and B tiles (three B tiles with row_taps), one copy
        per stage."""
        b_tiles = 3 if self.row_taps else 1
        return self.num_stages * (self.BLOCK_M + b_tiles * self.BLOCK_N) * self.BLOCK_K * elem_bytes


# Every tile the autotuner may time (``tma_candidates`` keeps those that fit the problem).
# conv.CONFIGS keeps 8 warps to 1x1 GEMMs (8-warp tap loops were miscompiled elsewhere,
# pytorch #173068); here they are offered to tap loops too, because the tuner rejects a tile
# whose result differs from the pointer kernel's heuristic tile's and the gpu tests run every
# tile. 256 output
# pixels per program: for 64 output channels (N fixed) the taller tile reads 19 B per kFLOP
# from L2 instead of 23 (benchmarks/README.md, the L2 estimate). ptxas sm_90, 3x3 64 -> 64:
# 122 registers at 256 x 64, 186-211 at 256 x 128, no spills.
TMA_CONFIGS: tuple[TmaConfig, ...] = (
    TmaConfig(128, 64, 64, 4, 4),
    TmaConfig(128, 128, 64, 4, 3),
    TmaConfig(128, 128, 64, 4, 4),
    TmaConfig(64, 128, 64, 4, 4),
    TmaConfig(64, 64, 64, 4, 4),
    TmaConfig(128, 256, 64, 8, 3),
    TmaConfig(128, 128, 64, 8, 4),
    TmaConfig(256, 64, 64, 8, 3),
    TmaConfig(256, 64, 64, 8, 4),
    TmaConfig(256, 128, 64, 8, 3),
)


@triton.jit
def conv2d_tma_kernel(
    a_desc, w_desc, out_desc, add_desc, relu_desc, b_ptr, pmean_ptr, pm2_ptr,
    N, H, W, C_red, C_cols, C_in_w, pad_h, pad_w, alpha,
    KH: tl.constexpr, KW: tl.constexpr, DGRAD: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, MOMENTS: tl.constexpr,
    ADD_GRAD: tl.constexpr, RELU_INPUT: tl.constexpr,
    BIMG: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """One tile of BIMG*BH*BW output pixels x BLOCK_N channels of a stride-1 conv's forward
    or input gradient (DGRAD), both an implicit GEMM over (tap, reduced channel):

    - forward: y[p, o]  = act(sum_{tap, c} x[p + tap - pad, c] * w[o, tap, c] + b[o])
    - DGRAD:   dx[p, c] = sum_{tap, o} dy[p - tap + pad, o] * w[o, tap, c] (+ add, ReLU mask)

    Grid: (row tiles * column tiles,) in grouped order (``grouped_tile``). Row tile pid_m is
    rows [pid_m*BLOCK_M, +BLOCK_M) of the out tensor's M = N*H*W rows (BW == W; BH divides
    H, or BH == H and the tile spans BIMG images).

    a_desc: TMA descriptor of the A operand (x, or dy for DGRAD), [N, H_a, W_a, C_red], box
    [BIMG, BH, BW, BLOCK_K]; boxes past its edges read zeros (the padding).
    w_desc: TMA descriptor of the weight as [C_out, KH*KW*C_in_w] (OHWI); box
    [BLOCK_N, BLOCK_K] (rows o, forward) or [BLOCK_K, BLOCK_N] (rows o, DGRAD).
    out_desc: TMA descriptor of the dense NHWC output (y, or dx) as an [M, C_cols] matrix,
    box [BLOCK_M, BLOCK_N]: the tile is stored by one copy (rows and columns past the matrix are
    dropped), in the descriptor's dtype.
    C_red: channels reduced (C_in forward, a multiple of BLOCK_K, so a K step never straddles
    two taps; C_out for DGRAD, where the boxes' zero fill past C_out ends the last step).
    C_cols: the output's channels. H, W: the output's spatial size. pad_h, pad_w: top / left
    padding of the forward conv. alpha, ACT: the forward's fused activation.
    b_ptr: fp32 bias, read only with HAS_BIAS. pmean_ptr, pm2_ptr: with MOMENTS, fp32
    [cdiv(M, BLOCK_M), C_cols] per-tile batch-norm moments of y as stored (as
    conv2d_fwd_kernel's). add_desc (ADD_GRAD): a dense NHWC gradient added before rounding.
    relu_desc (RELU_INPUT): dense NHWC output of a ReLU: dx is zeroed where it is not > 0. Both
    are [M, C_cols] descriptors like out_desc, their tiles read by one copy each.
    """
    wait_for_inputs()
    BLOCK_M: tl.constexpr = BIMG * BH * BW
    M = N * H * W
    pid_m, pid_n = grouped_tile(
        tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(C_cols, BLOCK_N), GROUP_M
    )
    row0 = pid_m * BLOCK_M
    n0 = row0 // (H * W)
    h0 = (row0 // W) % H
    col0 = pid_n * BLOCK_N
    k_steps = tl.cdiv(C_red, BLOCK_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # one flat loop over (tap, channel block): a single loop for the pipeliner
    for it in range(0, KH * KW * k_steps):
        tap = it // k_steps
        k0 = (it - tap * k_steps) * BLOCK_K
        kh = tap // KW
        kw = tap - kh * KW
        if DGRAD:
            a = a_desc.load([n0, h0 + pad_h - kh, pad_w - kw, k0])  # [BIMG, BH, BW, BLOCK_K]
            # columns past this tap's C_in_w read the next tap: they land in masked columns
            b = w_desc.load([k0, tap * C_in_w + col0])  # [BLOCK_K, BLOCK_N]
            acc = tl.dot(tl.reshape(a, (BLOCK_M, BLOCK_K)), b, acc)
        else:
            a = a_desc.load([n0, h0 + kh - pad_h, kw - pad_w, k0])
            b = w_desc.load([col0, tap * C_in_w + k0])  # [BLOCK_N, BLOCK_K]
            acc = tl.dot(tl.reshape(a, (BLOCK_M, BLOCK_K)), tl.trans(b), acc)

    # Epilogue on the fp32 accumulator, as conv.py's kernels': one rounding at the end. The
    # tiles in and out are TMA copies too: no [BLOCK_M, BLOCK_N] pointer tensor, which took
    # the dgrad's add epilogue to 237 registers (ptxas sm_90, 128 x 64).
    cols = col0 + tl.arange(0, BLOCK_N)
    mask_n = cols < C_cols
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    acc = apply_activation(acc, ACT, alpha)
    if ADD_GRAD:  # rows / columns past the matrix read as zeros
        acc += add_desc.load([row0, col0]).to(tl.float32)
    if RELU_INPUT:
        acc = tl.where(relu_desc.load([row0, col0]) > 0, acc, 0.0)
    out = acc.to(out_desc.dtype)
    out_desc.store([row0, col0], out)
    if MOMENTS:
        mask_m = row0 + tl.arange(0, BLOCK_M) < M
        count = tl.sum(mask_m.to(tl.float32), axis=0)
        store_tile_moments(pmean_ptr, pm2_ptr, out.to(tl.float32), mask_m, count, pid_m, cols,
                           mask_n, C_cols)  # fmt: skip


@triton.jit
def conv2d_wgrad_tma_kernel(
    x_desc, dy_desc, dw_ptr,
    N, HO, WO, C_in, C_out, pad_h, pad_w, per_split,
    s_split, s_o, s_tap,
    KW: tl.constexpr, ACCUMULATE: tl.constexpr, ROW_TAPS: tl.constexpr,
    BIMG: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """Weight gradient of a stride-1 conv for one tap: dw[o, tap, c] = sum_p dy[p, o] *
    x[p + tap - pad, c] over one split of the output pixels, a BLOCK_M x BLOCK_N tile of
    (o, c), the pixels in K steps of BIMG*BH*BW (whole output rows, ``tile_geometry``).
    ROW_TAPS (KW == 3): the program computes the three taps of filter row kh, with three
    accumulators and the dy tile of each K step loaded once, not three times.

    Grid: (o tiles * c tiles in grouped order, KH*KW taps or KH rows, splits). Split s
    reduces pixels [s*per_split, +per_split) (per_split a multiple of the K step; pixels past
    N*HO*WO are images past N, which the boxes read as zeros).
    dy_desc: [N, HO, WO, C_out], box [BIMG, BH, BW, BLOCK_M]. x_desc: [N, H, W, C_in], box
    [BIMG, BH, BW, BLOCK_N], taken at the tap's offset (zeros outside x: the padding).
    dw_ptr: fp32 output element (split, o, tap, c) at split*s_split + o*s_o + tap*s_tap + c,
    added into when ACCUMULATE.
    """
    wait_for_inputs()
    BLOCK_K: tl.constexpr = BIMG * BH * BW
    pid_m, pid_n = grouped_tile(
        tl.program_id(0), tl.cdiv(C_out, BLOCK_M), tl.cdiv(C_in, BLOCK_N), GROUP_M
    )
    split = tl.program_id(2)
    if ROW_TAPS:
        kh = tl.program_id(1)
        kw = 0
    else:
        kh = tl.program_id(1) // KW
        kw = tl.program_id(1) - kh * KW
    o0 = pid_m * BLOCK_M
    c0 = pid_n * BLOCK_N
    p_lo = split * per_split
    p_hi = tl.minimum(p_lo + per_split, N * HO * WO)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if ROW_TAPS:
        acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for p0 in range(p_lo, p_hi, BLOCK_K):
        n0 = p0 // (HO * WO)
        h0 = (p0 // WO) % HO
        a = dy_desc.load([n0, h0, 0, o0])  # [BIMG, BH, BW, BLOCK_M]
        a = tl.trans(tl.reshape(a, (BLOCK_K, BLOCK_M)))
        b = x_desc.load([n0, h0 + kh - pad_h, kw - pad_w, c0])  # [BIMG, BH, BW, BLOCK_N]
        acc = tl.dot(a, tl.reshape(b, (BLOCK_K, BLOCK_N)), acc)
        if ROW_TAPS:  # the row's other two taps, one column to the right each
            b = x_desc.load([n0, h0 + kh - pad_h, 1 - pad_w, c0])
            acc1 = tl.dot(a, tl.reshape(b, (BLOCK_K, BLOCK_N)), acc1)
            b = x_desc.load([n0, h0 + kh - pad_h, 2 - pad_w, c0])
            acc2 = tl.dot(a, tl.reshape(b, (BLOCK_K, BLOCK_N)), acc2)
    o = o0 + tl.arange(0, BLOCK_M)
    c = c0 + tl.arange(0, BLOCK_N)
    mask = (o < C_out)[:, None] & (c < C_in)[None, :]
    offs = split.to(tl.int64) * s_split + (kh * KW + kw) * s_tap + o[:, None] * s_o + c[None, :]
    _store_wgrad(dw_ptr + offs, acc, mask, ACCUMULATE)
    if ROW_TAPS:
        _store_wgrad(dw_ptr + offs + s_tap, acc1, mask, ACCUMULATE)
        _store_wgrad(dw_ptr + offs + 2 * s_tap, acc2, mask, ACCUMULATE)


@triton.jit
def _store_wgrad(ptrs, acc, mask, ACCUMULATE: tl.constexpr):
    """Store one tap's fp32 tile, added to what is there when ACCUMULATE."""
    if ACCUMULATE:
        acc += tl.load(ptrs, mask=mask, other=0.0)
    tl.store(ptrs, acc, mask=mask)


def _pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def tile_geometry(ho: int, wo: int, block_m: int) -> tuple[int, int, int] | None:
    """(BIMG, BH, BW) of a BLOCK_M tile of whole output rows, or None if ``block_m`` can't be
    cut that way: BW = WO; BH rows of one image when BLOCK_M / WO divides HO, else BIMG whole
    images of HO rows."""
    if not (_pow2(ho) and _pow2(wo)) or wo > block_m:
        return None
    rows = block_m // wo
    if rows <= ho:
        return 1, rows, wo
    return rows // ho, ho, wo


def block_k_for(c_in: int) -> int | None:
    """The widest K step (64, 32 or 16 channels: at most one 128-byte swizzle row, at least one
    fp16 wgmma K) that divides C_in; None if none does."""
    return next((bk for bk in (64, 32, 16) if c_in % bk == 0), None)


@functools.cache
def _has_tma() -> bool:
    """sm_90 or later; True where no GPU is present (Triton's interpreter emulates the copies)."""
    if not torch.cuda.is_available():
        return True
    return torch.cuda.get_device_capability(runtime.DEVICE)[0] >= 9


def _tma_ready(t: torch.Tensor) -> bool:
    """A TMA copy can read or write ``t``: dense channels_last, 16-byte aligned."""
    return t.is_contiguous(memory_format=torch.channels_last) and t.data_ptr() % 16 == 0


def _operands_ok(a: torch.Tensor, b: torch.Tensor, stride, dilation, groups: int) -> bool:
    """Two GEMM operands (x or dy, and the weight or the other activation) can be TMA boxes
    of a stride-1 conv: sm_90+ (or the interpreter, fp16 only: it multiplies bf16 as raw
    bits), fp16/bf16 in one dtype, both dense channels_last and 16-byte aligned, one group."""
    if runtime.INTERPRETED and a.dtype != torch.float16:
        return False
    return (
        ENABLED
        and _has_tma()
        and a.dtype in (torch.float16, torch.bfloat16)
        and b.dtype == a.dtype
        and groups == 1
        and tuple(stride) == (1, 1)
        and tuple(dilation) == (1, 1)
        and _tma_ready(a)
        and _tma_ready(b)
    )


def tma_applicable(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    ho: int,
    wo: int,
) -> bool:
    """Whether ``conv2d_forward_tma`` can run this forward (``_operands_ok``, C_in a multiple
    of 16, C_out of whole 16-byte vectors (the output's TMA rows), output height and width
    powers of two)."""
    return (
        _operands_ok(x, weight, stride, dilation, groups)
        and block_k_for(x.shape[1]) is not None
        and weight.shape[0] % 8 == 0
        and tile_geometry(ho, wo, 64) is not None
    )


def tma_dgrad_applicable(
    grad_out: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    h: int,
    w: int,
    *epilogue: torch.Tensor | None,
) -> bool:
    """Whether ``conv2d_dgrad_tma`` can run this input gradient (``_operands_ok`` for dy,
    rows of whole 16-byte vectors, input height and width powers of two, the epilogue's
    tensors (dx, add, relu_out: TMA copies too) dense NHWC and 16-byte aligned)."""
    c_out, c_in, _, _ = weight.shape
    return (
        _operands_ok(grad_out, weight, stride, dilation, groups)
        and c_out % 8 == 0
        and c_in % 8 == 0  # weight boxes start at tap * C_in: 16-byte aligned columns
        and tile_geometry(h, w, 64) is not None
        and all(t is None or _tma_ready(t) for t in epilogue)
    )


def tma_candidates(
    c_red: int, c_cols: int, h: int, w: int, smem_limit: int, dgrad: bool = False
) -> list[TmaConfig]:
    """The TMA_CONFIGS that fit this conv (``c_red`` channels reduced, ``c_cols`` computed, an
    h x w output): a K step dividing the forward's C_in, tiles of whole output rows, column
    tiles not far wider than c_cols, within shared memory."""
    bk = _dgrad_block_k(c_red) if dgrad else block_k_for(c_red)
    out = []
    for cfg in TMA_CONFIGS:
        cfg = TmaConfig(cfg.BLOCK_M, cfg.BLOCK_N, min(cfg.BLOCK_K, bk), cfg.num_warps,
                        cfg.num_stages)  # fmt: skip
        if tile_geometry(h, w, cfg.BLOCK_M) is None or cfg.BLOCK_N > max(64, 2 * c_cols):
            continue
        if cfg.smem_bytes() <= smem_limit and cfg not in out:
            out.append(cfg)
    return out


def _dgrad_block_k(c_out: int) -> int:
    """The dgrad's K step: 64 output channels, or C_out rounded up to 16 when fewer (the
    boxes read zeros past C_out)."""
    return min(64, max(16, triton.next_power_of_2(c_out)))


def pick_tma_config(c_red: int, c_cols: int, dgrad: bool = False) -> TmaConfig:
    """The heuristic tile: 128 output pixels x 64 or 128 channels, the widest K step."""
    bk = _dgrad_block_k(c_red) if dgrad else block_k_for(c_red) or 16
    if runtime.INTERPRETED:
        return TmaConfig(64, 32 if c_cols <= 32 else 64, bk, 4, 1)
    return TmaConfig(128, 64 if c_cols <= 64 else 128, bk, 4, 4 if c_cols <= 64 else 3)


def _launch(
    a: torch.Tensor,
    weight: torch.Tensor,
    out: torch.Tensor,
    padding: tuple[int, int],
    cfg: TmaConfig,
    dgrad: bool,
    bias: torch.Tensor | None = None,
    act: int = 0,
    alpha: float = 0.0,
    moments: bool = False,
    add: torch.Tensor | None = None,
    relu_out: torch.Tensor | None = None,
) -> TileMoments | None:
    """One ``conv2d_tma_kernel`` launch into dense NHWC ``out`` (see its docstring)."""
    n, c_red, h_a, w_a = a.shape
    c_out, c_in_w, kh, kw = weight.shape
    _, c_cols, h, w = out.shape
    geometry = tile_geometry(h, w, cfg.BLOCK_M)
    if geometry is None or (not dgrad and c_red % cfg.BLOCK_K):
        raise ValueError(f"conv2d TMA tile {cfg} doesn't fit a {h}x{w}, {c_red}-channel conv")
    bimg, bh, bw = geometry
    a_desc = TensorDescriptor(
        a, [n, h_a, w_a, c_red], [h_a * w_a * c_red, w_a * c_red, c_red, 1],
        [bimg, bh, bw, cfg.BLOCK_K],
    )  # fmt: skip
    k = kh * kw * c_in_w
    w_box = [cfg.BLOCK_K, cfg.BLOCK_N] if dgrad else [cfg.BLOCK_N, cfg.BLOCK_K]
    w_desc = TensorDescriptor(weight, [c_out, k], [k, 1], w_box)
    m = n * h * w
    tiles = tile_moments(m, c_cols, cfg.BLOCK_M) if moments else None
    parts = tiles.partials if tiles is not None else (out, out)

    def matrix(t: torch.Tensor) -> TensorDescriptor:  # dense NHWC as [M, C_cols], tile boxes
        return TensorDescriptor(t, [m, c_cols], [c_cols, 1], [cfg.BLOCK_M, cfg.BLOCK_N])

    out_desc = matrix(out)
    grid = (triton.cdiv(m, cfg.BLOCK_M) * triton.cdiv(c_cols, cfg.BLOCK_N),)
    conv2d_tma_kernel[grid](
        a_desc, w_desc, out_desc, out_desc if add is None else matrix(add),
        out_desc if relu_out is None else matrix(relu_out),
        out if bias is None else bias, parts[0], parts[1],
        n, h, w, c_red, c_cols, c_in_w, padding[0], padding[1], float(alpha),
        KH=kh, KW=kw, DGRAD=dgrad, HAS_BIAS=bias is not None, ACT=act, MOMENTS=moments,
        ADD_GRAD=add is not None, RELU_INPUT=relu_out is not None,
        BIMG=bimg, BH=bh, BW=bw, BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K, GROUP_M=GROUP_M,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return tiles


def conv2d_forward_tma(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    padding: tuple[int, int],
    act: int,
    alpha: float,
    moments: bool,
    cfg: TmaConfig,
) -> TileMoments | None:
    """The forward into ``y`` (dense NHWC); the caller checked ``tma_applicable``. Returns the
    output's per-tile moments with ``moments``."""
    return _launch(x, weight, y, padding, cfg, False, bias, act, alpha, moments)


def conv2d_dgrad_tma(
    grad_out: torch.Tensor,
    weight: torch.Tensor,
    dx: torch.Tensor,
    padding: tuple[int, int],
    cfg: TmaConfig,
    add: torch.Tensor | None = None,
    relu_out: torch.Tensor | None = None,
) -> None:
    """The input gradient into ``dx`` (dense NHWC), plus ``add``, zeroed where ``relu_out`` is
    not > 0; the caller checked ``tma_dgrad_applicable``."""
    _launch(grad_out, weight, dx, padding, cfg, True, add=add, relu_out=relu_out)


def tma_wgrad_applicable(
    x: torch.Tensor, grad_out: torch.Tensor, stride, dilation, groups: int
) -> bool:
    """Whether ``conv2d_wgrad_tma`` can run this weight gradient: x and dy both TMA operands
    (``_operands_ok``), channel counts of whole 16-byte vectors, output height and width
    powers of two."""
    _, c_out, ho, wo = grad_out.shape
    return (
        _operands_ok(x, grad_out, stride, dilation, groups)
        and x.shape[1] % 8 == 0
        and c_out % 8 == 0
        and tile_geometry(ho, wo, 64) is not None
    )


# (o, c, pixel) tiles the autotuner may time for the weight gradient (BLOCK_K: pixels). The
# row-taps tiles keep three accumulators: 64 x 64 on 4 warps (ptxas sm_90: 206 registers;
# 64 x 128 and 128 x 64 spill 280 and 1304 bytes there), 128 x 64 and 64 x 128 on 8 warps
# (204 / 206 registers, no spills; 128 x 128 spills 264 bytes even so).
TMA_WGRAD_CONFIGS: tuple[TmaConfig, ...] = (
    TmaConfig(128, 128, 64, 4, 3),
    TmaConfig(128, 64, 64, 4, 4),
    TmaConfig(64, 128, 64, 4, 4),
    TmaConfig(64, 64, 64, 4, 4),
    TmaConfig(64, 64, 128, 4, 3),
    TmaConfig(64, 64, 64, 4, 3, row_taps=True),
    TmaConfig(64, 64, 64, 4, 4, row_taps=True),
    TmaConfig(128, 64, 64, 8, 3, row_taps=True),
    TmaConfig(64, 128, 64, 8, 3, row_taps=True),
)


def tma_wgrad_candidates(
    c_in: int, c_out: int, ho: int, wo: int, smem_limit: int, kw: int = 3
) -> list[TmaConfig]:
    """The TMA_WGRAD_CONFIGS that fit: pixel steps of whole output rows, o / c tiles not far
    wider than C_out / C_in, row taps only for 3-wide kernels, within shared memory."""
    out = []
    for cfg in TMA_WGRAD_CONFIGS:
        if cfg.row_taps and kw != 3:
            continue
        if tile_geometry(ho, wo, cfg.BLOCK_K) is None:
            continue
        if cfg.BLOCK_M > max(64, 2 * c_out) or cfg.BLOCK_N > max(64, 2 * c_in):
            continue
        if cfg.smem_bytes() <= smem_limit:
            out.append(cfg)
    return out


def pick_tma_wgrad_config(c_in: int, c_out: int, kw: int = 1) -> TmaConfig:
    """The heuristic weight-gradient tile: for 3-wide kernels a filter row per program on
    64 x 64 tiles (the pointer kernel's ROW_TAPS default), else 128 x 128 (64-wide for 64
    channels); 64 pixels per K step."""
    if runtime.INTERPRETED:
        return TmaConfig(64 if c_out > 32 else 32, 64 if c_in > 32 else 32, 64, 4, 1)
    if kw == 3:
        return TmaConfig(64, 64, 64, 4, 4, row_taps=True)
    return TmaConfig(64 if c_out <= 64 else 128, 64 if c_in <= 64 else 128, 64, 4, 3)


def conv2d_wgrad_tma(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    dst: torch.Tensor,
    strides: tuple[int, int, int],
    padding: tuple[int, int],
    kernel: tuple[int, int],
    cfg: TmaConfig,
    split: int,
    per_split: int,
    accumulate: bool,
) -> None:
    """Launch ``conv2d_wgrad_tma_kernel`` (``split`` splits of ``per_split`` pixels, a multiple
    of cfg.BLOCK_K) into fp32 ``dst`` with element strides (split, o, tap); c is contiguous.
    The caller checked ``tma_wgrad_applicable`` and adds the splits."""
    n, c_in, h, w = x.shape
    _, c_out, ho, wo = grad_out.shape
    kh, kw = kernel
    geometry = tile_geometry(ho, wo, cfg.BLOCK_K)
    if geometry is None or per_split % cfg.BLOCK_K:
        raise ValueError(f"conv2d wgrad TMA tile {cfg} doesn't fit {ho}x{wo} / {per_split}")
    bimg, bh, bw = geometry
    x_desc = TensorDescriptor(
        x, [n, h, w, c_in], [h * w * c_in, w * c_in, c_in, 1], [bimg, bh, bw, cfg.BLOCK_N]
    )
    dy_desc = TensorDescriptor(
        grad_out, [n, ho, wo, c_out], [ho * wo * c_out, wo * c_out, c_out, 1],
        [bimg, bh, bw, cfg.BLOCK_M],
    )  # fmt: skip
    if cfg.row_taps and kw != 3:
        raise ValueError(f"conv2d wgrad TMA row taps need a 3-wide kernel, got {kh}x{kw}")
    tiles = triton.cdiv(c_out, cfg.BLOCK_M) * triton.cdiv(c_in, cfg.BLOCK_N)
    conv2d_wgrad_tma_kernel[(tiles, kh if cfg.row_taps else kh * kw, split)](
        x_desc, dy_desc, dst, n, ho, wo, c_in, c_out, padding[0], padding[1], per_split,
        *strides,
        KW=kw, ACCUMULATE=accumulate, ROW_TAPS=cfg.row_taps, BIMG=bimg, BH=bh, BW=bw,
        BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, GROUP_M=GROUP_M,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
