"""Learning-rate schedules that write the optimizer's device hyper-parameter table.

Each ``step()`` of a device schedule is one tiny kernel (``kernels.optim.lr_schedule_kernel``):
it increments the schedule's device counter and copies that step's values into the optimizer's
``hyper`` table (lr, and momentum / beta1 for one-cycle), so no host work or sync happens per
iteration and a CUDA graph that contains the step keeps following the schedule.

The values come from a host table computed once in float64 with numpy (rows = schedule steps,
then groups, then values), not from a formula in the kernel: it is exactly torch's float64 lr
sequence, any curve costs the same, and steps past the end repeat the last row. StepLR, whose
sequence has no end, uses its closed form ``base * gamma ** (step // step_size)`` in the kernel.

Semantics follow torch.optim.lr_scheduler: constructing a schedule sets step 0's lr (and records
``initial_lr`` in each group), each ``step()`` advances by one, in whatever unit the caller
steps (iterations or epochs). ``ReduceLROnPlateau`` is host-side: stepped once per epoch with
the validation metric, it reads the device lrs and pushes a reduced lr.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tritoncnn import runtime
from tritoncnn.kernels import elementwise as ew
from tritoncnn.kernels import optim as K
from tritoncnn.optim.optimizer import Optimizer


def _per_group(value, n: int, name: str) -> list[float]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"expected {n} values for {name}, got {len(value)}")
        return [float(v) for v in value]
    return [float(value)] * n


class LRSchedule:
    """A schedule stepped on the device from a float64 table (see module docstring)."""

    needs_metric = False  # True for schedules stepped with a validation metric

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not a tritoncnn optimizer")
        self.optimizer = optimizer
        for g in optimizer.param_groups:
            if last_epoch == -1:
                g.setdefault("initial_lr", g["lr"])
            elif "initial_lr" not in g:
                raise KeyError("param 'initial_lr' is not specified in param_groups")
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self._build()
        start = max(last_epoch, 0)
        self.counter = ew.fill_(runtime.empty((1,), torch.int32), start)
        # Step `start`'s values, also written into the groups like torch does, so the host
        # dicts and the device agree when the schedule starts.
        row = self._row(start)
        for g, vals in zip(optimizer.param_groups, row, strict=True):
            g["lr"] = float(vals[0])
            if len(vals) > 1:
                self._set_momentum(g, float(vals[1]))
        optimizer.sync_hyperparameters()

    # --- what subclasses provide ------------------------------------------------------------
    def _values(self) -> np.ndarray:
        """float64 [rows, groups, values] table of the schedule."""
        raise NotImplementedError

    geometric_period = 0  # > 0: StepLR's closed form (row 0 base lrs, row 1 gamma)

    def _set_momentum(self, group: dict[str, Any], m: float) -> None:
        if "betas" in group:
            group["betas"] = (m, *group["betas"][1:])
        else:
            group["momentum"] = m

    # --- machinery --------------------------------------------------------------------------
    def _build(self) -> None:
        self._table_host = np.ascontiguousarray(self._values(), dtype=np.float64)
        self.table = K.device_tensor(self._table_host, torch.float64)

    def _row(self, step: int) -> np.ndarray:
        t = self._table_host
        if self.geometric_period:
            factor = t[1, :, 0] ** (step // self.geometric_period)
            return (t[0, :, 0] * factor)[:, None]
        return t[min(step, t.shape[0] - 1)]

    def _apply(self, advance: bool) -> None:
        K.lr_schedule_step(
            self.table,
            self.counter,
            self.optimizer.hyper,
            advance=advance,
            col1=K.H_MOMENTUM,
            geometric_period=self.geometric_period,
        )

    def step(self) -> None:
        """Advance one step on the device: counter += 1, hyper-parameters of the new step."""
        self._apply(advance=True)

    @property
    def last_epoch(self) -> int:
        """Steps taken (torch's ``last_epoch``); reads the device."""
        return int(self.counter.cpu()[0])

    def get_last_lr(self) -> list[float]:
        """The lrs the optimizer holds now (a device read)."""
        return self.optimizer.get_lrs()

    def lr_at(self, step: int) -> list[float]:
        """The lr of each group at schedule step ``step`` (host table, no device access)."""
        return [float(v) for v in self._row(step)[:, 0]]

    def state_dict(self) -> dict[str, Any]:
        """Counter and the constructor values (a device read: once per checkpoint)."""
        state = {k: v for k, v in self.__dict__.items() if k not in _NOT_STATE}
        state["last_epoch"] = self.last_epoch
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counter (and arguments), then write that step's values to the device."""
        for k, v in state.items():
            if k != "last_epoch":
                self.__dict__[k] = v
        self._build()
        K.copy_to_device_(self.counter, [int(state["last_epoch"])])
        self._apply(advance=False)


_NOT_STATE = {"optimizer", "table", "_table_host", "counter"}


class Constant(LRSchedule):
    """The optimizer's lr, unchanged (lets the trainer treat every schedule alike)."""

    def _values(self) -> np.ndarray:
        return np.array(self.base_lrs, dtype=np.float64).reshape(1, -1, 1)


class StepLR(LRSchedule):
    """torch.optim.lr_scheduler.StepLR: lr = base * gamma ** (step // step_size)."""

    def __init__(
        self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ):
        if step_size <= 0:
            raise ValueError(f"step_size must be positive, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)
        self.geometric_period = self.step_size
        super().__init__(optimizer, last_epoch)

    def _values(self) -> np.ndarray:
        n = len(self.base_lrs)
        return np.array([self.base_lrs, [self.gamma] * n], dtype=np.float64).reshape(2, n, 1)


class MultiStepLR(LRSchedule):
    """torch.optim.lr_scheduler.MultiStepLR: lr *= gamma at each milestone (repeats compound)."""

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
    ):
        self.milestones, self.gamma = sorted(int(m) for m in milestones), float(gamma)
        super().__init__(optimizer, last_epoch)

    def _values(self) -> np.ndarray:
        rows = (self.milestones[-1] if self.milestones else 0) + 1
        k = np.array([bisect.bisect_right(self.milestones, s) for s in range(rows)])
        factor = self.gamma ** k.astype(np.float64)
        return (factor[:, None] * np.array(self.base_lrs)[None, :])[:, :, None]


class WarmupCosineLR(LRSchedule):
    """Linear warmup, then cosine annealing to ``eta_min``, per step.

    step s < warmup_steps: lr = base * (f + (1 - f) * s / warmup_steps), f = warmup_start_factor
    (torch's LinearLR); then lr = eta_min + (base - eta_min) * (1 + cos(pi * t)) / 2 with
    t = (s - warmup_steps) / (total_steps - warmup_steps) (torch's CosineAnnealingLR), and
    eta_min once s >= total_steps.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        total_steps: int,
        warmup_start_factor: float = 0.1,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ):
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(
                f"need 0 <= warmup_steps < total_steps, got {warmup_steps}, {total_steps}"
            )
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.warmup_start_factor, self.eta_min = float(warmup_start_factor), float(eta_min)
        super().__init__(optimizer, last_epoch)

    def _values(self) -> np.ndarray:
        s = np.arange(self.total_steps + 1, dtype=np.float64)
        base = np.array(self.base_lrs)[None, :]
        w, f = self.warmup_steps, self.warmup_start_factor
        warm = base * (f + (1.0 - f) * s[:, None] / max(w, 1))
        t = np.clip((s - w) / (self.total_steps - w), 0.0, 1.0)[:, None]
        cos = self.eta_min + (base - self.eta_min) * (1.0 + np.cos(np.pi * t)) / 2.0
        return np.where(s[:, None] < w, warm, cos)[:, :, None]


class OneCycleLR(LRSchedule):
    """torch.optim.lr_scheduler.OneCycleLR (cos or linear annealing, optional three phases),
    including momentum cycling (SGD momentum / Adam beta1) when ``cycle_momentum``.
    Steps past ``total_steps`` keep the final values (torch raises instead)."""

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr,
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ):
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError(
                    "You must define either total_steps OR (epochs AND steps_per_epoch)"
                )
            total_steps = epochs * steps_per_epoch
        if total_steps <= 0:
            raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
        if not 0 <= pct_start <= 1:
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy}")
        n = len(optimizer.param_groups)
        self.total_steps, self.pct_start = int(total_steps), float(pct_start)
        self.anneal_strategy, self.three_phase = anneal_strategy, bool(three_phase)
        self.cycle_momentum = bool(cycle_momentum)
        self.max_lrs = _per_group(max_lr, n, "max_lr")
        self.base_momentums = _per_group(base_momentum, n, "base_momentum")
        self.max_momentums = _per_group(max_momentum, n, "max_momentum")
        self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)
        if cycle_momentum and not any(k in optimizer.defaults for k in ("momentum", "betas")):
            raise ValueError(
                "optimizer must support momentum or beta1 with `cycle_momentum` enabled"
            )
        for g, m in zip(optimizer.param_groups, self.max_lrs, strict=True):
            if last_epoch == -1:
                g["initial_lr"] = m / self.div_factor
                g["max_lr"] = m
                g["min_lr"] = g["initial_lr"] / self.final_div_factor
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _values(self) -> np.ndarray:
        n = len(self.max_lrs)
        values = 2 if self.cycle_momentum else 1
        out = np.zeros((self.total_steps, n, values), dtype=np.float64)
        for gi in range(n):
            initial = self.max_lrs[gi] / self.div_factor
            lrs = {"initial": initial, "max": self.max_lrs[gi]}
            lrs["min"] = initial / self.final_div_factor
            mom = {"max": self.max_momentums[gi], "base": self.base_momentums[gi]}
            pct = self.pct_start * self.total_steps
            if self.three_phase:
                phases = [
                    (pct - 1, "initial", "max", "max", "base"),
                    (2 * pct - 2, "max", "initial", "base", "max"),
                    (self.total_steps - 1, "initial", "min", "max", "max"),
                ]
            else:
                phases = [
                    (pct - 1, "initial", "max", "max", "base"),
                    (self.total_steps - 1, "max", "min", "base", "max"),
                ]
            for s in range(self.total_steps):
                start_step = 0.0
                for i, (end_step, lr0, lr1, m0, m1) in enumerate(phases):
                    if s <= end_step or i == len(phases) - 1:
                        p = (s - start_step) / (end_step - start_step)
                        out[s, gi, 0] = self._anneal(lrs[lr0], lrs[lr1], p)
                        if self.cycle_momentum:
                            out[s, gi, 1] = self._anneal(mom[m0], mom[m1], p)
                        break
                    start_step = end_step
        return out


class ReduceLROnPlateau:
    """torch.optim.lr_scheduler.ReduceLROnPlateau, host-side: ``step(metric)`` once per epoch.

    Reads the optimizer's device lrs (one sync per epoch), and when the metric has not improved
    for more than ``patience`` epochs writes ``max(lr * factor, min_lr)`` to the device.
    """

    needs_metric = True

    def __init__(
        self,
        optimizer: Optimizer,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr=0.0,
        eps: float = 1e-8,
    ):
        if factor >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode} is unknown!")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold mode {threshold_mode} is unknown!")
        self.optimizer = optimizer
        self.min_lrs = _per_group(min_lr, len(optimizer.param_groups), "min_lr")
        self.mode, self.factor, self.patience = mode, float(factor), int(patience)
        self.threshold, self.threshold_mode = float(threshold), threshold_mode
        self.cooldown, self.eps = int(cooldown), float(eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        self._last_lr = [g["lr"] for g in optimizer.param_groups]

    def is_better(self, a: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def step(self, metrics: float) -> None:
        current = float(metrics)
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = self.optimizer.get_lrs()

    def _reduce_lr(self) -> None:
        lrs = self.optimizer.get_lrs()  # the device holds the truth (another schedule may run)
        for gi in range(len(self.optimizer.param_groups)):
            old_lr = lrs[gi]
            new_lr = max(old_lr * self.factor, self.min_lrs[gi])
            if old_lr - new_lr > self.eps:
                self.optimizer.set_lr(gi, new_lr)

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


SCHEDULES = {
    "constant": Constant,
    "step": StepLR,
    "multistep": MultiStepLR,
    "cosine": WarmupCosineLR,
    "onecycle": OneCycleLR,
    "plateau": ReduceLROnPlateau,
}
