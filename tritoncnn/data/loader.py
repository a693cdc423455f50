"""GPU-resident batches: the uint8 dataset is copied to the device once; each epoch's order
is a seeded permutation made by a kernel; each step one kernel gathers, augments and
normalises a batch into a static input buffer (the same storage every step, ready for a
CUDA graph). The host only launches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tritoncnn import runtime
from tritoncnn.kernels import augment as K
from tritoncnn.kernels.distributed import shard_permutation
from tritoncnn.kernels.pdl import LAUNCH_PDL


@dataclass(frozen=True)
class Augmentation:
    """What the gather applies to training batches (all off by default).

    crop_padding: pad then random-crop back to size (torchvision RandomCrop(size, padding));
    padding_mode: 'zeros' or 'reflect'; hflip: probability of a horizontal flip;
    rotation: max degrees of a random rotation (nearest neighbour, zero fill);
    brightness/contrast/saturation: ColorJitter strengths (factor uniform in [1-a, 1+a]);
    cutout: side of a square zeroed (in normalised space) at a random centre.
    """

    crop_padding: int = 0
    padding_mode: str = "zeros"
    hflip: float = 0.0
    rotation: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    cutout: int = 0

    @property
    def enabled(self) -> bool:
        return any((self.crop_padding, self.hflip, self.rotation, self.color, self.cutout))

    @property
    def color(self) -> bool:
        return bool(self.brightness or self.contrast or self.saturation)

    def __post_init__(self):
        if self.padding_mode not in ("zeros", "reflect"):
            raise ValueError(
                f"padding_mode must be 'zeros' or 'reflect', not {self.padding_mode!r}"
            )
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"hflip is a probability in [0, 1], got {self.hflip}")
        for name in ("crop_padding", "rotation", "brightness", "contrast", "saturation", "cutout"):
            if getattr(self, name) < 0:
                raise ValueError(f"augmentation {name} must be >= 0")


class GPULoader:
    """Iterate ``(inputs, labels)`` batches of a dataset held on the device.

    images: uint8 N,H,W,C (numpy or torch); labels: int64 N. Batches are N,C,H,W with NHWC
    memory in ``dtype``, normalised by per-channel ``mean``/``std`` (in [0,1] pixel units).
    ``drop_last`` drops the final partial batch; otherwise it is yielded as a shorter view.
    Every yielded batch is a view of one static buffer: consume it before the next step.

    Data parallel (``world_size`` > 1): every rank draws the same epoch permutation; global
    step s takes its ``world_size * batch_size`` consecutive entries and rank ``rank`` gathers
    the r-th ``batch_size`` chunk, so the ranks' shards are disjoint and together cover the
    epoch. ``len()`` counts global steps. Without ``drop_last`` a rank whose share of the last
    global batch is short gets a shorter view, and one with no share skips it (fine for
    evaluation; a training step needs every rank, so train with ``drop_last=True``).
    """

    def __init__(
        self,
        images,
        labels,
        batch_size: int,
        mean,
        std,
        shuffle: bool = True,
        drop_last: bool = False,
        augmentation: Augmentation | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        images = torch.as_tensor(np.asarray(images))
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 N,H,W,C, got {images.dtype} {tuple(images.shape)}"
            )
        self.n, self.h, self.w, self.c = images.shape
        if len(mean) != self.c or len(std) != self.c:
            raise ValueError(f"mean/std need {self.c} values (one per channel)")
        dev = runtime.DEVICE
        self.images = images.contiguous().to(dev)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(dev)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=dev)
        self.std = torch.tensor(std, dtype=torch.float32, device=dev)
        self.rank, self.world_size = rank, world_size
        if not drop_last and world_size == 1:
            batch_size = min(batch_size, self.n)
        self.batch_size = batch_size
        self.shuffle, self.drop_last, self.dtype, self.seed = shuffle, drop_last, dtype, seed
        self.aug = augmentation or Augmentation()
        self.epoch = 0
        # static storage reused by every step (the persistent arena a CUDA graph needs)
        b = self.batch_size
        self.inputs = runtime.empty_nhwc(b, self.c, self.h, self.w, dtype)
        self.targets = torch.empty(b, dtype=torch.int64, device=dev)
        self.params = torch.empty((b, K.N_PARAMS), dtype=torch.float32, device=dev)
        self.step = torch.zeros(1, dtype=torch.int64, device=dev)
        # the epoch's augmentation seed, on the device so a captured gather follows epochs
        self.draw_seed = torch.full((1,), self._draw_seed(0), dtype=torch.int64, device=dev)
        # padded by one batch so the last partial batch's gather stays in bounds
        self.perm = torch.arange(self.n + b, dtype=torch.int32, device=dev) % self.n
        # data parallel: this rank's positions laid out contiguously, rebuilt each epoch
        self.rank_perm = self.perm
        if world_size > 1:
            steps = max(1, self._global_steps())
            self.rank_perm = torch.empty(steps * b, dtype=torch.int32, device=dev)
            shard_permutation(self.perm, self.rank_perm, self.n, b, rank, world_size)

    def __len__(self) -> int:
        return self._global_steps()

    def _global_steps(self) -> int:
        g = self.batch_size * self.world_size  # samples per global step
        return self.n // g if self.drop_last else math.ceil(self.n / g)

    def _rows(self, step: int) -> int:
        """How many of this rank's ``batch_size`` rows at global ``step`` are real samples."""
        start = step * self.batch_size * self.world_size + self.rank * self.batch_size
        return max(0, min(self.batch_size, self.n - start))

    def set_epoch(self, epoch: int) -> None:
        """Choose the permutation of ``epoch`` (reproducible from seed and epoch)."""
        self.epoch = epoch
        if self.shuffle:
            key = (self.seed * 1_000_003 + epoch * 7919 + 1) & 0x7FFFFFFF
            K.epoch_permutation_kernel[K.launch_grid(self.n, 1024)](
                self.perm, self.n, key, HALF_BITS=K.permutation_bits(self.n), BLOCK=1024,
                launch_pdl=LAUNCH_PDL,
            )  # fmt: skip
            if self.world_size > 1:
                shard_permutation(
                    self.perm, self.rank_perm, self.n, self.batch_size, self.rank, self.world_size
                )
        K.set_position_kernel[(1,)](
            self.step, self.draw_seed, 0, self._draw_seed(epoch), launch_pdl=LAUNCH_PDL
        )

    def seek(self, step: int) -> None:
        """Continue the current epoch at batch ``step`` (a resume inside an epoch); call after
        ``set_epoch``. The batches that follow are those an uninterrupted epoch gathers."""
        if not 0 <= step <= len(self):
            raise ValueError(f"step must be in [0, {len(self)}], got {step}")
        K.set_position_kernel[(1,)](
            self.step, self.draw_seed, step, self._draw_seed(self.epoch), launch_pdl=LAUNCH_PDL
        )

    def _draw_seed(self, epoch: int) -> int:
        """Philox seed of ``epoch``'s augmentation draws; ranks draw from their own streams
        (rank 0's is the single-process one)."""
        return self.seed + 7 * epoch + 1_000_003 * self.rank

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather the batch at the device step counter into the static buffers, then advance.

        Always writes a full ``batch_size`` batch (the tail wraps into the padded permutation);
        the iterator trims the last partial batch with a view.
        """
        b, a = self.batch_size, self.aug
        if a.enabled:  # the seed is read on the device (set_epoch writes it)
            K.augment_params_kernel[K.launch_grid(b, 128)](
                self.params,
                self.step,
                self.draw_seed,
                b,
                a.crop_padding,
                math.radians(a.rotation),
                a.brightness,
                a.contrast,
                a.saturation,
                a.hflip,
                a.cutout,
                self.h,
                self.w,
                BLOCK=128,
                launch_pdl=LAUNCH_PDL,
            )
        block_p, block_s = self._gather_blocks()
        K.gather_augment_kernel[K.launch_grid(b, block_s)](
            self.images,
            self.labels,
            self.rank_perm,
            self.params,
            self.mean,
            self.std,
            self.step,
            self.inputs,
            self.targets,
            b,
            self.h,
            self.w,
            self.c,
            a.crop_padding,
            a.cutout,
            *self.inputs.stride(),
            AUGMENT=a.enabled,
            REFLECT=a.padding_mode == "reflect",
            COLOR=a.color,
            BLOCK_S=block_s,
            BLOCK_P=block_p,
            BLOCK_C=_pow2(self.c),
            launch_pdl=LAUNCH_PDL,
        )
        K.advance_step_kernel[(1,)](self.step, 0, launch_pdl=LAUNCH_PDL)
        return self.inputs, self.targets

    def _gather_blocks(self) -> tuple[int, int]:
        """(pixels, samples) per program: ~1-4K rows on the GPU; in the interpreter, where
        each program costs Python time, the whole batch in as few programs as possible."""
        block_p = min(1024, _pow2(self.h * self.w))
        rows = 1 << 16 if runtime.INTERPRETED else 2048
        block_s = max(1, min(_pow2(self.batch_size), rows // block_p))
        return block_p, block_s

    def __iter__(self):
        self.set_epoch(self.epoch)
        for i in range(len(self)):
            x, y = self.next_batch()
            n = self._rows(i)
            if n == 0:  # data parallel: no share of the last global batch
                continue
            yield (x[:n], y[:n]) if n < self.batch_size else (x, y)
        self.epoch += 1


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
