"""Evaluate a checkpoint on a dataset split: accuracy, per-class accuracy, confusion matrix.

``evaluate_checkpoint(path)`` rebuilds the model from the checkpoint's resolved config, streams
the split through ``GPULoader`` (normalised with the training mean/std, no augmentation), runs
the model in eval mode and takes the argmax of the logits on the host (evaluation is not the
training step: one device-to-host copy per batch is fine). ``write_report`` writes
``<prefix>confusion_matrix.csv``, ``<prefix>per_class_accuracy.csv``,
``<prefix>confusion_matrix.png`` and ``<prefix>evaluation.json`` (prefix: ``<checkpoint>_<split>_``)
into the run folder or ``out``. The array helpers are shared with the inference notebooks.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

EVAL_USAGE = """usage: python scripts/evaluate.py CHECKPOINT [dataset.root=DIR] [split=test]
                                  [out=DIR] [batch_size=256] [limit=N]

CHECKPOINT: a checkpoint file, its stem, or a run folder (its checkpoints/best). Writes the
accuracy, per-class accuracy and confusion matrix (CSV + PNG) into the run folder or OUT."""

_DATASET_KEYS = ("name", "root", "mean", "std", "val_fraction")  # not reader arguments


@dataclass
class Evaluation:
    """Counts and rates of one evaluation; ``confusion[t, p]`` counts true t predicted as p."""

    confusion: np.ndarray
    classes: list[str]
    split: str = "test"

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion))

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.n, 1)

    @property
    def per_class(self) -> np.ndarray:
        return per_class_accuracy(self.confusion)

    def __str__(self) -> str:
        return f"{self.split} accuracy {self.accuracy:.4f} ({self.correct}/{self.n})"


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """int64 K x K counts, rows = true class, columns = predicted class."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"{t.shape[0]} labels but {p.shape[0]} predictions")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"labels/predictions outside [0, {num_classes})")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall per true class (NaN for classes with no samples)."""
    support = confusion.sum(1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(confusion) / support, np.nan)


def predict_logits(model, images, mean, std, batch_size: int = 256,
                   dtype: torch.dtype = torch.float32) -> np.ndarray:  # fmt: skip
    """fp32 N x classes logits of our model in eval mode on uint8 N,H,W,C ``images``,
    normalised by the loader kernel as in training."""
    from tritoncnn.data.loader import GPULoader

    images = np.asarray(images)
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    labels = np.zeros(len(images), dtype=np.int64)
    loader = GPULoader(images, labels, batch_size, mean, std, shuffle=False, dtype=dtype)
    was_training = model.training
    model.eval()
    out = []
    try:
        for x, _ in loader:
            out.append(model(x).float().cpu().numpy())  # x is the loader's static buffer
    finally:
        model.train(was_training)
    return np.concatenate(out)


def evaluate_model(model, images, labels, mean, std, classes: Sequence[str],
                   batch_size: int = 256, split: str = "test") -> Evaluation:  # fmt: skip
    logits = predict_logits(model, images, mean, std, batch_size)
    return Evaluation(confusion_matrix(labels, logits.argmax(1), len(classes)), list(classes),
                      split)  # fmt: skip


def plot_confusion(confusion: np.ndarray, classes: Sequence[str], ax=None, normalize=True):
    """Heatmap of the confusion matrix (rows normalised to recall when ``normalize``);
    class names on the axes up to 20 classes, counts written in the cells up to 12."""
    import matplotlib.pyplot as plt

    if ax is None:
        k = len(classes)
        _, ax = plt.subplots(figsize=(min(4 + 0.45 * k, 14), min(3.5 + 0.4 * k, 12)))
    cm = confusion.astype(np.float64)
    if normalize:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    k = len(classes)
    if k <= 20:
        ax.set_xticks(range(k), classes, rotation=90 if k > 10 else 45, ha="right")
        ax.set_yticks(range(k), classes)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                color = "white" if cm[i, j] > 0.6 * (cm.max() or 1) else "black"
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", color=color,
                        fontsize=8)  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (rows: recall)" if normalize else ""))
    return ax


