"""3x3 stride-1 convolution weight gradient that loads each input row once per K step for all
three kernel rows of a kernel column: the halo weight gradient (Gluon, sm_90), conv_halo.py's
forward trick on the weight gradient's reduction over output pixels.

Layout: x and dy dense NHWC (channels_last) fp16 / bf16; dw fp32 (split, o, kh, kw, c), c
contiguous. A program computes, for one kernel column kw, a BLOCK_M (o) x BLOCK_N (c) tile of
the three kernel rows' gradients (three fp32 accumulators) over one split of the output
pixels. Per K step of BLOCK_K = BH*W output pixels (BH whole rows of one image) it copies dy's
box [1, BH, W, BLOCK_M] once (used transposed: A = dy^T) and x's halo, BH+2 rows from h0-1 at
column kw-1, as a body and an edge box into one buffer (conv_halo.py's halo buffer); kernel
row kh's B operand is its sub-view from row kh*W. Three loads of x per step become one halo
of (BH+2)/BH. Boxes reaching past the tensor read zeros (the padding).

Pipeline: STAGES buffers of (dy box, halo), one mbarrier each; a stage is refilled once the
wgmmas that read it (the previous step's) have retired, by the warpgroup itself or, with a
loader warp (HaloConfig.loader_warp), by a warp of its own (``_wgrad_loader``). Epilogue: the
three tiles stored (or added) through pointers; split partials are added by conv.py.

No interpreter runs Gluon: tests/test_conv_halo.py checks it against torch on an sm_90 GPU,
and benchmarks/ptx_report.py --op wgrad_halo compiles it for sm_90 on the CPU
(tests/test_ptx.py).
"""

from __future__ import annotations

import os

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from tritoncnn.kernels import conv_halo
from tritoncnn.kernels.conv_halo import (
    LOADER_REGS,
    HaloConfig,
    conv_ok,
    gl_dtype,
    halo_rows,
    launch_options,
    mma_n,
    mma_warps,
    rows_per_tile,
    rows_view,
    sm_shared_bytes,
    with_loader_warp,
)
from tritoncnn.kernels.pdl import LAUNCH_PDL
from tritoncnn.kernels.pdl import wait_for_inputs_gluon as wait_for_inputs


