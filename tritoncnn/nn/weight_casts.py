"""One launch that refreshes the 16-bit weight copies of every conv of a model.

With 16-bit activations each GEMM conv reads a copy of its fp32 master weight in the
activation dtype (``Conv2d.weight_copy``), rounded at each forward by a small cast kernel of
its own: 35 launches a step for MobileNetV2 (56 us of kernels on an H100, 2026-12-08, each a
fixed cost more than bytes). ``WeightCasts.refreshed`` rounds all of them in one
multi-tensor launch (``kernels.optim.cast_tensors``) before the forward and lets the convs
skip theirs while the forward runs:

    casts = WeightCasts(model)
    with casts.refreshed(x.dtype):
        logits = model(x)

The copies hold exactly what the per-conv casts would have stored. Outside the ``with`` (a
sub-module run alone, a forward after an in-place edit of a weight) each conv casts its own
weight as before, so a copy can't be stale: the launch runs right before the forward, which
edits no weight, and the convs trust it only until the forward returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from tritoncnn.kernels import optim as K
from tritoncnn.nn.conv import Conv2d
from tritoncnn.nn.module import Module


class WeightCasts:
    """The 16-bit weight copies of ``model``'s convs, refreshed in one launch. The launch's
    tables are built on first use and again only when a weight or its copy is re-allocated
    (not while a CUDA graph is being captured: run one step first, as the trainer does)."""

    def __init__(self, model: Module) -> None:
        self.convs = [m for m in model.modules() if isinstance(m, Conv2d)]
        self._key: tuple | None = None
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def _get_tables(self, copies: list[tuple[Conv2d, torch.Tensor]]):
        key = tuple((c.weight.data.data_ptr(), cast.data_ptr()) for c, cast in copies)
        if key == self._key:
            return self._tables
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "WeightCasts: a weight or its 16-bit copy was re-allocated during CUDA-graph "
                "capture; run one step before capturing"
            )
        chunk_elems = K.BLOCK * K.ITERS
        rows, chunks = [], []
        for conv, cast in copies:
            w = conv.weight.data
            row = [0] * K.TABLE_COLS
            row[K.DATA], row[K.COPY], row[K.NUMEL] = w.data_ptr(), cast.data_ptr(), w.numel()
            chunks.extend((len(rows), c) for c in range(-(-w.numel() // chunk_elems)))
            rows.append(row)
        self._tables = (
            K.device_tensor(rows, torch.int64),
            K.device_tensor(chunks, torch.int32).reshape(-1, 2),
        )
        self._key = key
        return self._tables

    @contextmanager
    def refreshed(self, dtype: torch.dtype) -> Iterator[None]:
        """Round every conv weight into its copy for activations of ``dtype`` (one launch;
        nothing for fp32), and let the convs read the copies without casting until the
        ``with`` block ends."""
        copies = [(c, cast) for c in self.convs if (cast := c.weight_copy(dtype)) is not None]
        if not copies:
            yield
            return
        K.cast_tensors(*self._get_tables(copies), dtype)
        for conv, _ in copies:
            conv.copy_fresh = True
        try:
            yield
        finally:
            for conv, _ in copies:
                conv.copy_fresh = False
