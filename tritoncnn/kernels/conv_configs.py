"""Tile configurations of the implicit-GEMM convolutions (kernels/conv.py) and the heuristics
that pick them without timing: the CONFIGS the autotuner chooses among, ``pick_config``'s tile
for a GEMM shape, ``gemm_candidates`` (the CONFIGS worth timing for one), and the split-K
choices of the weight and bias gradients (how many K splits, how many partial rows the
reduction takes a step).

Each rule says where it came from: the measurement (benchmarks/README.md has the runs) or,
where no GPU has timed it yet, the reasoning.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton

from tritoncnn import runtime


@dataclass(frozen=True)
class ConvConfig:
    """One tile shape: the GEMM tile BLOCK_M x BLOCK_N, its K step, and launch parameters."""

    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    num_warps: int
    num_stages: int

    def smem_bytes(self, a_bytes: int, b_bytes: int) -> int:
        """Shared memory of the pipelined operand tiles (A: BLOCK_M x BLOCK_K elements of
        a_bytes, B: BLOCK_K x BLOCK_N of b_bytes), one copy per stage."""
        per_stage = self.BLOCK_M * self.BLOCK_K * a_bytes + self.BLOCK_K * self.BLOCK_N * b_bytes
        return self.num_stages * per_stage


# Every configuration the launch helpers can choose (the GPU tier runs each one). The first
# eight and the square 64 x 64 tiles are the heuristic's (pick_config); the rest only the
# autotuner picks. 8-warp tiles are for 1x1 GEMMs (IS_1X1) only: non-1x1 conv tiles with 8
# warps have been miscompiled by Triton (pytorch #173068), so ``gemm_candidates`` never offers
# them to a tap-looping kernel.
CONFIGS: tuple[ConvConfig, ...] = (
    ConvConfig(128, 128, 32, 4, 3),
    ConvConfig(128, 128, 64, 4, 3),
    ConvConfig(128, 64, 32, 4, 3),
    ConvConfig(128, 64, 64, 4, 3),
    ConvConfig(64, 128, 32, 4, 3),
    ConvConfig(64, 128, 64, 4, 3),
    ConvConfig(64, 32, 32, 4, 3),
    ConvConfig(64, 32, 64, 4, 3),
    # deeper pipelines, square 64 tiles, tall narrow and short wide tiles
    ConvConfig(128, 128, 64, 4, 4),
    ConvConfig(128, 64, 64, 4, 4),
    ConvConfig(64, 128, 64, 4, 4),
    ConvConfig(64, 64, 64, 4, 3),
    ConvConfig(64, 64, 64, 4, 4),
    ConvConfig(64, 64, 32, 4, 4),
    ConvConfig(128, 32, 64, 4, 4),
    ConvConfig(64, 256, 64, 4, 3),
    # 8 warps: 1x1 GEMMs only
    ConvConfig(128, 128, 64, 8, 3),
    ConvConfig(128, 128, 64, 8, 4),
    ConvConfig(128, 256, 64, 8, 3),
    ConvConfig(256, 128, 64, 8, 3),
    ConvConfig(256, 64, 64, 8, 3),
)

# Operand tiles of all stages must fit in shared memory with room for the epilogue: a share of
# the per-block opt-in maximum (227 KiB on an H100, 163 KiB on an A100).
SMEM_SHARE = 0.78


def pick_config(
    m: int,
    n: int,
    k: int,
    dtype: torch.dtype,
    split_k: bool = False,
    is_1x1: bool = False,
    dgrad: bool = False,
) -> ConvConfig:
    """A tile for an M x N x K GEMM: BLOCK_N follows N (the channel count, least padding),
    BLOCK_M shrinks when there are too few row tiles to fill the GPU (unless ``split_k``: the
    wgrad's K splits fill it), BLOCK_K doubles for a long 16-bit K. ``is_1x1``: a 1x1
    stride-1 conv's forward, weight gradient (``split_k``) or input gradient (``dgrad``),
    whose short-K and few-row GEMMs (MobileNetV2's) have tiles of their own (``_pick_1x1``)."""
    if runtime.INTERPRETED:  # few, large tiles: see runtime.interpreter_block
        ib = runtime.interpreter_block
        bm, bn = ib(m, 2048), ib(n, 128)
        # keep each operand tile within 2**18 elements (Triton caps a block at 2**20)
        return ConvConfig(bm, bn, ib(k, min(1024, 2**18 // max(bm, bn))), 4, 1)
    bn = 32 if n <= 32 else 64 if n <= 64 else 128
    # 128-wide tiles pad N to a multiple of 128; where 64-wide ones pad less (MobileNetV2's
    # 144, 192, 576, 960 channels: N = 144 computes 256 columns, not 192), the forward and the
    # dgrad take 64. H200, fp16, b512, 1x1 at 32x32 (results/conv_tiles_NVIDIA_H200.csv):
    # 24 -> 144 fwd 111.6 us with 128x64 vs 126.9 with 128x128; the dgrad into 144 channels
    # 85.8 vs 117.7. (The split-K wgrad keeps 128: no measurement says otherwise.)
    if bn == 128 and not split_k and triton.cdiv(n, 64) * 64 < triton.cdiv(n, 128) * 128:
        bn = 64
    # 128-row tiles would leave some of an H100's 132 SMs idle. Not so for a split K: on an
    # H200 the 128 x 128 tile ran ResNet-18's 3x3 wgrads of 128-512 channels 1.7x faster than
    # 64 x 128 at batch 512 (benchmarks/results/conv_tiles_NVIDIA_H200.csv)
    few_rows = m <= 64 * 132 and not split_k
    # (a GEMM of at most 64 rows, e.g. the weight gradient of a 64-channel layer, takes 64:
    # a 128-row tile would multiply 64 rows of masked zeros)
    bm = 64 if bn == 32 or m <= 64 or (bn == 128 and few_rows) else 128
    # BLOCK_K 64 only for the long reductions of wgrad (K = pixels): on an H200 at batch 512
    # the autotuner chose 32 for every 3x3 forward of ResNet-18 and the seed net (K <= 4608)
    # and for most dgrads, and 64 for every 3x3 wgrad
    bk = 64 if dtype != torch.float32 and k >= 8192 else 32
    if is_1x1 and dtype != torch.float32:
        bm, bn, bk, stages = _pick_1x1(bm, bn, bk, k, split_k, dgrad)
        return _listed(bm, bn, bk, stages)
    return _listed(bm, bn, bk)


def _pick_1x1(
    bm: int, bn: int, bk: int, k: int, split_k: bool, dgrad: bool = False
) -> tuple[int, int, int, int | None]:
    """pick_config's tile for a 16-bit 1x1 conv's GEMM: (BLOCK_M, BLOCK_N, BLOCK_K, stages;
    None: the general rule's). From every tile of MobileNetV2's 1x1 shapes, b512, graphed on
    an H100 (benchmarks/README.md: 32x32 and 16x16 on 2026-12-07 night, 8x8 and 4x4 on
    12-08; us, general rule -> this one):
    - a weight gradient of at most 64 output channels (its M) over more than 64 input
      channels (measured: 96-192) takes 64 x 64 x 64 on 4 stages, not 64 x 128 x 64 (128
      columns pad 144 / 192 to 256): 144->24 122.3 -> 103.3, 96->24 116.5 -> 66.4, 192->32
      36.5 -> 32.3, 144->32 35.3 -> 31.0;
    - a forward into at most 32 channels over 64+ input channels takes 64-deep K steps:
      144->24 96.0 -> 71.2, 96->24 53.9 -> 48.4, 192->32 27.1 -> 22.1, 144->32 25.4 -> 20.7.
      (Not the dgrads of the same GEMM shape: the 24-channel input gradient of 24->144 lost,
      92.2 -> 100.1);
    - a forward or dgrad reducing 192+ channels (K) takes 64-deep K steps at any width: 8x8
      and 4x4 forwards 576->96 19.9 -> 16.1, 960->320 18.8 -> 15.5, 960->160 13.0 -> 11.7,
      384->64 8.7 -> 7.6, 576->160 9.0 -> 8.3, 384->96 11.0 -> 10.4, 320->1280 25.0 ->
      24.4, 192->64 6.0 -> 5.8; the dgrads (K = output channels) 320->1280 22.5 -> 20.8,
      96->576 20.3 -> 18.1, 160->960 13.1 -> 11.7, 64->384 8.2 -> 7.6, 960->320 19.2 ->
      19.1, 32->192 (16x16) 23.8 -> 22.3. At K = 160 they lost (576->160 dgrad 9.3 ->
      10.3, 160->960 forward 13.6 -> 15.3)."""
    if split_k:
        if bm == 64 and bn == 128:
            return 64, 64, 64, 4
        return bm, bn, bk, None
    if k >= 192 or (bn == 32 and k >= 64 and not dgrad):
        return bm, bn, 64, 3
    return bm, bn, bk, None


def _listed(bm: int, bn: int, bk: int, stages: int | None = None) -> ConvConfig:
    """The first 4-warp CONFIGS entry of that tile (on ``stages``, when given)."""
    for cfg in CONFIGS:
        if (cfg.BLOCK_M, cfg.BLOCK_N, cfg.BLOCK_K, cfg.num_warps) == (bm, bn, bk, 4) and (
            stages is None or cfg.num_stages == stages
        ):
            return cfg
    raise AssertionError(f"pick_config chose a tile {bm}x{bn}x{bk} missing from CONFIGS")


def _pow2_at_least(v: int, floor: int) -> int:
    return max(floor, triton.next_power_of_2(max(int(v), 1)))


def gemm_candidates(
    m: int,
    n: int,
    k: int,
    a_bytes: int,
    b_bytes: int,
    is_1x1: bool,
    smem_limit: int | None = None,
) -> list[ConvConfig]:
    """The CONFIGS worth timing for an M x N x K GEMM whose A/B operand elements take
    a_bytes/b_bytes: tiles no larger than the problem (rounded up to a power of two), column
    tiles not far narrower than N, operand tiles that fit in shared memory, and 8 warps only
    for 1x1 GEMMs. ``smem_limit`` defaults to the device's (tests pass one)."""
    if smem_limit is None:
        smem_limit = operand_smem_limit()
    max_m, max_n, max_k = _pow2_at_least(m, 64), _pow2_at_least(n, 32), _pow2_at_least(k, 32)
    min_n = 64 if n > 64 else 32
    out = []
    for cfg in CONFIGS:
        if cfg.num_warps == 8 and not is_1x1:
            continue
        if cfg.BLOCK_M > max_m or not min_n <= cfg.BLOCK_N <= max_n or cfg.BLOCK_K > max_k:
            continue
        if cfg.smem_bytes(a_bytes, b_bytes) > smem_limit:
            continue
        out.append(cfg)
    return out


@functools.cache
def smem_optin() -> int:
    """The per-block opt-in shared memory (unbounded in the interpreter). The halo kernels'
    tiles count every byte they use (HaloConfig.smem_bytes), so they may take all of it."""
    if runtime.INTERPRETED:
        return 1 << 30
    props = torch.cuda.get_device_properties(runtime.DEVICE)
    return getattr(props, "shared_memory_per_block_optin", 0) or 227 * 1024


def operand_smem_limit() -> int:
    """Shared memory a tile's pipelined operands may take: SMEM_SHARE of the opt-in maximum."""
    return int(SMEM_SHARE * smem_optin())


@dataclass(frozen=True)
class SplitChoice:
    """The number of K (pixel) splits of a two-stage, deterministic reduction."""

    split: int


@dataclass(frozen=True)
class BiasGradConfig:
    """Tile of ``bias_grad_kernel``: BLOCK_P pixels x BLOCK_C channels per loop step."""

    BLOCK_P: int
    BLOCK_C: int


# Every bias-gradient tile the launch helper can choose (the GPU tier runs each one).
BIAS_CONFIGS: tuple[BiasGradConfig, ...] = (
    BiasGradConfig(64, 64),
    BiasGradConfig(128, 64),
    BiasGradConfig(32, 128),
    BiasGradConfig(128, 32),
)


def split_candidates(base: int, max_split: int) -> list[SplitChoice]:
    """Split factors around a heuristic ``base``: base/2 .. 8*base (powers of two apart),
    at most ``max_split`` and at least 1."""
    out = []
    for f in (0.5, 1, 2, 4, 8):
        s = max(1, min(max_split, int(base * f)))
        if SplitChoice(s) not in out:
            out.append(SplitChoice(s))
    return out


def _pick_split(
    tiles: int,
    pixels: int,
    block: int,
    min_pixels: int = 1024,
    per_sm: int = 2,
    most: int = 64,
) -> int:
    """Splits of the K (pixel) axis so that ~per_sm programs per SM run, each reducing
    >= min_pixels, at most ``most`` of them (the conv weight gradient passes _max_split: on
    an H100 (2026-12-08, device_1x1_tiles.sh) MobileNetV2's 32x32 1x1 weight gradients, GEMMs
    of 1-3 tiles, ran 1.2-2.8x faster at 128-512 splits than at the former cap of 64, e.g.
    32 -> 16 91.8 us at 64, 34.0 at 256, 32.8 at 512; cuDNN 25.7)."""
    want = triton.cdiv(per_sm * runtime.sm_count(), max(tiles, 1))
    return max(1, min(want, pixels // max(min_pixels, block), most))


# Most K splits of a weight gradient, the heuristic's and the autotuner's (_max_split; read
# at every launch: benchmarks/train_step.py --wgrad-max-splits sets it for a row). 64 until
# 2026-12-08: the H100 sweep in _pick_split's docstring.
MAX_SPLITS = 512

# Split-K partial sums of one call stay under this many fp32 elements (64 MiB): the ordered
# second pass reads them all, and the caching allocator keeps the largest buffer it ever gave.
MAX_PARTIAL_ELEMENTS = 1 << 24


def _max_split(pixels: int, block: int, numel: int) -> int:
    """Most splits worth timing: each split reduces >= 4 K blocks, at most MAX_SPLITS
    partial sums, and the partial buffer (split x numel outputs) within MAX_PARTIAL_ELEMENTS."""
    most = min(MAX_SPLITS, pixels // (4 * block), MAX_PARTIAL_ELEMENTS // max(numel, 1))
    return max(1, most)


def reduce_rows(n_split: int, numel: int) -> int:
    """Partial rows splitk_reduce_kernel loads per step (SPLIT_BLOCK) for ``n_split`` partials
    of ``numel`` outputs: 8 (of 256 elements: a 2048-element tile, 16 fp32 a thread) while
    that gives every SM a program; for a smaller output (MobileNetV2's 1x1 weight gradients:
    384-3456 elements, 2-14 programs at 8 rows) up to 64 rows of 32, so its few programs walk
    the splits in fewer dependent steps and more of them run."""
    most = triton.next_power_of_2(n_split)
    rows = min(8, most)
    while rows < min(64, most) and triton.cdiv(numel, 2048 // rows) < runtime.sm_count():
        rows *= 2
    return rows
