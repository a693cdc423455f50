"""Parity: does an exported model compute what the tritoncnn model computes?

Every export runs one batch through the written file (onnxruntime for ONNX, the rebuilt torch
module for safetensors) and through the tritoncnn model in eval mode, and compares the logits:

- ``max_abs_diff`` must stay within ``atol + rtol * max|reference logit|``;
- the predicted classes must agree on every sample whose reference top-2 margin exceeds twice
  that bound (closer calls may legitimately flip under fp32 rounding of different kernels).

A failure raises ``ParityError``; the exporters run the check on the staged file before it is
renamed into place, so a model that fails parity leaves no file at the target path.
The defaults hold fp32 exports to 1e-3 of the logit scale: BN folding and another library's
convolution algorithms move fp32 logits by ~1e-6 relative, while a wrong layout, a missing op or
a wrong padding moves them by O(1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tritoncnn import runtime
from tritoncnn.export.errors import ParityError

RTOL = 1e-3
ATOL = 1e-5


@dataclass(frozen=True)
class ParityReport:
    """The comparison of one batch of logits: exported model (``reference``) vs tritoncnn."""

    reference: str  # what ran the export: "onnxruntime" or "torch"
    n: int  # samples in the batch
    max_abs_diff: float
    max_abs_logit: float
    rel_err: float  # ||ours - ref|| / ||ref|| (Frobenius)
    same_class: int  # samples whose argmax agrees
    tol: float  # the bound max_abs_diff was held to

    @property
    def agreement(self) -> float:
        return self.same_class / max(self.n, 1)

    def __str__(self) -> str:
        return (
            f"parity vs {self.reference}: max |diff| {self.max_abs_diff:.2e} (tol {self.tol:.1e}, "
            f"max |logit| {self.max_abs_logit:.2f}), rel err {self.rel_err:.2e}, "
            f"same class {self.same_class}/{self.n}"
        )


def compare(
    ours: np.ndarray, ref: np.ndarray, reference: str, rtol: float = RTOL, atol: float = ATOL
) -> ParityReport:
    """Compare two N,classes logit arrays; raise ParityError above tolerance."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        raise ParityError(
            f"parity vs {reference}: output shape {ref.shape} != tritoncnn's {ours.shape}"
        )
    diff = np.abs(ours - ref)
    max_diff = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    denom = float(np.linalg.norm(ref))
    rel = float(np.linalg.norm(ours - ref)) / (denom if denom > 0 else 1.0)
    tol = atol + rtol * scale
    same = ours.argmax(1) == ref.argmax(1)
    top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.zeros((len(ref), 2))
    clear = (top2[:, 1] - top2[:, 0]) > 2 * tol
    report = ParityReport(reference, len(ref), max_diff, scale, rel, int(same.sum()), tol)
    if not np.isfinite(ours).all() or not np.isfinite(ref).all():
        raise ParityError(f"{report}: non-finite logits")
    if max_diff > tol or not same[clear].all():
        raise ParityError(f"exported model disagrees with tritoncnn: {report}")
    return report


def random_input(shape, seed: int = 0, unit: bool = False) -> torch.Tensor:
    """A seeded fp32 N,C,H,W CPU batch: standard normal (normalised images), or uniform in
    [0, 1) (raw pixels, for exports that normalise inside) when ``unit``."""
    g = torch.Generator().manual_seed(seed)
    if unit:
        return torch.rand(tuple(shape), generator=g)
    return torch.randn(tuple(shape), generator=g)


def normalize_input(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel, on the host (what an export's first nodes compute)."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


def tritoncnn_logits(model, x: torch.Tensor) -> np.ndarray:
    """Logits of our model in eval mode for a CPU batch ``x`` (its train/eval mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        y = model(x.to(device=runtime.DEVICE, dtype=torch.float32))
        return y.detach().float().cpu().numpy()
    finally:
        model.train(was_training)


def torch_logits(module: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Logits of a plain torch module (eval mode, no autograd) on the CPU."""
    module.eval()
    with torch.no_grad():
        return module(x.float()).numpy()


def onnx_logits(path, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Logits of an ONNX file run by onnxruntime on the CPU."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: np.asarray(x, dtype=np.float32)})[0]
