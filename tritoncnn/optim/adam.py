"""Adam and AdamW with torch.optim's semantics (bias correction, eps outside the sqrt, amsgrad).

Both run ``kernels.optim.adam_step_kernel`` (one launch for all parameters); AdamW decays the
weights directly (``p *= 1 - lr * wd``) instead of adding ``wd * p`` to the gradient.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from tritoncnn.kernels import optim as K
from tritoncnn.optim.optimizer import Optimizer


class Adam(Optimizer):
    """torch.optim.Adam(params, lr, betas, eps, weight_decay, amsgrad, maximize).

    ``no_decay_bn_bias`` (ours): a plain parameter list is split so parameters flagged
    ``no_weight_decay`` (BN affine, biases) get weight_decay 0; pass False for torch's behaviour.
    """

    STATE_NAMES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    DECOUPLED = False

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        no_decay_bn_bias: bool = True,
    ):
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
        )
        super().__init__(params, defaults, no_decay_bn_bias)

    def _hyper_row(self, group: dict[str, Any]) -> list[float]:
        b1, b2 = group["betas"]
        return [group["lr"], group["weight_decay"], b1, b2, group["eps"]]

    def _flag(self, name: str) -> bool:
        values = {bool(g[name]) for g in self.param_groups}
        if len(values) > 1:
            raise NotImplementedError(
                f"{type(self).__name__}: '{name}' must be the same in every parameter group"
            )
        return values.pop()

    def _launch(self, tensors: torch.Tensor, chunks: torch.Tensor, found_inf) -> None:
        K.adam_step(
            tensors,
            chunks,
            self.hyper,
            self._arena("exp_avg"),
            self._arena("exp_avg_sq"),
            self._arena("max_exp_avg_sq") if self._flag("amsgrad") else None,
            self._step,
            self._done,
            found_inf,
            decoupled=self.DECOUPLED,
            maximize=self._flag("maximize"),
            block=self.block,
            iters=self.iters,
        )

    def _group_values(self, gi: int, row: list[float]) -> dict[str, Any]:
        return {
            "lr": row[K.H_LR],
            "weight_decay": row[K.H_WD],
            "betas": (row[K.H_BETA1], row[K.H_BETA2]),
            "eps": row[K.H_EPS],
        }

    def _state_entry(self, slot: int, step: int) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "step": torch.tensor(float(step)),
            "exp_avg": self._state_view("exp_avg", slot).clone(),
            "exp_avg_sq": self._state_view("exp_avg_sq", slot).clone(),
        }
        if self.param_groups[self._group_of[slot]]["amsgrad"]:
            entry["max_exp_avg_sq"] = self._state_view("max_exp_avg_sq", slot).clone()
        return entry

    def _load_state_entry(self, slot: int, entry: Mapping[str, Any]) -> int:
        for name in self.STATE_NAMES:
            if entry.get(name) is not None:
                self._state_view(name, slot).copy_(torch.as_tensor(entry[name]))
        return int(float(entry["step"]))


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (default 1e-2)."""

    DECOUPLED = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        no_decay_bn_bias: bool = True,
    ):
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            no_decay_bn_bias=no_decay_bn_bias,
        )
