"""CrossEntropyLoss: softmax cross-entropy over logits (kernels in kernels/loss.py)."""

from __future__ import annotations

import os

import torch

from tritoncnn.kernels import loss as kl
from tritoncnn.nn.module import Module


class CrossEntropyLoss(Module):
    """torch.nn.CrossEntropyLoss for (N, K) logits and (N,) int64 class indices.

    ``forward(logits, target)`` returns a 0-dim fp32 loss tensor on the device; ``backward()``
    returns the gradient of that loss w.r.t. the logits (logits' dtype and layout). Pass
    ``grad_scale`` (a one-element fp32 device tensor, e.g. the dynamic loss scale) to multiply
    the gradient on the device without a host sync.

    Supported: reduction 'mean' and 'sum', ``ignore_index``, ``label_smoothing``. Not supported
    (NotImplementedError): class ``weight``, reduction 'none', the deprecated ``size_average`` /
    ``reduce``.

    Targets outside [0, K) (other than ``ignore_index``) make the loss and that row's gradient
    NaN; nothing is checked on the host by default, since that would sync every step. Set
    ``check_targets = True`` (or the env var ``TRITONCNN_CHECK_TARGETS=1``) to get a ValueError
    instead, at the cost of one device-to-host read per forward.
    """

    check_targets: bool = os.environ.get("TRITONCNN_CHECK_TARGETS", "0") == "1"

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        size_average=None,
        ignore_index: int = -100,
        reduce=None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if weight is not None:
            raise NotImplementedError("CrossEntropyLoss: class weights are not supported")
        if size_average is not None or reduce is not None:
            raise NotImplementedError(
                "CrossEntropyLoss: size_average/reduce are deprecated in torch; use reduction"
            )
        if reduction == "none":
            raise NotImplementedError("CrossEntropyLoss: reduction='none' is not supported")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"{reduction} is not a valid value for reduction")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)
        self._saved: tuple | None = None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss, ctx = kl.cross_entropy_forward(
            logits, target, self.label_smoothing, self.ignore_index, self.reduction
        )
        if self.check_targets:
            n_bad = int(ctx.n_bad.item())  # the opt-in host sync
            if n_bad:
                raise ValueError(
                    f"CrossEntropyLoss: {n_bad} target(s) outside [0, {logits.shape[1]}) "
                    f"(ignore_index={self.ignore_index})"
                )
        self._saved = (logits, target, ctx)
        return loss

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.forward(logits, target)

    def backward(self, grad_scale: torch.Tensor | None = None) -> torch.Tensor:
        """d(loss)/d(logits) of the last forward, times ``grad_scale`` (device tensor) if given."""
        if self._saved is None:
            raise RuntimeError("CrossEntropyLoss.backward called before forward")
        logits, target, ctx = self._saved
        return kl.cross_entropy_backward(logits, target, ctx, grad_scale)
