"""3x3 stride-1 convolution forward and input gradient that load each input row once per
(kernel column, channel block) for all three kernel rows: the halo kernels (Gluon, sm_90), and
what the weight gradient's (conv_halo_wgrad.py) shares with them: the tile config, sub-views,
when they apply, the loader-warp switch.

Why: conv_tma.py's implicit GEMM loads one A box per tap, nine per channel block; for
ResNet-18's 64-channel layers the tile can't grow (C = 64 fixes N), so those loads are ~23
bytes per kFLOP from L2, about the H100's L2 bandwidth at the measured speed
(benchmarks/README.md, the L2 estimate). Here a program's A operand for kernel column kw and
channel block k0 is one halo box of BH + 2 input rows x W columns; the three kernel rows are
three sub-views of it in shared memory, BH*W rows each, kh*W rows apart (a multiple of 8
rows: the 128-byte swizzle pattern repeats every 8 rows, so a sub-view is itself a valid wgmma
operand). A traffic per channel block falls from 9 boxes to 3 * (BH + 2) / BH. Triton's
``tl`` has no sub-views of a loaded tile; Gluon's shared-memory descriptors do
(``slice``), with explicit TMA copies, mbarriers and asynchronous wgmma.

Layout: activations dense NHWC (channels_last) fp16 / bf16; weight dense OHWI in their dtype,
seen as [C_out, 9*C_in]; output dense NHWC. Tiles: a program computes BLOCK_M = BH*W output
pixels (BH whole rows of one image, BH dividing H) x BLOCK_N channels; W a multiple of 8 and
a power of two (TMA boxes are powers of two, so the halo is two copies: a body box of BH rows
and an edge box of 2 rows, into one buffer of (BH+2)*W rows).

- forward: y[p, o] = sum_{kh, kw, c} x[h+kh-1, w+kw-1, c] * w[o, kh, kw, c]; the halo box
  starts at row h0-1, column kw-1, and kernel row kh reads its rows [kh*W, +BH*W).
- DGRAD: dx[p, c] = sum_{kh, kw, o} dy[h+1-kh, w+1-kw, o] * w[o, kh, kw, c]; the box starts
  at row h0-1, column 1-kw, and kernel row kh reads rows [(2-kh)*W, +BH*W).
- weight gradient (conv_halo_wgrad.py): the same halo, of x, is the B operand of a
  program's three kernel rows (one kernel column kw, three accumulators), along the
  reduction over output pixels; dy's box is read once per K step for all three.

Boxes reaching past the tensor read zeros (the padding). Pipeline: STAGES buffers of (halo box,
three weight boxes), one mbarrier each; a stage is refilled once the wgmmas that read it (the
previous iteration's) have retired, by the warpgroup or by a loader warp of its own
(HaloConfig.loader_warp). A program may be persistent (HaloConfig.per_sm): it computes
several tiles and its pipeline runs across them, so the next tile's first boxes load during
this one's epilogue. Epilogue: fp32 accumulator -> dtype, per-tile batch-norm moments of the
rounded tile (forward, as conv2d_fwd_kernel's), or + add / ReLU mask or a batch norm's
backward sums (dgrad, as conv2d_dgrad_kernel's), stored by one TMA copy.

No interpreter runs Gluon: these kernels run only on an sm_90 GPU (unless TRITONCNN_HALO=0);
tests/test_conv_halo.py checks them against torch there, and benchmarks/ptx_report.py --op
fwd_halo / dgrad_halo compiles them for sm_90 on the CPU (tests/test_ptx.py).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from tritoncnn import runtime
from tritoncnn.kernels.conv_tma import _tma_ready
from tritoncnn.kernels.elementwise import ACT_NONE, ACT_RELU, ACT_RELU6
from tritoncnn.kernels.norm_fusion import (
    GradSums,
    PendingNorm,
    TileMoments,
    grad_sums,
    pending_norm_args,
    tile_moments,
)
from tritoncnn.kernels.pdl import LAUNCH_PDL
from tritoncnn.kernels.pdl import wait_for_inputs_gluon as wait_for_inputs


def env_enabled() -> bool:
    """conv.py sends the 3x3 convs that qualify to these kernels unless TRITONCNN_HALO=0."""
    return os.environ.get("TRITONCNN_HALO", "1") != "0"


# Read at every launch (benchmarks and tests set it). On since their gpu tests passed on an
# H100 (2026-12-07): ResNet-18's graphed b512 step 9.30 -> 8.24 ms.
ENABLED: bool = env_enabled()


def loader_warp_env_enabled() -> bool:
    """The warp-specialized tiles (HaloConfig.loader_warp) are autotuning candidates, and the
    heuristic's tiles take their loader-warp versions, only with TRITONCNN_HALO_LOADER_WARP=1.
    On an H100 (2026-12-07) their gpu tests pass, but ResNet-18's graphed b512 step gains
    nothing with them (8.26 against 8.25 ms): the forward's are slower, the weight
    gradient's faster (conv_halo_wgrad.LOADER_WARP turns on those alone)."""
    return os.environ.get("TRITONCNN_HALO_LOADER_WARP", "0") == "1"


# Read by halo_candidates and the heuristics at every call (benchmarks and tests set it).
LOADER_WARP: bool = loader_warp_env_enabled()