def write_report(ev: Evaluation, out_dir: str | os.PathLike, prefix: str = "",
                 extra: dict | None = None) -> list[Path]:  # fmt: skip
    """The evaluation as CSV + PNG + JSON files in ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{prefix}{n}" for n in ("confusion_matrix.csv", "per_class_accuracy.csv",
                                            "confusion_matrix.png", "evaluation.json")]  # fmt: skip
    with open(paths[0], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true\\predicted", *ev.classes])
        for name, row in zip(ev.classes, ev.confusion, strict=True):
            w.writerow([name, *row.tolist()])
    support, correct = ev.confusion.sum(1), np.diag(ev.confusion)
    with open(paths[1], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "class", "support", "correct", "accuracy"])
        for i, name in enumerate(ev.classes):
            acc = "" if support[i] == 0 else f"{correct[i] / support[i]:.6f}"
            w.writerow([i, name, int(support[i]), int(correct[i]), acc])
    ax = plot_confusion(ev.confusion, ev.classes)
    ax.set_title(f"{ax.get_title()} - {ev}")
    ax.figure.tight_layout()
    ax.figure.savefig(paths[2], dpi=110)
    plt.close(ax.figure)
    summary = {"split": ev.split, "accuracy": ev.accuracy, "correct": ev.correct, "n": ev.n,
               "per_class_accuracy": dict(zip(ev.classes, map(_num, ev.per_class), strict=True)),
               **(extra or {})}  # fmt: skip
    paths[3].write_text(json.dumps(summary, indent=1))
    return paths


def _num(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


def evaluate_checkpoint(
    path: str | os.PathLike,
    root: str | None = None,
    split: str = "test",
    batch_size: int = 256,
    out: str | os.PathLike | None = None,
    limit: int | None = None,
) -> tuple[Evaluation, list[Path]]:
    """Evaluate a checkpoint on ``split`` of its dataset (``root`` overrides ``dataset.root``;
    ``limit`` keeps the first N images) and write the report into its run folder or ``out``."""
    from tritoncnn import data
    from tritoncnn.export.from_checkpoint import restore

    r = restore(path)
    ds = r.dataset
    extra = {k: v for k, v in ds.items() if k not in _DATASET_KEYS}
    x, y = data.load(ds["name"], root or ds["root"], split, **extra)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    ev = evaluate_model(r.model, x, y, ds["mean"], ds["std"], r.classes, batch_size, split)
    info = {"checkpoint": str(r.path), "dataset": ds["name"], "model": r.spec}
    paths = write_report(ev, out or r.run_dir, f"{r.stem}_{split}_", info)
    return ev, paths


def main(argv: Sequence[str]) -> int:
    """scripts/evaluate.py: ``CHECKPOINT [dataset.root=DIR] [split=test] [out=DIR] ...``."""
    from tritoncnn.data import CorruptDatasetError, DatasetNotFoundError
    from tritoncnn.export.cli import parse, run
    from tritoncnn.export.errors import ExportError

    def go() -> int:
        defaults = {"dataset.root": None, "split": "test", "out": None, "batch_size": 256,
                    "limit": 0}  # fmt: skip
        ckpt, o = parse(argv, defaults, EVAL_USAGE)
        ev, paths = evaluate_checkpoint(ckpt, o["dataset.root"], o["split"], o["batch_size"],
                                        o["out"], o["limit"] or None)  # fmt: skip
        print(f"{ev} | wrote {', '.join(str(p) for p in paths)}")
        return 0

    return run(go, (ExportError, DatasetNotFoundError, CorruptDatasetError, ValueError))


if __name__ == "__main__":  # pragma: no cover - scripts/evaluate.py is the entry point
    sys.exit(main(sys.argv[1:]))
