"""Dynamic loss scaling with torch.amp.GradScaler's semantics and defaults, on the device.

A mixed-precision step::

    grad_logits = scaler.scale_(loss_fn.backward())   # or have the loss read scaler.scale_tensor
    model.backward(grad_logits)
    scaler.step(optimizer)      # unscale (one launch, sets found_inf), then the masked update
    scaler.update()             # x0.5 on inf/NaN, x2 after growth_interval clean steps

Nothing here reads the device per step: the overflow flag ``found_inf`` is a device tensor the
optimizer kernel reads to skip its update, and the scale, growth tracker and the count of
skipped steps stay on the device. ``skipped_steps()`` / ``get_scale()`` / ``state_dict()`` read
them back (a host sync, for per-epoch reports and checkpoints).
"""

from __future__ import annotations

from typing import Any

import torch

from tritoncnn import runtime
from tritoncnn.kernels import amp as A
from tritoncnn.kernels import elementwise as ew
from tritoncnn.kernels import optim as K
from tritoncnn.optim.optimizer import Optimizer


class GradScaler:
    """torch.amp.GradScaler(init_scale=2**16, growth_factor=2, backoff_factor=0.5,
    growth_interval=2000, enabled=True) for tritoncnn optimizers.

    One overflow flag is shared by all optimizers stepped between two ``update()`` calls
    (torch keeps one per optimizer; a CNN has one optimizer).
    """

    def __init__(
        self,
        device: str | None = None,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
    ):
        if growth_factor <= 1.0:
            raise ValueError("The growth factor must be > 1.0.")
        if backoff_factor >= 1.0:
            raise ValueError("The backoff factor must be < 1.0.")
        del device  # accepted for torch's signature; tensors live on runtime.DEVICE
        self._enabled = enabled
        self._growth_interval = int(growth_interval)
        self._init_scale = float(init_scale)
        self.scale_tensor = self._scalar(torch.float32, init_scale)
        self.growth_tracker = self._scalar(torch.int32, 0)
        self.found_inf = self._scalar(torch.float32, 0.0)
        self.skipped = self._scalar(torch.int32, 0)
        self.factors = K.device_tensor([growth_factor, backoff_factor], torch.float64)
        self._unscaled: set[int] = set()  # optimizers unscaled since the last update (host)

    @staticmethod
    def _scalar(dtype: torch.dtype, value: float) -> torch.Tensor:
        return ew.fill_(runtime.empty((1,), dtype), value)

    def is_enabled(self) -> bool:
        return self._enabled

    # --- the step -------------------------------------------------------------------------------
    def scale(self, outputs: torch.Tensor) -> torch.Tensor:
        """outputs * scale into a new tensor (outputs unchanged when disabled)."""
        return A.scale(outputs, self.scale_tensor) if self._enabled else outputs

    def scale_(self, outputs: torch.Tensor) -> torch.Tensor:
        """outputs *= scale in place (e.g. the loss gradient that starts the backward)."""
        return A.scale_(outputs, self.scale_tensor) if self._enabled else outputs

    def unscale_(self, optimizer: Optimizer) -> None:
        """Divide the optimizer's gradients by the scale in place; flag inf/NaN on the device."""
        if not self._enabled:
            return
        if id(optimizer) in self._unscaled:
            raise RuntimeError(
                "unscale_() has already been called on this optimizer since the last update()."
            )
        tables = optimizer._get_tables()
        if tables is not None:
            K.unscale_grads(
                *tables,
                self.scale_tensor,
                self.found_inf,
                block=optimizer.block,
                iters=optimizer.iters,
            )
        self._unscaled.add(id(optimizer))

    def step(self, optimizer: Optimizer) -> None:
        """Unscale (unless done already) and step; the kernel skips the update on overflow."""
        if not self._enabled:
            optimizer.step()
            return
        if id(optimizer) not in self._unscaled:
            self.unscale_(optimizer)
        optimizer.step(found_inf=self.found_inf)

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        """Adjust the scale on the device and clear the overflow flag for the next step."""
        if not self._enabled:
            return
        if new_scale is None:
            A.update_scale(
                self.scale_tensor,
                self.growth_tracker,
                self.found_inf,
                self.skipped,
                self.factors,
                self._growth_interval,
            )
        else:
            if isinstance(new_scale, torch.Tensor):
                self.scale_tensor.copy_(new_scale.reshape(1))
            else:
                K.copy_to_device_(self.scale_tensor, [float(new_scale)])
            ew.fill_(self.found_inf, 0.0)
        self._unscaled.clear()

    # --- reading back (host syncs) ---------------------------------------------------------------
    def get_scale(self) -> float:
        return float(self.scale_tensor.cpu()[0]) if self._enabled else 1.0

    def skipped_steps(self) -> int:
        """Steps skipped for inf/NaN gradients since construction (or the last reset)."""
        return int(self.skipped.cpu()[0])

    def reset_skipped_steps(self) -> None:
        ew.fill_(self.skipped, 0)

    def get_growth_factor(self) -> float:
        return float(self.factors.cpu()[0])

    def get_backoff_factor(self) -> float:
        return float(self.factors.cpu()[1])

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def state_dict(self) -> dict[str, Any]:
        """torch's keys (scale, growth_factor, backoff_factor, growth_interval,
        _growth_tracker) plus skipped_steps."""
        if not self._enabled:
            return {}
        return {
            "scale": self.get_scale(),
            "growth_factor": self.get_growth_factor(),
            "backoff_factor": self.get_backoff_factor(),
            "growth_interval": self._growth_interval,
            "_growth_tracker": int(self.growth_tracker.cpu()[0]),
            "skipped_steps": self.skipped_steps(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError(
                "The source state dict is empty, possibly because it was saved from a disabled "
                "instance of GradScaler."
            )
        K.copy_to_device_(self.scale_tensor, [float(state_dict["scale"])])
        K.copy_to_device_(
            self.factors, [float(state_dict["growth_factor"]), float(state_dict["backoff_factor"])]
        )
        self._growth_interval = int(state_dict["growth_interval"])
        K.copy_to_device_(self.growth_tracker, [int(state_dict["_growth_tracker"])])
        K.copy_to_device_(self.skipped, [int(state_dict.get("skipped_steps", 0))])