@gluon.jit
def conv3x3_halo_wgrad_kernel(
    dy_desc, body_desc, edge_desc, dw_ptr,
    H, C_in, per_split, P_total, s_split, s_o, s_tap,
    ACCUMULATE: gl.constexpr, BH: gl.constexpr, W: gl.constexpr, STAGES: gl.constexpr,
    LOADER_WARP: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    """Weight gradient of a 3x3, stride-1, pad-1 conv for one kernel column kw and its three
    kernel rows: dw[o, kh, kw, c] = sum_p dy[p, o] * x[h+kh-1, w+kw-1, c] over one split of
    the output pixels, a BLOCK_M (o) x BLOCK_N (c) tile, three accumulators.

    Per K step of BLOCK_K = BH*W output pixels (BH whole rows of one image) the dy box
    [1, BH, W, BLOCK_M] is copied once (used transposed: A = dy^T) and the x halo, BH+2 rows
    from h0-1 at column kw-1, as a body box [1, BH, W, BLOCK_N] and an edge box [1, 2, W,
    BLOCK_N] into one buffer; kernel row kh's B operand is its sub-view from row kh*W (the
    forward's trick, on the weight gradient's K = pixel axis). Three loads of x per step
    become one halo of (BH+2)/BH. LOADER_WARP: one more warp issues the copies
    (``_wgrad_loader``), as the forward's.

    Grid: (C_out/BLOCK_M * C_in/BLOCK_N tiles, 3 kernel columns, splits); no tile is
    partial (the caller checks). Split s reduces
    pixels [s*per_split, min(+per_split, P_total)) (per_split a multiple of BLOCK_K).
    dw_ptr: fp32 element (split, o, tap, c) at split*s_split + o*s_o + tap*s_tap + c, added
    into when ACCUMULATE.
    """
    wait_for_inputs()
    BLOCK_M: gl.constexpr = dy_desc.block_type.shape[3]
    BLOCK_N: gl.constexpr = body_desc.block_type.shape[3]
    BLOCK_K: gl.constexpr = BH * W
    dtype: gl.constexpr = dy_desc.dtype
    n_c = C_in // BLOCK_N
    pid_o = gl.program_id(0) // n_c
    pid_c = gl.program_id(0) - pid_o * n_c
    kw = gl.program_id(1)
    split = gl.program_id(2)
    o0 = pid_o * BLOCK_M
    c0 = pid_c * BLOCK_N
    p_lo = split * per_split
    n_steps = (gl.minimum(p_lo + per_split, P_total) - p_lo) // BLOCK_K

    dy_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_K, BLOCK_M], dtype)
    x_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_K, BLOCK_N], dtype)
    dy_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_K, BLOCK_M], dy_layout)
    x_bufs = gl.allocate_shared_memory(dtype, [STAGES, halo_rows(BH, W), BLOCK_N], x_layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(bars.index(s), count=1)

    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0],
        warps_per_cta=mma_warps(BLOCK_M, num_warps),
        instr_shape=[16, mma_n(BLOCK_N, num_warps, BLOCK_M), 16],
    )
    if LOADER_WARP:
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for s in gl.static_range(STAGES):
            mbarrier.init(empty.index(s), count=1)
        acc0, acc1, acc2 = gl.warp_specialize(
            [
                (_wgrad_mma, (
                    dy_desc, body_desc, edge_desc, dy_bufs, x_bufs, bars, empty, p_lo, n_steps,
                    H, kw, o0, c0, BH, W, STAGES, True, num_warps,
                )),
                (_wgrad_loader, (
                    dy_desc, body_desc, edge_desc, dy_bufs, x_bufs, bars, empty, p_lo, n_steps,
                    H, kw, o0, c0, BH, W, STAGES,
                )),
            ],
            [1],
            [LOADER_REGS],
        )  # fmt: skip
        for s in gl.static_range(STAGES):
            mbarrier.invalidate(empty.index(s))
    else:
        for s in gl.static_range(STAGES - 1):
            if s < n_steps:
                _issue_wgrad_loads(dy_desc, body_desc, edge_desc, dy_bufs.index(s),
                                   x_bufs.index(s), bars.index(s), p_lo + s * BLOCK_K, H, kw,
                                   o0, c0, BH, W)  # fmt: skip
        acc0, acc1, acc2 = _wgrad_mma(dy_desc, body_desc, edge_desc, dy_bufs, x_bufs, bars, bars,
                                      p_lo, n_steps, H, kw, o0, c0, BH, W, STAGES, False,
                                      num_warps)  # fmt: skip
    for s in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(s))

    o = o0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, mma_layout))
    c = c0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma_layout))
    offs = gl.expand_dims(o, 1) * s_o + gl.expand_dims(c, 0)
    ptrs = dw_ptr + split.to(gl.int64) * s_split + kw * s_tap + offs
    _store_dw(ptrs, acc0, ACCUMULATE)
    _store_dw(ptrs + 3 * s_tap, acc1, ACCUMULATE)
    _store_dw(ptrs + 6 * s_tap, acc2, ACCUMULATE)


