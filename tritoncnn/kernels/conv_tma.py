"""Convolution forward whose operand tiles are copied by the Tensor Memory Accelerator (TMA,
sm_90+): the implicit GEMM of conv.py without address arithmetic or masks in its main loop.

Layout: x is dense NHWC (channels_last) in fp16 / bf16, the weight is the layer's copy in x's
dtype, dense OHWI (channels_last), seen as a [C_out, KH*KW*C_in] matrix; y is a new dense NHWC
tensor. Only stride-1, undilated, ungrouped convs whose output height and width are powers of
two qualify (``tma_applicable``; everything else takes conv.py's kernel).

Tiles: a program's BLOCK_M output pixels are whole output rows: BIMG images x BH rows x WO
columns (``tile_geometry``), which is a contiguous range of the M = N*HO*WO output rows, so
the batch-norm moments the epilogue stores are the same ``TileMoments`` as conv.py's. For tap
(kh, kw) and channel block c0 the input pixels of that tile are one 4-d box of x,
[n0 : n0+BIMG, h0+kh-pad_h : +BH, kw-pad_w : +WO, c0 : c0+BLOCK_K]: one TMA copy, which fills
the elements outside the tensor (the zero padding, and images past N) with zeros. The weight
tile is the box [o0 : o0+BLOCK_N, tap*C_in + c0 : +BLOCK_K]. The copies land in shared memory
in the swizzled layout the tensor cores read (wgmma), pipelined over num_stages.

Host side: the two TensorDescriptors are built per launch (they hold the tensors' addresses;
a CUDA graph captures them by value with the launch, and its arena keeps the addresses).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from tritoncnn import runtime
from tritoncnn.kernels.elementwise import apply_activation
from tritoncnn.kernels.norm import TileMoments, store_tile_moments, tile_moments
from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs
from tritoncnn.kernels.tile_order import grouped_tile

GROUP_M = 8


@dataclass(frozen=True)
class TmaConfig:
    """A tile of ``conv2d_fwd_tma_kernel``. ``tma`` is always True: it tells this config from
    conv.ConvConfig's of the same numbers in the autotuner's cache, where the forward's
    candidates of both kinds are timed side by side."""

    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    num_warps: int
    num_stages: int
    tma: bool = True

    def smem_bytes(self, elem_bytes: int = 2) -> int:
        """Shared memory of the pipelined A and B tiles, one copy per stage."""
        return self.num_stages * (self.BLOCK_M + self.BLOCK_N) * self.BLOCK_K * elem_bytes


# Every tile the autotuner may time (``tma_candidates`` keeps those that fit the problem).
# 8 warps only for 1x1 convs, as conv.CONFIGS (Triton miscompiled 8-warp tap loops).
TMA_CONFIGS: tuple[TmaConfig, ...] = (
    TmaConfig(128, 64, 64, 4, 4),
    TmaConfig(128, 128, 64, 4, 3),
    TmaConfig(128, 128, 64, 4, 4),
    TmaConfig(64, 128, 64, 4, 4),
    TmaConfig(64, 64, 64, 4, 4),
    TmaConfig(128, 256, 64, 8, 3),
    TmaConfig(128, 128, 64, 8, 4),
)


@triton.jit
def conv2d_fwd_tma_kernel(
    x_desc, w_desc, b_ptr, y_ptr, pmean_ptr, pm2_ptr,
    N, HO, WO, C_in, C_out, pad_h, pad_w, alpha,
    KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    MOMENTS: tl.constexpr,
    BIMG: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """y = act(conv2d(x, w) + b) for one tile of BIMG*BH*BW output pixels x BLOCK_N channels.

    Grid: (row tiles * column tiles,) in grouped order (``grouped_tile``). Row tile pid_m is
    output rows [pid_m*BLOCK_M, +BLOCK_M) of the M = N*HO*WO rows (BW == WO; BH divides HO, or
    BH == HO and the tile spans BIMG images).

    x_desc: TMA descriptor of x [N, H, W, C_in], box [BIMG, BH, BW, BLOCK_K].
    w_desc: TMA descriptor of the weight [C_out, KH*KW*C_in] (OHWI), box [BLOCK_N, BLOCK_K].
    b_ptr: fp32 bias (C_out,), read only when HAS_BIAS.
    y_ptr: dense NHWC output [M, C_out], stored in its own dtype.
    pmean_ptr, pm2_ptr: with MOMENTS, fp32 [cdiv(M, BLOCK_M), C_out] per-tile batch-norm
    moments of y as stored (partial pid_m), as conv2d_fwd_kernel's.
    pad_h, pad_w: top / left padding. C_in: a multiple of BLOCK_K (a K step never straddles
    two taps). alpha, ACT: the fused activation (elementwise.py codes).
    """
    wait_for_inputs()
    BLOCK_M: tl.constexpr = BIMG * BH * BW
    M = N * HO * WO
    pid_m, pid_n = grouped_tile(
        tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(C_out, BLOCK_N), GROUP_M
    )
    row0 = pid_m * BLOCK_M
    n0 = row0 // (HO * WO)
    h0 = (row0 // WO) % HO
    o0 = pid_n * BLOCK_N
    c_steps = C_in // BLOCK_K

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # one flat loop over (tap, channel block): a single loop for the pipeliner
    for it in range(0, KH * KW * c_steps):
        tap = it // c_steps
        c0 = (it - tap * c_steps) * BLOCK_K
        kh = tap // KW
        kw = tap - kh * KW
        a = x_desc.load([n0, h0 + kh - pad_h, kw - pad_w, c0])  # [BIMG, BH, BW, BLOCK_K]
        b = w_desc.load([o0, tap * C_in + c0])  # [BLOCK_N, BLOCK_K]
        acc = tl.dot(tl.reshape(a, (BLOCK_M, BLOCK_K)), tl.trans(b), acc)

    # Epilogue on the fp32 accumulator, as conv2d_fwd_kernel's: bias, activation, one rounding.
    rows = row0 + tl.arange(0, BLOCK_M)
    cols = o0 + tl.arange(0, BLOCK_N)
    mask_m = rows < M
    mask_n = cols < C_out
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    acc = apply_activation(acc, ACT, alpha)
    y = acc.to(y_ptr.dtype.element_ty)
    y_offs = rows.to(tl.int64)[:, None] * C_out + cols[None, :]
    tl.store(y_ptr + y_offs, y, mask=mask_m[:, None] & mask_n[None, :])
    if MOMENTS:
        store_tile_moments(pmean_ptr, pm2_ptr, y.to(tl.float32), mask_m, pid_m, cols, mask_n, C_out)


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


def tma_applicable(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    ho: int,
    wo: int,
) -> bool:
    """Whether ``conv2d_fwd_tma_kernel`` can run this forward: the GPU (sm_90+; Triton's
    interpreter emulates the copies too, for fp16), fp16/bf16 x with a weight of its dtype,
    both dense channels_last and 16-byte aligned, stride 1, no dilation, one group, C_in a
    multiple of 16, output height and width powers of two."""
    if runtime.INTERPRETED and x.dtype != torch.float16:
        return False  # the interpreter multiplies bf16 as raw bits
    cl = torch.channels_last
    return (
        _has_tma()
        and x.dtype in (torch.float16, torch.bfloat16)
        and weight.dtype == x.dtype
        and groups == 1
        and tuple(stride) == (1, 1)
        and tuple(dilation) == (1, 1)
        and x.is_contiguous(memory_format=cl)
        and weight.is_contiguous(memory_format=cl)
        and x.data_ptr() % 16 == 0
        and weight.data_ptr() % 16 == 0
        and block_k_for(x.shape[1]) is not None
        and tile_geometry(ho, wo, 64) is not None
    )


def tma_candidates(c_in: int, c_out: int, ho: int, wo: int, is_1x1: bool, smem_limit: int):
    """The TMA_CONFIGS that fit this conv: a K step dividing C_in, tiles of whole output rows,
    column tiles not far wider than C_out, within shared memory."""
    bk = block_k_for(c_in)
    out = []
    for cfg in TMA_CONFIGS:
        cfg = TmaConfig(cfg.BLOCK_M, cfg.BLOCK_N, min(cfg.BLOCK_K, bk), cfg.num_warps,
                        cfg.num_stages)  # fmt: skip
        if cfg.num_warps == 8 and not is_1x1:
            continue
        if tile_geometry(ho, wo, cfg.BLOCK_M) is None or cfg.BLOCK_N > max(64, 2 * c_out):
            continue
        if cfg.smem_bytes() <= smem_limit and cfg not in out:
            out.append(cfg)
    return out


def pick_tma_config(c_in: int, c_out: int) -> TmaConfig:
    """The heuristic tile: 128 output pixels x 64 or 128 channels, the widest K step."""
    bk = block_k_for(c_in) or 16
    if runtime.INTERPRETED:
        return TmaConfig(64, 32 if c_out <= 32 else 64, bk, 4, 1)
    return TmaConfig(128, 64 if c_out <= 64 else 128, bk, 4, 4 if c_out <= 64 else 3)


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
    """Launch ``conv2d_fwd_tma_kernel`` into ``y`` (dense NHWC, N x C_out x HO x WO); the
    caller checked ``tma_applicable``. Returns the output's per-tile moments with ``moments``."""
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    _, _, ho, wo = y.shape
    geometry = tile_geometry(ho, wo, cfg.BLOCK_M)
    if geometry is None or c_in % cfg.BLOCK_K:
        raise ValueError(f"conv2d TMA tile {cfg} doesn't fit a {ho}x{wo}, {c_in}-channel conv")
    bimg, bh, bw = geometry
    m = n * ho * wo
    x_desc = TensorDescriptor(
        x, [n, h, w, c_in], [h * w * c_in, w * c_in, c_in, 1], [bimg, bh, bw, cfg.BLOCK_K]
    )
    k = kh * kw * c_in
    w_desc = TensorDescriptor(weight, [c_out, k], [k, 1], [cfg.BLOCK_N, cfg.BLOCK_K])
    tiles = tile_moments(m, c_out, cfg.BLOCK_M) if moments else None
    parts = tiles.partials if tiles is not None else (y, y)
    grid = (triton.cdiv(m, cfg.BLOCK_M) * triton.cdiv(c_out, cfg.BLOCK_N),)
    conv2d_fwd_tma_kernel[grid](
        x_desc, w_desc, y if bias is None else bias, y, parts[0], parts[1],
        n, ho, wo, c_in, c_out, padding[0], padding[1], float(alpha),
        KH=kh, KW=kw, HAS_BIAS=bias is not None, ACT=act, MOMENTS=moments,
        BIMG=bimg, BH=bh, BW=bw, BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K, GROUP_M=GROUP_M,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return tiles
