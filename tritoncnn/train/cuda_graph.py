"""One training (or evaluation) step captured in a CUDA graph and replayed.

A CUDA graph records the kernel launches of one call of a step function once; each replay
re-issues all of them in a single driver call, so the ~10-20 us of Python per Triton launch
disappears from the loop. Tensors the step allocates during capture come from the graph's
private memory pool: that pool *is* the static arena (the seed's persistent memory pools) —
a replay allocates nothing and writes the same addresses every time.

Rules a captured step must follow (they hold for ``Trainer.train_step`` and
``GPULoader.next_batch``; break one and the replay silently repeats a stale value):

- Every value that changes between steps lives in device memory and is read by the kernels:
  the batch index (``loader.step``), the epoch's augmentation seed, dropout RNG steps, the
  loss scale, LR-schedule counters and the optimizer's hyper-parameters. A Python number
  passed as a kernel argument is frozen into the graph at capture.
- No host sync (``.item()``, ``.cpu()``, ``float(t)``): it is illegal during capture.
- No host-to-device copy from pageable or reused pinned memory: the copy's source address is
  recorded and would be read again, long after the buffer was freed.
- Persistent state is allocated before capture (run the step eagerly first: that also compiles
  every kernel): gradients are kept with ``zero_grad(set_to_none=False)``, optimizer state
  arenas exist, and no parameter or gradient is re-allocated afterwards (the optimizer raises
  if one is during capture). ``load_state_dict`` copies in place, so it keeps a graph valid;
  anything that re-allocates a tensor the step reads (e.g. an LR schedule's
  ``load_state_dict``, which rebuilds its table) needs ``reset()`` and a new capture.
- Host-side edits that the eager step would push to the device (``group["lr"] = ...``) are not
  seen by a replay: push them with ``optimizer.sync_hyperparameters()`` between replays.
- Inputs and outputs are the static tensors the step reads and writes (the loader's buffers,
  the meter's sums); the return value of the captured call is kept as ``output``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tritoncnn import runtime


def enabled() -> bool:
    """CUDA graphs can be used: a CUDA device runs the kernels (not the interpreter)."""
    return not runtime.INTERPRETED and torch.cuda.is_available()


class CudaGraphStep:
    """Call ``fn`` (no arguments) as a captured CUDA graph.

    The first ``warmup`` calls run ``fn`` eagerly: real steps that also compile every kernel
    and allocate the persistent state. The next call captures ``fn`` (capture only records, so
    the graph is then replayed once to do that call's work); later calls replay. Returns the
    value of the captured call (static tensors, overwritten by every replay).

    Where graphs are unavailable (``enabled()`` is False: the interpreter) every call runs
    ``fn`` eagerly, so callers need no second code path.
    """

    def __init__(self, fn: Callable[[], object], warmup: int = 1) -> None:
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        self.fn = fn
        self.warmup = int(warmup)
        self.calls = 0  # eager calls made so far (warmup)
        self.replays = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: object = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self) -> object:
        if self.graph is None:
            if not enabled() or self.calls < self.warmup:
                self.calls += 1
                return self.fn()
            self.capture()
        self.graph.replay()
        self.replays += 1
        return self.output

    def capture(self) -> None:
        """Record ``fn`` into a new graph (its kernels do not run now)."""
        if not enabled():
            raise RuntimeError("CUDA graphs need a CUDA device; run the step eagerly instead")
        graph = torch.cuda.CUDAGraph()
        try:
            # torch.cuda.graph captures on a side stream and gives the graph a private pool
            with torch.cuda.graph(graph):
                self.output = self.fn()
        except Exception as e:
            raise RuntimeError(
                f"CUDA-graph capture of {getattr(self.fn, '__qualname__', self.fn)} failed: {e}. "
                "The step must not sync with the host or allocate persistent state during "
                "capture (run it eagerly first: raise `warmup`), or set trainer.cuda_graph=false"
            ) from e
        self.graph = graph

    def reset(self) -> None:
        """Drop the graph (and its memory pool); the next call captures again (no warmup)."""
        self.graph = None
        self.output = None
        self.calls = max(self.calls, self.warmup)
