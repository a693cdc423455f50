"""Dropout (kernels in kernels/dropout.py) and the seeding of its device-side RNG.

Each Dropout owns a device int64 RNG state [key, step]. Keys come from this module's own
generator at construction, so ``manual_seed(s)`` before building a model makes every mask of a
run reproducible; without it the generator is seeded from ``torch.initial_seed()`` on first
use (so ``torch.manual_seed`` at program start works too). Our generator is separate from
torch's, so building a Dropout does not shift torch's weight initialisation.
"""

from __future__ import annotations

import torch

from tritoncnn.kernels import dropout as kd
from tritoncnn.nn.module import Module

_generator: torch.Generator | None = None


def manual_seed(seed: int) -> None:
    """Seed the keys of the Dropout modules created from now on (existing ones keep theirs;
    use ``Dropout.manual_seed`` to reseed one)."""
    global _generator
    _generator = torch.Generator().manual_seed(int(seed))


def _next_seed() -> int:
    global _generator
    if _generator is None:
        _generator = torch.Generator().manual_seed(torch.initial_seed())
    return int(torch.randint(0, 2**62, (1,), generator=_generator).item())


class Dropout(Module):
    """torch.nn.Dropout: in training, zero each element with probability ``p`` and scale the
    rest by 1/(1-p); in eval mode (or p == 0) the input is returned as is.

    Every training forward advances the device RNG step inside its one dropout launch (no host
    sync, no extra kernel), so each call draws a fresh mask; ``backward`` regenerates the mask
    of the latest forward.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if p < 0 or p > 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = float(p)
        self.inplace = bool(inplace)
        # Not a buffer: torch.nn.Dropout has no state_dict entries.
        self._rng_state = kd.new_seed_state(_next_seed())
        self._fwd: tuple | None = None  # (shape, strides, dtype, applied) of the last forward

    def manual_seed(self, seed: int) -> None:
        """Restart this module's mask sequence from ``seed`` (step 0), in place."""
        kd.reseed_(self._rng_state, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        applied = self.training and self.p > 0.0
        self._fwd = (x.shape, x.stride(), x.dtype, applied)
        if not applied:
            return x
        out = x if self.inplace else None
        return kd.dropout_forward(x, self.p, self._rng_state, out=out, advance_seed=1)

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor:
        if self._fwd is None:
            raise RuntimeError("Dropout.backward called before forward")
        shape, strides, dtype, applied = self._fwd
        if not applied:
            return grad_out
        if grad_out.shape != shape or grad_out.stride() != strides:
            raise ValueError(
                f"Dropout.backward: grad_out {tuple(grad_out.shape)} strides {grad_out.stride()} "
                f"must match the forward input {tuple(shape)} strides {strides}"
            )
        return kd.dropout_backward(grad_out, self.p, self._rng_state)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"