@dataclass(frozen=True)
class HaloConfig:
    """A tile of a halo kernel. Forward / dgrad: BLOCK_M output pixels (whole rows) x BLOCK_N
    channels, K steps of BLOCK_K reduced channels; weight gradient: BLOCK_M output x BLOCK_N
    input channels, K steps of BLOCK_K pixels (whole rows). num_stages pipeline buffers.
    per_sm (forward / dgrad): 0 launches a program per tile; k > 0 at most k programs per SM,
    each looping over its tiles (persistent). loader_warp (forward / dgrad): one more warp of
    its own issues the TMA copies (warp-specialized). ``halo`` tells it from other configs of
    the same numbers in the autotuner's cache."""

    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    num_warps: int
    num_stages: int
    per_sm: int = 0
    loader_warp: bool = False
    halo: bool = True

    def smem_bytes(self, w: int, epilogue_tiles: int = 3, elem_bytes: int = 2) -> int:
        """Shared memory: the pipelined halo buffers (rows rounded up to a power of two) and
        weight boxes, ``epilogue_tiles`` output-sized tiles (1 forward; the dgrad's 1 + an add
        tile + a ReLU-mask or batch-norm input tile), the forward moments' cross-warp scratch
        (fp32 per warp and column; a program of one tile puts it in the pipeline's buffers,
        dead by then, but a persistent one's stay live across its tiles, and a loader warp's
        partitions keep their own; the dgrad's sums take no more) and the mbarriers (twice
        the stages' with a loader warp: it waits for each stage to be released). The compiled
        forward asks for exactly this (tests/test_ptx.py)."""
        halo_rows = triton.next_power_of_2(self.BLOCK_M + 2 * w)
        stage = (halo_rows + 3 * self.BLOCK_N) * self.BLOCK_K
        tiles = epilogue_tiles * self.BLOCK_M * self.BLOCK_N
        barriers = (1 + self.loader_warp) * self.num_stages + 1
        moments = self.num_warps * self.BLOCK_N * 4 if self.per_sm or self.loader_warp else 0
        # (+4: what Triton 3.6's warp-specialized region adds to a compiled loader-warp tile)
        scratch = moments + barriers * 8 + 4 * self.loader_warp
        return (self.num_stages * stage + tiles) * elem_bytes + scratch


# Stage counts are powers of two (shared-memory shapes must be). 128 x 64 with dgrad's add
# and ReLU tiles: 160 KiB either way. The halo kernels' candidates may use the whole opt-in
# shared memory (smem_bytes counts all of it, unlike the pointer kernels' estimate): 128 x 128
# and 256 x 64 on 4 stages (194-210 KiB) fit the forward only. The 72 / 48 KiB tiles let two
# or more programs share an SM: on 12-07 the 160 KiB tiles, one program per SM with one
# warpgroup of 64-wide wgmmas, stayed at 280-330 TFLOP/s while cuDNN reached 370-540. A
# tile's K loop is short (ResNet-18's 64-channel layers: 6 iterations), so loading its first
# boxes and storing its output cost about as much as its wgmmas: the persistent tiles
# (per_sm > 0) overlap the next tile's first loads with the epilogue.
HALO_CONFIGS: tuple[HaloConfig, ...] = (
    HaloConfig(128, 64, 64, 4, 2),
    HaloConfig(128, 64, 32, 4, 4),
    HaloConfig(128, 128, 32, 4, 4),
    HaloConfig(128, 128, 64, 4, 2),
    HaloConfig(256, 64, 32, 8, 4),
    HaloConfig(64, 64, 64, 4, 2),
    HaloConfig(64, 64, 32, 4, 4),
    HaloConfig(128, 64, 32, 4, 2),
    HaloConfig(64, 64, 32, 4, 2),
    HaloConfig(128, 128, 32, 4, 2),
    HaloConfig(128, 64, 32, 4, 4, per_sm=1),
    HaloConfig(128, 64, 32, 4, 2, per_sm=2),
    HaloConfig(128, 64, 32, 4, 2, per_sm=3),
    HaloConfig(64, 64, 32, 4, 4, per_sm=2),
    HaloConfig(128, 128, 32, 4, 2, per_sm=1),
    # Two warpgroups on 128- / 256-row x 128-column tiles (94 / 155 registers, no spills):
    # the forward is bound by L2 -> shared traffic (benchmarks/README.md, 12-07 night), and a
    # 128-column tile loads each halo once for a 128-channel layer; not timed yet.
    HaloConfig(128, 128, 32, 8, 4),
    HaloConfig(128, 128, 32, 8, 2),
    HaloConfig(256, 128, 32, 8, 2),
)

# Warp-specialized tiles: a fifth warp issues the TMA copies (``_halo_loader``). Triton 3.6
# puts a barrier of all the program's warps before each TMA copy and mbarrier wait (its
# shared-memory hazard analysis): seven a K step in the warpgroup's loop, beside the loads'
# integer divisions (the compiled sm_90 code, read on the CPU), while one K step of 128 x 64
# x 32 is ~12 wgmma instructions. In the loader's own warp they are warp barriers and its
# coordinates step by additions; the warpgroup keeps two barriers a step.
HALO_LOADER_WARP_CONFIGS: tuple[HaloConfig, ...] = (
    HaloConfig(128, 64, 32, 4, 4, loader_warp=True),
    HaloConfig(64, 64, 32, 4, 4, loader_warp=True),
    HaloConfig(128, 64, 64, 4, 2, loader_warp=True),
    HaloConfig(128, 128, 32, 4, 4, loader_warp=True),
    HaloConfig(128, 64, 32, 4, 4, per_sm=1, loader_warp=True),
    HaloConfig(64, 64, 32, 4, 4, per_sm=2, loader_warp=True),
    # two consumer warpgroups (8 warps stacked along M, 64 rows each), as Hopper GEMMs run:
    # 168 registers a thread, 12 warps a program (one per SM)
    HaloConfig(128, 64, 32, 8, 4, loader_warp=True),
    HaloConfig(128, 128, 32, 8, 4, loader_warp=True),
    HaloConfig(256, 64, 32, 8, 2, loader_warp=True),
)

# Registers a thread of a loader-warp program may use where two programs share an SM's
# shared memory: Triton launches it as 8 warps (the warpgroup, the loader, 3 idle to round
# up to a warpgroup), and two programs of 8 warps fit the SM's 64k registers at 128 each
# (ptxas: no spills at 128 x 64 with any epilogue, or 64 x 64).
LOADER_WARP_MAXNREG = 128


