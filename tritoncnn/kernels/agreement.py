"""How far one tensor is from another, on the device: the autotuner's result check.

Layout: both tensors are flat dense buffers of one shape and one layout (contiguous or
channels_last, as ``elementwise`` requires). One program reduces ``BLOCK`` consecutive elements
to max |a - b| and max |b| in fp32 (NaN counted as inf, so a NaN never passes as small) and
folds both into a [2] fp32 result with an atomic max: the order in which programs arrive can't
change a maximum, so the result is deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritoncnn import runtime
from tritoncnn.kernels.elementwise import BLOCK, _check_dense, fill_
from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs


@triton.jit
def max_abs_kernel(a_ptr, b_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    """out[0] = max(out[0], max |a - b|), out[1] = max(out[1], max |b|) over this program's
    BLOCK elements, read in their own dtypes and compared in fp32. out: fp32 [2], >= 0."""
    wait_for_inputs()
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    diff = tl.abs(a - b)
    diff = tl.where(diff == diff, diff, float("inf"))  # NaN -> inf
    mag = tl.abs(b)
    mag = tl.where(mag == mag, mag, float("inf"))
    tl.atomic_max(out_ptr, tl.max(diff, axis=0))
    tl.atomic_max(out_ptr + 1, tl.max(mag, axis=0))


def max_abs(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a - b|, max |b|) of two same-shape, same-layout dense tensors, inf where a NaN
    is involved. Reads the two numbers back to the host (a sync): for set-up code such as the
    autotuner, never the training step."""
    if a.shape != b.shape:
        raise ValueError(f"max_abs: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    _check_dense(a, b)
    out = fill_(runtime.empty((2,)), 0.0)
    if a.numel():
        max_abs_kernel[(triton.cdiv(a.numel(), BLOCK),)](
            a, b, out, a.numel(), BLOCK=BLOCK, launch_pdl=LAUNCH_PDL
        )
    err, scale = out.tolist()
    return err, scale
