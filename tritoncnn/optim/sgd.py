"""SGD with torch.optim.SGD's semantics (momentum, dampening, Nesterov, weight decay, maximize).

The update runs in ``kernels.optim.sgd_step_kernel``: one launch for all parameters. The momentum
buffer of a parameter starts as a copy of its first (decayed) gradient, as in torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from tritoncnn.kernels import optim as K
from tritoncnn.optim.optimizer import Optimizer


class SGD(Optimizer):
    """torch.optim.SGD(params, lr, momentum, dampening, weight_decay, nesterov, maximize).

    ``no_decay_bn_bias`` (ours): a plain parameter list is split so parameters flagged
    ``no_weight_decay`` (BN affine, biases) get weight_decay 0; pass False for torch's behaviour.
    """

    STATE_NAMES = ("momentum_buffer",)

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        no_decay_bn_bias: bool = True,
    ):
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
        )
        super().__init__(params, defaults, no_decay_bn_bias)

    def _hyper_row(self, group: dict[str, Any]) -> list[float]:
        return [group["lr"], group["weight_decay"], group["momentum"], group["dampening"]]

    def _flag(self, name: str) -> bool:
        values = {bool(g[name]) for g in self.param_groups}
        if len(values) > 1:
            raise NotImplementedError(f"SGD: '{name}' must be the same in every parameter group")
        return values.pop()

    def _launch(self, tensors: torch.Tensor, chunks: torch.Tensor, found_inf) -> None:
        use_momentum = any(g["momentum"] != 0 for g in self.param_groups)
        K.sgd_step(
            tensors,
            chunks,
            self.hyper,
            self._arena("momentum_buffer") if use_momentum else self._step,
            self._step,
            self._done,
            found_inf,
            use_momentum=use_momentum,
            nesterov=self._flag("nesterov"),
            maximize=self._flag("maximize"),
            block=self.block,
            iters=self.iters,
        )

    def _group_values(self, gi: int, row: list[float]) -> dict[str, Any]:
        return {
            "lr": row[K.H_LR],
            "weight_decay": row[K.H_WD],
            "momentum": row[K.H_MOMENTUM],
            "dampening": row[K.H_DAMPENING],
        }

    def _state_entry(self, slot: int, step: int) -> dict[str, Any]:
        entry: dict[str, Any] = {"step": torch.tensor(float(step))}
        if self.param_groups[self._group_of[slot]]["momentum"] != 0:
            entry["momentum_buffer"] = self._state_view("momentum_buffer", slot).clone()
        return entry

    def _load_state_entry(self, slot: int, entry: Mapping[str, Any]) -> int:
        buf = entry.get("momentum_buffer")
        if buf is not None:
            self._state_view("momentum_buffer", slot).copy_(torch.as_tensor(buf))
        step = entry.get("step")
        if step is None:  # torch's SGD keeps no count: a buffer means it has stepped
            return 1 if buf is not None else 0
        return int(float(step))