@gluon.constexpr_function
def mma_warps(block_m, num_warps):
    """warps_per_cta of the accumulator: warps stacked along M (16 rows each, wgmma's 4-warp
    atom), then along N."""
    along_m = min(num_warps, max(4, block_m // 16))
    return [along_m, num_warps // along_m]


@gluon.constexpr_function
def mma_n(block_n, num_warps, block_m):
    """The wgmma instruction's N: the widest multiple of 8 <= 256 dividing a warp column's
    share of BLOCK_N."""
    along_m = min(num_warps, max(4, block_m // 16))
    share = block_n // (num_warps // along_m)
    n = min(256, share)
    while share % n:
        n -= 8
    return n


@gluon.constexpr_function
def halo_rows(bh, w):
    """Rows of a stage's halo buffer: (BH+2)*W rounded up to a power of two."""
    return triton.next_power_of_2((bh + 2) * w)


@gluon.jit
def _tile_origin(tile, n_tiles_m, H, W: gl.constexpr, BLOCK_M: gl.constexpr,
                 BLOCK_N: gl.constexpr):  # fmt: skip
    """Tile ``tile``'s first output row (of M = N*H*W), its image n0 and image row h0, and its
    first column. Row tiles vary fastest: programs running at once share weight boxes."""
    pid_m = tile % n_tiles_m
    row0 = pid_m * BLOCK_M
    return row0, row0 // (H * W), (row0 // W) % H, (tile // n_tiles_m) * BLOCK_N


@gluon.jit
def _copy_stage(
    body_desc, edge_desc, w_desc, a_buf, b0_buf, b1_buf, b2_buf, bar, n0, h0, col0, kw, k0,
    C_in_w, DGRAD: gl.constexpr, BH: gl.constexpr, W: gl.constexpr,
):  # fmt: skip
    """Start the TMA copies of one stage: kernel column kw and reduced channels [k0,
    +BLOCK_K) of the tile at image n0, rows h0.., columns col0... They are the halo box's body
    (rows h0-1 .. h0+BH-2) and edge (h0+BH-1, h0+BH) into a_buf, kernel rows 0, 1, 2's weight
    boxes into b0_buf, b1_buf, b2_buf; ``bar`` completes when all bytes have landed."""
    col = 1 - kw if DGRAD else kw - 1
    nbytes: gl.constexpr = (
        body_desc.block_type.nbytes + edge_desc.block_type.nbytes + 3 * w_desc.block_type.nbytes
    )
    mbarrier.expect(bar, nbytes)
    rows = a_buf.reshape([1, a_buf.shape[0] // W, W, a_buf.shape[1]])  # [1, rows, W, BLOCK_K]
    tma.async_copy_global_to_shared(body_desc, [n0, h0 - 1, col, k0], bar, rows.slice(0, BH, 1))
    tma.async_copy_global_to_shared(
        edge_desc, [n0, h0 + BH - 1, col, k0], bar, rows.slice(BH, 2, 1)
    )
    if DGRAD:  # box (o, c) of tap (kh, kw) at column tap*C_in + c
        tma.async_copy_global_to_shared(w_desc, [k0, kw * C_in_w + col0], bar, b0_buf)
        tma.async_copy_global_to_shared(w_desc, [k0, (3 + kw) * C_in_w + col0], bar, b1_buf)
        tma.async_copy_global_to_shared(w_desc, [k0, (6 + kw) * C_in_w + col0], bar, b2_buf)
    else:  # box (o, c)
        tma.async_copy_global_to_shared(w_desc, [col0, kw * C_in_w + k0], bar, b0_buf)
        tma.async_copy_global_to_shared(w_desc, [col0, (3 + kw) * C_in_w + k0], bar, b1_buf)
        tma.async_copy_global_to_shared(w_desc, [col0, (6 + kw) * C_in_w + k0], bar, b2_buf)


@gluon.jit
def _issue_loads(
    body_desc, edge_desc, w_desc, a_bufs, b0_bufs, b1_bufs, b2_bufs, bars, g, n_iters,
    k_steps, first_tile, tile_step, n_tiles_m, H, C_in_w,
    DGRAD: gl.constexpr, BH: gl.constexpr, W: gl.constexpr, STAGES: gl.constexpr,
    PERSISTENT: gl.constexpr,
):  # fmt: skip
    """The program's load ``g`` into stage g % STAGES, issued by the warps that compute: its
    iteration it = (kw, channel block) of its tile g // n_iters (tile first_tile + that *
    tile_step). A program of one tile (not PERSISTENT) has its tile's origin invariant, so
    the compiler lifts it out of the K loop: one division a load is left, as before there
    were persistent programs (ResNet-18's 3x3 dgrads took 10-40 us more each with four)."""
    BLOCK_K: gl.constexpr = body_desc.block_type.shape[3]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[1] if DGRAD else w_desc.block_type.shape[0]
    if PERSISTENT:
        j = g // n_iters
        it = g - j * n_iters
    else:
        j: gl.constexpr = 0
        it = g
    _, n0, h0, col0 = _tile_origin(first_tile + j * tile_step, n_tiles_m, H, W, BH * W, BLOCK_N)
    kw = it // k_steps
    slot = g % STAGES
    _copy_stage(body_desc, edge_desc, w_desc, a_bufs.index(slot), b0_bufs.index(slot),
                b1_bufs.index(slot), b2_bufs.index(slot), bars.index(slot), n0, h0, col0, kw,
                (it - kw * k_steps) * BLOCK_K, C_in_w, DGRAD, BH, W)  # fmt: skip


# Registers a thread of the loader warp keeps (setmaxnreg; the warpgroup may take the rest):
# it holds descriptors, stage addresses and counters.
LOADER_REGS = gl.constexpr(40)


@gluon.jit
def _halo_loader(
    body_desc, edge_desc, w_desc, a_bufs, b0_bufs, b1_bufs, b2_bufs, ready, empty,
    first_tile, tile_step, my_tiles, k_steps, n_tiles_m, H, C_in_w,
    DGRAD: gl.constexpr, BH: gl.constexpr, W: gl.constexpr, STAGES: gl.constexpr,
):  # fmt: skip
    """The loader warp of a LOADER_WARP program: every load of its tiles in the order they
    are computed, load g into stage g % STAGES once the warpgroup has released that stage
    (``empty``, its (g // STAGES)-th phase; a fresh barrier's wait on parity 1 passes at once,
    so the first STAGES loads don't wait). Coordinates step by additions: no divisions."""
    BLOCK_K: gl.constexpr = body_desc.block_type.shape[3]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[1] if DGRAD else w_desc.block_type.shape[0]
    g = 0
    for j in range(my_tiles):
        _, n0, h0, col0 = _tile_origin(first_tile + j * tile_step, n_tiles_m, H, W, BH * W, BLOCK_N)
        for kw in range(3):
            for kb in range(k_steps):
                slot = g % STAGES
                mbarrier.wait(empty.index(slot), ((g // STAGES) & 1) ^ 1)
                _copy_stage(body_desc, edge_desc, w_desc, a_bufs.index(slot),
                            b0_bufs.index(slot), b1_bufs.index(slot), b2_bufs.index(slot),
                            ready.index(slot), n0, h0, col0, kw, kb * BLOCK_K, C_in_w, DGRAD, BH,
                            W)  # fmt: skip
                g += 1


@gluon.jit
def _mma_row(a_buf, b_buf, acc, kh: gl.constexpr, DGRAD: gl.constexpr, W: gl.constexpr,
             BLOCK_M: gl.constexpr):  # fmt: skip
    """Start kernel row kh's wgmma: the halo buffer's rows [kh*W, +BLOCK_M) (forward) or
    [(2-kh)*W, +BLOCK_M) (dgrad) times its weight box (transposed for the forward)."""
    first: gl.constexpr = (2 - kh) * W if DGRAD else kh * W
    b = b_buf if DGRAD else b_buf.permute((1, 0))
    return warpgroup_mma(rows_view(a_buf, first, W, BLOCK_M), b, acc, is_async=True)


@gluon.jit
def conv3x3_halo_kernel(
    body_desc, edge_desc, w_desc, out_desc, add_desc, in_desc, part0_ptr, part1_ptr,
    nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr,
    H, C_cols, C_in_w, n_tiles_m, n_tiles, C_red: gl.constexpr,
    DGRAD: gl.constexpr, MOMENTS: gl.constexpr, ADD_GRAD: gl.constexpr,
    RELU_INPUT: gl.constexpr, GRAD_SUMS: gl.constexpr, IN_HAS_W: gl.constexpr,
    IN_HAS_B: gl.constexpr, IN_ACT: gl.constexpr, BH: gl.constexpr, W: gl.constexpr,
    STAGES: gl.constexpr, LOADER_WARP: gl.constexpr, PERSISTENT: gl.constexpr,
    num_warps: gl.constexpr,
):  # fmt: skip
    """BLOCK_M x BLOCK_N output tiles of a 3x3, stride-1, pad-1 conv's forward or input
    gradient (DGRAD); see the module docstring for the halo box. C_red (the reduced channels)
    is a compile-time constant: with the K loop's length known, ptxas keeps its wgmmas in
    flight; with a runtime length it serialized them once the loop was lean (tests/test_ptx.py
    checks every tile's machine code).

    Tiles: n_tiles = n_tiles_m row tiles x C_cols/BLOCK_N column tiles, tile t is row tile
    t % n_tiles_m (rows [that*BLOCK_M, +BLOCK_M) of the output's M = N*H*W rows: image n0,
    rows h0 .. h0+BH-1) and column tile t // n_tiles_m. Grid: (programs,); program p computes
    tiles p, p + programs, ... (one each when programs = n_tiles; persistent when fewer: its
    pipeline runs on across its tiles, so the next tile's first boxes load during this one's
    epilogue). LOADER_WARP: one more warp issues the loads (``_halo_loader``, its own
    partition), so the warpgroup's loop is only waits and wgmmas; otherwise the warpgroup
    issues them between its wgmmas (each TMA copy there is a barrier of all its warps).
    body_desc / edge_desc: TMA descriptors of the A operand (x, or dy for DGRAD), [N, H, W,
    C_red], boxes [1, BH, W, BLOCK_K] and [1, 2, W, BLOCK_K]. w_desc: the weight as
    [C_out, 9*C_in_w], box [BLOCK_N, BLOCK_K] (forward, used transposed) or [BLOCK_K, BLOCK_N]
    (DGRAD). out_desc / add_desc / in_desc: dense NHWC tensors as [M, C_cols] matrices, box
    [BLOCK_M, BLOCK_N]. C_red % BLOCK_K == 0 and C_cols % BLOCK_N == 0 (the caller checks), so
    no tile is partial. part0_ptr, part1_ptr: fp32 [n_tiles_m, C_cols], a value per row tile
    and column. Epilogues:
    - MOMENTS (forward): the tile's mean and M2 of y as stored.
    - ADD_GRAD: add the tile of add_desc before rounding.
    - RELU_INPUT: zero dx where in_desc's tile (the conv input, a ReLU's output) is not > 0.
    - GRAD_SUMS (dgrad; not with RELU_INPUT): dx is the gradient of a training batch norm's
      output (after its activation IN_ACT: none, ReLU or ReLU6), in_desc that batch norm's
      input; store the tile's sum(g') and sum(g' * xhat) as norm_fusion.store_grad_sums does, from
      dx as stored, nmean_ptr / ninvstd_ptr (fp32 [C_cols] batch statistics) and nw_ptr /
      nb_ptr (its affine weight and bias, read with IN_HAS_W / IN_HAS_B).
    """
    wait_for_inputs()
    BLOCK_M: gl.constexpr = BH * W
    BLOCK_N: gl.constexpr = out_desc.block_type.shape[1]
    BLOCK_K: gl.constexpr = body_desc.block_type.shape[3]
    dtype: gl.constexpr = out_desc.dtype
    first_tile = gl.program_id(0)
    tile_step = gl.num_programs(0)
    if PERSISTENT:
        my_tiles = (n_tiles - first_tile + tile_step - 1) // tile_step
    else:
        # one tile: the tile loop and its index arithmetic compile away
        my_tiles: gl.constexpr = 1
    k_steps = C_red // BLOCK_K

    # Shared-memory shapes must be powers of two: a stage's halo buffer has
    # next_pow2((BH+2)*W) rows, of which the first (BH+2)*W are used.
    a_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_K], dtype)
    a_bufs = gl.allocate_shared_memory(dtype, [STAGES, halo_rows(BH, W), BLOCK_K], a_layout)
    w_shape: gl.constexpr = [STAGES] + w_desc.block_type.shape
    b0_bufs = gl.allocate_shared_memory(dtype, w_shape, w_desc.layout)  # kernel row 0
    b1_bufs = gl.allocate_shared_memory(dtype, w_shape, w_desc.layout)
    b2_bufs = gl.allocate_shared_memory(dtype, w_shape, w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
    out_buf = gl.allocate_shared_memory(dtype, [BLOCK_M, BLOCK_N], out_desc.layout)
    epi_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(epi_bar, count=1)
    gl.static_assert(not (RELU_INPUT and GRAD_SUMS), "one tile of the conv input at most")
    # Tiles an epilogue doesn't read are out_buf (never touched under that name).
    if ADD_GRAD:
        add_buf = gl.allocate_shared_memory(dtype, [BLOCK_M, BLOCK_N], out_desc.layout)
    else:
        add_buf = out_buf
    if RELU_INPUT or GRAD_SUMS:
        in_buf = gl.allocate_shared_memory(dtype, [BLOCK_M, BLOCK_N], out_desc.layout)
    else:
        in_buf = out_buf

    if LOADER_WARP:
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for s in gl.static_range(STAGES):
            mbarrier.init(empty.index(s), count=1)
        # (the argument tuples written in place: a tuple assigned to a name would turn its
        # constexprs into tensors)
        gl.warp_specialize(
            [
                (_halo_tiles, (
                    body_desc, edge_desc, w_desc, out_desc, add_desc, in_desc, a_bufs, b0_bufs,
                    b1_bufs, b2_bufs, ready, empty, epi_bar, out_buf, add_buf, in_buf,
                    part0_ptr, part1_ptr, nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr, H, C_cols,
                    C_in_w, n_tiles_m, first_tile, tile_step, my_tiles, k_steps, DGRAD,
                    MOMENTS, ADD_GRAD, RELU_INPUT, GRAD_SUMS, IN_HAS_W, IN_HAS_B, IN_ACT, BH, W,
                    STAGES, True, PERSISTENT, num_warps,
                )),
                (_halo_loader, (
                    body_desc, edge_desc, w_desc, a_bufs, b0_bufs, b1_bufs, b2_bufs, ready,
                    empty, first_tile, tile_step, my_tiles, k_steps, n_tiles_m, H, C_in_w, DGRAD,
                    BH, W, STAGES,
                )),
            ],
            [1],
            [LOADER_REGS],
        )  # fmt: skip
        for s in gl.static_range(STAGES):
            mbarrier.invalidate(empty.index(s))
    else:
        n_loads = my_tiles * 3 * k_steps
        for s in gl.static_range(STAGES - 1):
            if s < n_loads:
                _issue_loads(body_desc, edge_desc, w_desc, a_bufs, b0_bufs, b1_bufs, b2_bufs,
                             ready, s, 3 * k_steps, k_steps, first_tile, tile_step, n_tiles_m,
                             H, C_in_w, DGRAD, BH, W, STAGES, PERSISTENT)  # fmt: skip
        _halo_tiles(body_desc, edge_desc, w_desc, out_desc, add_desc, in_desc, a_bufs, b0_bufs,
                    b1_bufs, b2_bufs, ready, ready, epi_bar, out_buf, add_buf, in_buf,
                    part0_ptr, part1_ptr, nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr, H, C_cols,
                    C_in_w, n_tiles_m, first_tile, tile_step, my_tiles, k_steps, DGRAD,
                    MOMENTS, ADD_GRAD, RELU_INPUT, GRAD_SUMS, IN_HAS_W, IN_HAS_B, IN_ACT, BH, W,
                    STAGES, False, PERSISTENT, num_warps)  # fmt: skip
    for s in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(s))
    mbarrier.invalidate(epi_bar)


@gluon.jit
def _halo_tiles(
    body_desc, edge_desc, w_desc, out_desc, add_desc, in_desc, a_bufs, b0_bufs, b1_bufs,
    b2_bufs, ready, empty, epi_bar, out_buf, add_buf, in_buf, part0_ptr, part1_ptr, nmean_ptr,
    ninvstd_ptr, nw_ptr, nb_ptr, H, C_cols, C_in_w, n_tiles_m, first_tile, tile_step, my_tiles,
    k_steps, DGRAD: gl.constexpr, MOMENTS: gl.constexpr, ADD_GRAD: gl.constexpr,
    RELU_INPUT: gl.constexpr, GRAD_SUMS: gl.constexpr, IN_HAS_W: gl.constexpr,
    IN_HAS_B: gl.constexpr, IN_ACT: gl.constexpr, BH: gl.constexpr, W: gl.constexpr,
    STAGES: gl.constexpr, LOADER_WARP: gl.constexpr, PERSISTENT: gl.constexpr,
    num_warps: gl.constexpr,
):  # fmt: skip
    """The warpgroup's part of conv3x3_halo_kernel: per tile, its K loop (stage g % STAGES
    waited on ``ready``, three kernel rows' wgmmas) and its epilogue. The stage the previous
    iteration read is free once that iteration's wgmmas retired: released on ``empty`` to
    the loader warp (LOADER_WARP), or refilled here with the load STAGES-1 ahead."""
    BLOCK_M: gl.constexpr = BH * W
    BLOCK_N: gl.constexpr = out_desc.block_type.shape[1]
    dtype: gl.constexpr = out_desc.dtype
    READ_INPUT: gl.constexpr = RELU_INPUT or GRAD_SUMS
    n_iters = 3 * k_steps
    n_loads = my_tiles * n_iters  # the program's loads, over all its tiles
    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0],
        warps_per_cta=mma_warps(BLOCK_M, num_warps),
        instr_shape=[16, mma_n(BLOCK_N, num_warps, BLOCK_M), 16],
    )
    g = 0  # the program's iterations so far, over all its tiles: its stage and phase
    for j in range(my_tiles):
        row0, _, _, col0 = _tile_origin(
            first_tile + j * tile_step, n_tiles_m, H, W, BLOCK_M, BLOCK_N
        )
        # The epilogue's tiles: the dgrad's add / ReLU tiles are copied in now, off the main
        # loop (once every warp has read the last tile's: the barrier).
        if ADD_GRAD or READ_INPUT:
            gl.thread_barrier()
            epi_bytes: gl.constexpr = (ADD_GRAD + READ_INPUT) * out_desc.block_type.nbytes
            mbarrier.expect(epi_bar, epi_bytes)
            if ADD_GRAD:
                tma.async_copy_global_to_shared(add_desc, [row0, col0], epi_bar, add_buf)
            if READ_INPUT:
                tma.async_copy_global_to_shared(in_desc, [row0, col0], epi_bar, in_buf)

        acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=mma_layout)
        for it in range(n_iters):
            slot = g % STAGES
            mbarrier.wait(ready.index(slot), (g // STAGES) & 1)
            a_buf = a_bufs.index(slot)
            acc = _mma_row(a_buf, b0_bufs.index(slot), acc, 0, DGRAD, W, BLOCK_M)
            acc = _mma_row(a_buf, b1_bufs.index(slot), acc, 1, DGRAD, W, BLOCK_M)
            acc = _mma_row(a_buf, b2_bufs.index(slot), acc, 2, DGRAD, W, BLOCK_M)
            # The previous iteration's three wgmmas have retired: its stage is free.
            acc = warpgroup_mma_wait(num_outstanding=3, deps=(acc,))
            if LOADER_WARP:
                if it > 0:  # (a tile's first iteration: released after the last tile's loop)
                    mbarrier.arrive(empty.index((g + STAGES - 1) % STAGES), count=1)
            elif g + STAGES - 1 < n_loads:
                _issue_loads(body_desc, edge_desc, w_desc, a_bufs, b0_bufs, b1_bufs, b2_bufs,
                             ready, g + STAGES - 1, n_iters, k_steps, first_tile, tile_step,
                             n_tiles_m, H, C_in_w, DGRAD, BH, W, STAGES,
                             PERSISTENT)  # fmt: skip
            g += 1
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        if LOADER_WARP:
            mbarrier.arrive(empty.index((g + STAGES - 1) % STAGES), count=1)

        if ADD_GRAD or READ_INPUT:
            mbarrier.wait(epi_bar, j & 1)
            if ADD_GRAD:
                acc += add_buf.load(mma_layout).to(gl.float32)
            if RELU_INPUT:
                acc = gl.where(in_buf.load(mma_layout) > 0, acc, 0.0)
        out = acc.to(dtype)
        # every tile is whole (BLOCK_M rows, BLOCK_N columns): no masks
        cols = col0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma_layout))
        parts = (row0 // BLOCK_M).to(gl.int64) * C_cols + cols
        if GRAD_SUMS:
            sum_g, sum_gx = _grad_sums(out.to(gl.float32), in_buf.load(mma_layout).to(gl.float32),
                                       cols, nmean_ptr, ninvstd_ptr, nw_ptr, nb_ptr, IN_HAS_W,
                                       IN_HAS_B, IN_ACT)  # fmt: skip
            gl.store(part0_ptr + parts, sum_g)
            gl.store(part1_ptr + parts, sum_gx)
        # The last tile's store has read out_buf (and every warp knows it: the barrier).
        tma.store_wait(pendings=0)
        gl.thread_barrier()
        out_buf.store(out)
        fence_async_shared()
        tma.async_copy_shared_to_global(out_desc, [row0, col0], out_buf)
        if MOMENTS:
            # From the stored tile (each thread reads back what it wrote), not the accumulator:
            # moments read from its registers made ptxas serialize every wgmma of the K loop
            # (each waited for the last: 147 -> 244 us at 64 channels 32x32 on an H100).
            y = out_buf.load(mma_layout).to(gl.float32)
            mean = gl.sum(y, axis=0) / BLOCK_M
            dev = y - gl.expand_dims(mean, 0)
            gl.store(part0_ptr + parts, mean)
            gl.store(part1_ptr + parts, gl.sum(dev * dev, axis=0))
    tma.store_wait(pendings=0)


@gluon.jit
def _grad_sums(g, x, cols, mean_ptr, invstd_ptr, w_ptr, b_ptr, HAS_W: gl.constexpr,
               HAS_B: gl.constexpr, ACT: gl.constexpr):  # fmt: skip
    """Per column of a whole tile: sum(g') and sum(g' * xhat), g' = g * act'(z), with xhat =
    (x - mean) * invstd and z = xhat * w + b (norm_fusion.store_grad_sums' arithmetic, in the same
    order). ACT: 0 none, 1 ReLU, 2 ReLU6 (elementwise.ACT_*; torch's kinks: act'(0) = 0)."""
    gl.static_assert(ACT <= 2, "halo grad sums: no activation, ReLU or ReLU6")
    mean = gl.expand_dims(gl.load(mean_ptr + cols), 0)
    invstd = gl.load(invstd_ptr + cols)
    diff = x - mean
    if ACT != 0:
        scale = invstd * gl.load(w_ptr + cols) if HAS_W else invstd
        z = diff * gl.expand_dims(scale, 0)
        if HAS_B:
            z = z + gl.expand_dims(gl.load(b_ptr + cols), 0)
        live = z > 0.0
        if ACT == 2:
            live = live & (z < 6.0)
        g = gl.where(live, g, 0.0)
    xhat = diff * gl.expand_dims(invstd, 0)
    return gl.sum(g, axis=0), gl.sum(g * xhat, axis=0)


@gluon.jit
def rows_view(buf, first: gl.constexpr, W: gl.constexpr, ROWS: gl.constexpr):
    """ROWS rows of ``buf`` from row ``first`` (a multiple of W: on the swizzle pattern), as
    a [ROWS, cols] view (Gluon slices only at multiples of the slice's length).

    Only for rows of at most one swizzle width (128 bytes): a wider NVMMA tile is stored as
    column blocks of 128-byte rows, one after the other, and the re-viewed tile would take
    its second block ROWS rows after its first, where the buffer has it a whole buffer's rows
    later (the 64 x 128 weight-gradient tile that computed wrong gradients on the H100)."""
    gl.static_assert(
        buf.shape[1] * buf.dtype.primitive_bitwidth <= 128 * 8,
        "halo sub-views need rows of at most 128 bytes (64 fp16 channels)",
    )
    return buf.slice(first, W)._reinterpret(buf.dtype, [ROWS, buf.shape[1]], buf.layout)


def _pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def rows_per_tile(h: int, w: int, block_m: int) -> int | None:
    """BH, the output rows of a BLOCK_M tile, or None if the tile can't be whole rows of one
    image with sub-views on the swizzle pattern (W a power of two >= 8, BH dividing H)."""
    if not _pow2(w) or w < 8 or block_m % w:
        return None
    bh = block_m // w
    return bh if bh >= 2 and h % bh == 0 and _pow2(bh) else None


@functools.cache
def _is_hopper() -> bool:
    """The kernel's wgmma is sm_90 only (Blackwell has tcgen05 instead)."""
    if runtime.INTERPRETED or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(runtime.DEVICE) == (9, 0)


def halo_applicable(
    a: torch.Tensor,
    weight: torch.Tensor,
    stride,
    padding,
    dilation,
    groups: int,
    *others: torch.Tensor | None,
) -> bool:
    """Whether the halo kernel can run this forward (``a`` = x) or dgrad (``a`` = dy): asked
    for (ENABLED), an sm_90 GPU, fp16 / bf16 operands in one dtype, dense NHWC and 16-byte
    aligned (``others``: the output and epilogue tensors too), a 3x3 kernel with stride 1,
    ``padding`` (top, bottom, left, right) 1, no dilation or groups, 64k input and output
    channels, and some tile of whole rows."""
    _, _, h, w = a.shape
    return (
        conv_ok(a, weight, weight.shape, stride, padding, dilation, groups, *others)
        and weight.dtype == a.dtype
        and pick_halo_config(h, w) is not None
    )


def grad_sums_supported(bn: PendingNorm | None) -> bool:
    """Whether the halo dgrad can store the backward sums of batch norm ``bn`` (if any): its
    activation is none, ReLU or ReLU6 (``_grad_sums``)."""
    return bn is None or bn.act in (ACT_NONE, ACT_RELU, ACT_RELU6)


def conv_ok(a, b, weight_shape, stride, padding, dilation, groups: int, *others) -> bool:
    """What every halo kernel needs: asked for (ENABLED), an sm_90 GPU, operands ``a`` and
    ``b`` in fp16 / bf16 and TMA-ready (``others`` too, where given), a 3x3 stride-1 conv
    padded by 1 on each side, undilated, ungrouped, with 64k input and output channels."""
    c_out, c_in, kh, kw = (int(v) for v in weight_shape)
    return (
        ENABLED
        and _is_hopper()
        and a.dtype in (torch.float16, torch.bfloat16)
        and b.dtype == a.dtype
        and (kh, kw) == (3, 3)
        and tuple(stride) == (1, 1)
        and tuple(padding) == (1, 1, 1, 1)
        and tuple(dilation) == (1, 1)
        and groups == 1
        and c_in % 64 == 0
        and c_out % 64 == 0
        and all(t is None or _tma_ready(t) for t in (a, b, *others))
    )


# The dgrad's batch-norm sums hold the accumulator and the input tile in fp32 registers at
# once: ptxas (sm_90) spills 1 KiB at 128 x 128 on 4 warps (128 elements a thread), none at
# 128 x 64 (64 a thread: 174 registers).
GRAD_SUMS_MAX_PER_THREAD = 64


def halo_candidates(
    c_cols: int, h: int, w: int, smem_limit: int, epilogue_tiles: int = 3,
    grad_sums: bool = False, loader_warp: bool | None = None,
) -> list[HaloConfig]:  # fmt: skip
    """The HALO_CONFIGS (and, with ``loader_warp``, default LOADER_WARP, the
    HALO_LOADER_WARP_CONFIGS) that fit this conv: whole-row tiles, column tiles dividing
    c_cols, within shared memory with ``epilogue_tiles`` output-sized tiles (and, with
    ``grad_sums``, the dgrad's batch-norm sums in registers)."""
    with_loader = LOADER_WARP if loader_warp is None else loader_warp
    configs = HALO_CONFIGS + (HALO_LOADER_WARP_CONFIGS if with_loader else ())
    return [
        cfg
        for cfg in configs
        if rows_per_tile(h, w, cfg.BLOCK_M)
        and c_cols % cfg.BLOCK_N == 0
        and cfg.smem_bytes(w, epilogue_tiles) <= smem_limit
        and not (
            grad_sums and cfg.BLOCK_M * cfg.BLOCK_N > GRAD_SUMS_MAX_PER_THREAD * 32 * cfg.num_warps
        )
    ]


# The heuristic's tiles, first fitting wins: 128 pixels x 64 channels in K steps of 32 on 4
# stages; 64 pixels where 128 can't be whole rows (8 x 8 outputs); 256 on 2 stages where rows
# are 128 wide (its 512-row halo buffers: 184 KiB with the dgrad's epilogue tiles).
HALO_HEURISTIC = (HaloConfig(128, 64, 32, 4, 4), HaloConfig(64, 64, 32, 4, 4),
                  HaloConfig(256, 64, 32, 8, 2))  # fmt: skip


# The dgrad's: 64 x 64 tiles, K steps of 32 on 4 stages. On an H100 (2026-12-07) the best
# dgrad tile of ResNet-18's 64- and 128-channel layers: 130 / 108 us against 137 / 116 at the
# forward's 128 x 64.
HALO_DGRAD_HEURISTIC = (HaloConfig(64, 64, 32, 4, 4), *HALO_HEURISTIC)


def pick_halo_config(h: int, w: int, dgrad: bool = False) -> HaloConfig | None:
    """The heuristic tile of an h x w output (64 channels wide: they are multiples of 64);
    with LOADER_WARP its loader-warp version where that is one of the candidates."""
    tiles = HALO_DGRAD_HEURISTIC if dgrad else HALO_HEURISTIC
    cfg = next((cfg for cfg in tiles if rows_per_tile(h, w, cfg.BLOCK_M)), None)
    return with_loader_warp(cfg, HALO_LOADER_WARP_CONFIGS)


def with_loader_warp(
    cfg: HaloConfig | None, loader_tiles, enabled: bool | None = None
) -> HaloConfig | None:
    """``cfg`` with a loader warp if ``enabled`` (default LOADER_WARP) and ``loader_tiles``
    has it."""
    split = cfg and dataclasses.replace(cfg, loader_warp=True)
    on = LOADER_WARP if enabled is None else enabled
    return split if on and split in loader_tiles else cfg


def persistent_programs(per_sm: int, n_tiles: int, smem: int, sm_shared: int) -> int:
    """Programs of a persistent launch: per_sm per SM, but never more than fit on an SM at
    once (``smem`` bytes each, plus the 1 KiB the driver reserves, of ``sm_shared``): a
    program left waiting would run its tiles after all the others."""
    fit = max(1, sm_shared // (smem + 1024))
    return min(n_tiles, min(per_sm, fit) * runtime.sm_count())


def launch_options(cfg: HaloConfig, smem: int, sm_shared: int) -> dict[str, int]:
    """Compiler options of a halo kernel's launch: a loader-warp tile of which two programs
    fit an SM's ``sm_shared`` bytes (``smem`` each) keeps to LOADER_WARP_MAXNREG registers
    (the weight gradient's three 64 x 64 accumulators too: ptxas, no spills)."""
    if cfg.loader_warp and sm_shared // (smem + 1024) >= 2:
        return {"maxnreg": LOADER_WARP_MAXNREG}
    return {}


# Shared memory of an H100 / H200 SM: where the device doesn't say, and for code compiled
# without one (benchmarks/ptx_report.py).
H100_SM_SHARED_BYTES = 228 * 1024


@functools.cache
def sm_shared_bytes() -> int:
    """Shared memory of one SM (228 KiB on an H100; each resident program also takes 1 KiB
    the driver reserves)."""
    props = torch.cuda.get_device_properties(runtime.DEVICE)
    return getattr(props, "shared_memory_per_multiprocessor", 0) or H100_SM_SHARED_BYTES


def gl_dtype(t: torch.Tensor):
    """Gluon's dtype of an fp16 / bf16 tensor (the descriptors' shared layouts need it)."""
    return gl.float16 if t.dtype == torch.float16 else gl.bfloat16


def _matrix(t: torch.Tensor, m: int, c: int, box: list[int]) -> TensorDescriptor:
    """A dense NHWC tensor as an [M, C] matrix descriptor with ``box`` tiles."""
    layout = gl.NVMMASharedLayout.get_default_for(box, gl_dtype(t))
    return TensorDescriptor(t, [m, c], [c, 1], box, layout)


def launch_halo(
    a: torch.Tensor,
    weight: torch.Tensor,
    out: torch.Tensor,
    cfg: HaloConfig,
    dgrad: bool,
    moments: bool = False,
    add: torch.Tensor | None = None,
    relu_out: torch.Tensor | None = None,
    bn: PendingNorm | None = None,
    bn_input: torch.Tensor | None = None,
) -> TileMoments | GradSums | None:
    """One ``conv3x3_halo_kernel`` launch into dense NHWC ``out``; the caller checked
    ``halo_applicable``. Returns the output's per-tile moments with ``moments``, or with
    ``bn`` (dgrad: out is the gradient of that batch norm's output, ``bn_input`` its input)
    the batch norm's backward sums per row tile."""
    n, c_red, h, w = a.shape
    c_out, c_in_w, _, _ = weight.shape
    c_cols = out.shape[1]
    bh = rows_per_tile(h, w, cfg.BLOCK_M)
    if bh is None or c_red % cfg.BLOCK_K or c_cols % cfg.BLOCK_N:
        raise ValueError(f"conv2d halo tile {cfg} doesn't fit a {h}x{w}, {c_red}->{c_cols} conv")
    dtype = gl_dtype(a)
    strides = [h * w * c_red, w * c_red, c_red, 1]

    def box(rows: int) -> TensorDescriptor:
        shape = [1, rows, w, cfg.BLOCK_K]
        layout = gl.NVMMASharedLayout.get_default_for(shape, dtype)
        return TensorDescriptor(a, [n, h, w, c_red], strides, shape, layout)

    k = 9 * c_in_w
    w_box = [cfg.BLOCK_K, cfg.BLOCK_N] if dgrad else [cfg.BLOCK_N, cfg.BLOCK_K]
    w_layout = gl.NVMMASharedLayout.get_default_for(w_box, dtype)
    w_desc = TensorDescriptor(weight, [c_out, k], [k, 1], w_box, w_layout)
    m = n * h * w
    tile = [cfg.BLOCK_M, cfg.BLOCK_N]
    out_desc = _matrix(out, m, c_cols, tile)
    n_tiles_m = m // cfg.BLOCK_M
    result = None
    if moments:
        result = tile_moments(m, c_cols, cfg.BLOCK_M)
    elif bn is not None:
        result = grad_sums(n_tiles_m, c_cols)
    parts = result.partials if result is not None else (out, out)
    read_input = relu_out if bn is None else bn_input
    norm_ptrs, _, norm_flags = pending_norm_args(bn, c_cols, out, "conv2d halo dgrad:")
    n_tiles = n_tiles_m * (c_cols // cfg.BLOCK_N)
    programs = n_tiles
    smem = cfg.smem_bytes(w, 1 + (add is not None) + (read_input is not None))
    if cfg.per_sm:
        programs = persistent_programs(cfg.per_sm, n_tiles, smem, sm_shared_bytes())
    options = launch_options(cfg, smem, sm_shared_bytes())
    conv3x3_halo_kernel[(programs,)](
        box(bh), box(2), w_desc, out_desc,
        out_desc if add is None else _matrix(add, m, c_cols, tile),
        out_desc if read_input is None else _matrix(read_input, m, c_cols, tile),
        parts[0], parts[1], *norm_ptrs, h, c_cols, c_in_w, n_tiles_m, n_tiles, c_red,
        DGRAD=dgrad, MOMENTS=moments, ADD_GRAD=add is not None,
        RELU_INPUT=relu_out is not None, GRAD_SUMS=bn is not None,
        IN_HAS_W=norm_flags.get("IN_HAS_W", False), IN_HAS_B=norm_flags.get("IN_HAS_B", False),
        IN_ACT=norm_flags.get("IN_ACT", 0), BH=bh, W=w, STAGES=cfg.num_stages,
        LOADER_WARP=cfg.loader_warp, PERSISTENT=cfg.per_sm > 0, num_warps=cfg.num_warps,
        launch_pdl=LAUNCH_PDL, **options,
    )  # fmt: skip
    return result
