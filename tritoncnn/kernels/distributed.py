"""Kernels of data-parallel training: each rank's slice of an epoch permutation.

The gather kernel reads ``perm[step * batch + j]``; with several ranks, global step ``s``
covers permutation positions ``[s * world * batch, (s + 1) * world * batch)`` and rank ``r``
takes the r-th ``batch``-long chunk of it. Rather than teach the gather about ranks, one launch
per epoch lays that rank's positions out contiguously, so the gather (and a captured CUDA
graph) stays as it is.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritoncnn.kernels.pdl import LAUNCH_PDL, wait_for_inputs

BLOCK = 1024


@triton.jit
def shard_permutation_kernel(
    perm_ptr, out_ptr, n_out, n, batch, world_batch, rank_offset, BLOCK: tl.constexpr
):
    """out[i] = perm[(i // batch) * world_batch + rank_offset + i % batch] for i < n_out.

    perm: int32 [>= n], the epoch's global order. out: int32 [n_out], this rank's order.
    Positions past the end of the epoch (>= n) read sample 0: the gather writes a full batch
    every step and the loader trims those rows away. One program writes BLOCK entries.
    """
    wait_for_inputs()
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n_out
    pos = (i // batch) * world_batch + rank_offset + i % batch
    src = tl.load(perm_ptr + pos, mask=mask & (pos < n), other=0)
    tl.store(out_ptr + i, src, mask=mask)


def shard_permutation(
    perm: torch.Tensor, out: torch.Tensor, n: int, batch: int, rank: int, world_size: int
) -> torch.Tensor:
    """Write rank ``rank``'s slice of the global order ``perm`` (n entries) into ``out``."""
    n_out = out.numel()
    shard_permutation_kernel[(triton.cdiv(n_out, BLOCK),)](
        perm, out, n_out, n, batch, world_size * batch, rank * batch,
        BLOCK=BLOCK, launch_pdl=LAUNCH_PDL,
    )  # fmt: skip
    return out