@gluon.jit
def _wgrad_mma(
    dy_desc, body_desc, edge_desc, dy_bufs, x_bufs, ready, empty, p_lo, n_steps, H, kw, o0,
    c0, BH: gl.constexpr, W: gl.constexpr, STAGES: gl.constexpr, LOADER_WARP: gl.constexpr,
    num_warps: gl.constexpr,
):  # fmt: skip
    """The weight gradient's K loop, by the warpgroup: per step (stage it % STAGES, waited on
    ``ready``) three kernel rows' wgmmas; the stage of the step before is then released on
    ``empty`` to the loader warp (LOADER_WARP) or refilled here with step it + STAGES - 1.
    Returns the three fp32 accumulators."""
    BLOCK_M: gl.constexpr = dy_desc.block_type.shape[3]
    BLOCK_N: gl.constexpr = body_desc.block_type.shape[3]
    BLOCK_K: gl.constexpr = BH * W
    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0],
        warps_per_cta=mma_warps(BLOCK_M, num_warps),
        instr_shape=[16, mma_n(BLOCK_N, num_warps, BLOCK_M), 16],
    )
    acc0 = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=mma_layout)
    acc1 = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=mma_layout)
    acc2 = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=mma_layout)
    for it in range(n_steps):
        slot = it % STAGES
        mbarrier.wait(ready.index(slot), (it // STAGES) & 1)
        a = dy_bufs.index(slot).permute((1, 0))  # dy^T: [BLOCK_M, BLOCK_K]
        x_buf = x_bufs.index(slot)
        acc0 = warpgroup_mma(a, rows_view(x_buf, 0, W, BLOCK_K), acc0, is_async=True)
        acc1 = warpgroup_mma(a, rows_view(x_buf, W, W, BLOCK_K), acc1, is_async=True)
        acc2 = warpgroup_mma(a, rows_view(x_buf, 2 * W, W, BLOCK_K), acc2, is_async=True)
        acc0, acc1, acc2 = warpgroup_mma_wait(num_outstanding=3, deps=(acc0, acc1, acc2))
        if LOADER_WARP:
            if it > 0:
                mbarrier.arrive(empty.index((it + STAGES - 1) % STAGES), count=1)
        elif it + STAGES - 1 < n_steps:
            nxt = it + STAGES - 1
            refill = nxt % STAGES
            _issue_wgrad_loads(dy_desc, body_desc, edge_desc, dy_bufs.index(refill),
                               x_bufs.index(refill), ready.index(refill), p_lo + nxt * BLOCK_K,
                               H, kw, o0, c0, BH, W)  # fmt: skip
    acc0, acc1, acc2 = warpgroup_mma_wait(num_outstanding=0, deps=(acc0, acc1, acc2))
    return acc0, acc1, acc2


@gluon.jit
def _wgrad_loader(
    dy_desc, body_desc, edge_desc, dy_bufs, x_bufs, ready, empty, p_lo, n_steps, H, kw, o0,
    c0, BH: gl.constexpr, W: gl.constexpr, STAGES: gl.constexpr,
):  # fmt: skip
    """The weight gradient's loader warp: step it's copies into stage it % STAGES once the
    warpgroup released it (as ``_halo_loader``; the program's last step is never waited for:
    the program ends)."""
    BLOCK_K: gl.constexpr = BH * W
    for it in range(n_steps):
        slot = it % STAGES
        mbarrier.wait(empty.index(slot), ((it // STAGES) & 1) ^ 1)
        _issue_wgrad_loads(dy_desc, body_desc, edge_desc, dy_bufs.index(slot),
                           x_bufs.index(slot), ready.index(slot), p_lo + it * BLOCK_K, H, kw,
                           o0, c0, BH, W)  # fmt: skip


@gluon.jit
def _issue_wgrad_loads(
    dy_desc, body_desc, edge_desc, dy_buf, x_buf, bar, p0, H, kw, o0, c0,
    BH: gl.constexpr, W: gl.constexpr,
):  # fmt: skip
    """Start the copies of the K step at output pixel p0: the dy box, and the x halo (rows
    h0-1 .. h0+BH, column kw-1) as body and edge boxes; ``bar`` completes when they landed."""
    n0 = p0 // (H * W)
    h0 = (p0 // W) % H
    nbytes: gl.constexpr = (
        dy_desc.block_type.nbytes + body_desc.block_type.nbytes + edge_desc.block_type.nbytes
    )
    mbarrier.expect(bar, nbytes)
    tma.async_copy_global_to_shared(
        dy_desc, [n0, h0, 0, o0], bar, dy_buf.reshape(dy_desc.block_type.shape)
    )
    rows = x_buf.reshape([1, x_buf.shape[0] // W, W, x_buf.shape[1]])
    tma.async_copy_global_to_shared(body_desc, [n0, h0 - 1, kw - 1, c0], bar, rows.slice(0, BH, 1))
    tma.async_copy_global_to_shared(
        edge_desc, [n0, h0 + BH - 1, kw - 1, c0], bar, rows.slice(BH, 2, 1)
    )


@gluon.jit
def _store_dw(ptrs, acc, ACCUMULATE: gl.constexpr):
    """Store one tap's fp32 tile (whole: no mask), added to what is there when ACCUMULATE."""
    if ACCUMULATE:
        acc += gl.load(ptrs)
    gl.store(ptrs, acc)


def wgrad_smem_bytes(cfg: HaloConfig, w: int, elem_bytes: int = 2) -> int:
    """Shared memory of the weight gradient's pipeline: per stage a dy box of BLOCK_K pixels
    x BLOCK_M channels and an x halo buffer (rows rounded up to a power of two) x BLOCK_N
    (the mbarriers aside)."""
    halo_rows = triton.next_power_of_2(cfg.BLOCK_K + 2 * w)
    return cfg.num_stages * (cfg.BLOCK_K * cfg.BLOCK_M + halo_rows * cfg.BLOCK_N) * elem_bytes


# Weight-gradient tiles: BLOCK_M output channels x BLOCK_N input channels, K steps of BLOCK_K
# pixels (whole rows), three fp32 accumulators (64 x 64 on 4 warps: 96 registers of them).
# BLOCK_N (input channels, the x halo's row) stays 64: a sub-view of a wider halo row is
# wrong (``rows_view``; 64 x 128 computed gradients 0.76 off on an H100, 2026-12-07).
HALO_WGRAD_CONFIGS: tuple[HaloConfig, ...] = (
    HaloConfig(64, 64, 128, 4, 2),
    HaloConfig(64, 64, 128, 4, 4),
    HaloConfig(64, 64, 64, 4, 4),
    HaloConfig(128, 64, 128, 8, 2),
)
# With a loader warp (as HALO_LOADER_WARP_CONFIGS; TRITONCNN_HALO_LOADER_WARP=1, or
# TRITONCNN_HALO_WGRAD_LOADER_WARP=1 for the weight gradient's alone).
HALO_WGRAD_LOADER_WARP_CONFIGS: tuple[HaloConfig, ...] = (
    HaloConfig(64, 64, 128, 4, 4, loader_warp=True),
    HaloConfig(64, 64, 64, 4, 4, loader_warp=True),
)


def wgrad_loader_warp_env_enabled() -> bool:
    """TRITONCNN_HALO_WGRAD_LOADER_WARP=1: the weight gradient's loader-warp tiles, whatever
    TRITONCNN_HALO_LOADER_WARP says. On an H100 (2026-12-07, graphed, b512) its heuristic
    tile with a loader warp took 81 us against 94 (64 channels, 32x32) and 82 against 90
    (128, 16x16), where the forward's took longer; off until a step is timed with it."""
    return os.environ.get("TRITONCNN_HALO_WGRAD_LOADER_WARP", "0") == "1"


# Read by the weight gradient's heuristic and candidates at every call: True gives them
# their loader-warp tiles, None leaves it to conv_halo.LOADER_WARP.
LOADER_WARP: bool | None = True if wgrad_loader_warp_env_enabled() else None


def _loader_warp() -> bool:
    return conv_halo.LOADER_WARP if LOADER_WARP is None else LOADER_WARP


def halo_wgrad_applicable(x: torch.Tensor, grad_out: torch.Tensor, weight_shape, stride, padding,
                          dilation, groups: int) -> bool:  # fmt: skip
    """Whether ``conv3x3_halo_wgrad_kernel`` can compute this weight gradient (as
    ``halo_applicable``, for x and dy)."""
    _, _, h, w = x.shape
    return (
        conv_ok(x, grad_out, weight_shape, stride, padding, dilation, groups)
        and pick_halo_wgrad_config(h, w) is not None
    )


def halo_wgrad_candidates(
    c_in: int, c_out: int, h: int, w: int, smem_limit: int, loader_warp: bool | None = None
) -> list[HaloConfig]:
    """The HALO_WGRAD_CONFIGS (and, with ``loader_warp``, default LOADER_WARP or else
    conv_halo.LOADER_WARP, the HALO_WGRAD_LOADER_WARP_CONFIGS) that fit: whole-row pixel
    steps, tiles dividing the channels, within shared memory."""
    with_loader = _loader_warp() if loader_warp is None else loader_warp
    configs = HALO_WGRAD_CONFIGS + (HALO_WGRAD_LOADER_WARP_CONFIGS if with_loader else ())
    return [
        cfg
        for cfg in configs
        if rows_per_tile(h, w, cfg.BLOCK_K)
        and c_out % cfg.BLOCK_M == 0
        and c_in % cfg.BLOCK_N == 0
        and wgrad_smem_bytes(cfg, w) <= smem_limit
    ]


def pick_halo_wgrad_config(h: int, w: int) -> HaloConfig | None:
    """The heuristic weight-gradient tile: 64 x 64 on 4 stages, K steps of 128 pixels (64
    where rows are 32 wide or 8 rows high). H100, 2026-12-07: ResNet-18's 64-channel 32x32
    wgrad 95 us in 64-pixel steps, 107 in 128 (cuDNN 102); 128 channels at 16x16 94 us in
    128-pixel steps (cuDNN 76)."""
    steps = (64, 128) if w >= 32 else (128, 64)
    for block_k in steps:
        if rows_per_tile(h, w, block_k):
            return with_loader_warp(
                HaloConfig(64, 64, block_k, 4, 4), HALO_WGRAD_LOADER_WARP_CONFIGS, _loader_warp()
            )
    return None


def launch_halo_wgrad(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    dst: torch.Tensor,
    strides: tuple[int, int, int],
    cfg: HaloConfig,
    split: int,
    per_split: int,
    accumulate: bool,
) -> None:
    """Launch ``conv3x3_halo_wgrad_kernel`` (``split`` splits of ``per_split`` pixels, a
    multiple of cfg.BLOCK_K) into fp32 ``dst`` with element strides (split, o, tap), c
    contiguous; the caller checked ``halo_wgrad_applicable`` and adds the splits."""
    n, c_in, h, w = x.shape
    c_out = grad_out.shape[1]
    bh = rows_per_tile(h, w, cfg.BLOCK_K)
    if bh is None or per_split % cfg.BLOCK_K or c_out % cfg.BLOCK_M or c_in % cfg.BLOCK_N:
        raise ValueError(f"conv2d halo wgrad tile {cfg} doesn't fit {h}x{w} / {per_split}")
    dtype = gl_dtype(x)

    def box(t: torch.Tensor, rows: int, cols: int) -> TensorDescriptor:
        c = t.shape[1]
        shape = [1, rows, w, cols]
        layout = gl.NVMMASharedLayout.get_default_for(shape, dtype)
        return TensorDescriptor(t, [n, h, w, c], [h * w * c, w * c, c, 1], shape, layout)

    tiles = (c_out // cfg.BLOCK_M) * (c_in // cfg.BLOCK_N)
    options = launch_options(cfg, wgrad_smem_bytes(cfg, w), sm_shared_bytes())
    conv3x3_halo_wgrad_kernel[(tiles, 3, split)](
        box(grad_out, bh, cfg.BLOCK_M), box(x, bh, cfg.BLOCK_N), box(x, 2, cfg.BLOCK_N), dst,
        h, c_in, per_split, n * h * w, *strides,
        ACCUMULATE=accumulate, BH=bh, W=w, STAGES=cfg.num_stages, LOADER_WARP=cfg.loader_warp,
        num_warps=cfg.num_warps, launch_pdl=LAUNCH_PDL, **options,
    )  # fmt: skip
