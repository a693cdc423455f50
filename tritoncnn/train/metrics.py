"""Per-epoch metrics: accumulated on the device during the epoch, read once at its end;
written to metrics.csv and drawn into curves.png."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from tritoncnn import runtime
from tritoncnn.kernels import elementwise as ew
from tritoncnn.kernels import loss as kl


class DeviceMeter:
    """Sum of batch losses, correct predictions and batches, kept on the device."""

    def __init__(self) -> None:
        self.loss_sum = runtime.empty(())
        self.correct = runtime.empty((), torch.int64)
        self.reset()

    def reset(self) -> None:
        ew.fill_(self.loss_sum, 0.0)
        kl.zero_counter_(self.correct)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate one batch (two small launches, no sync)."""
        ew.accumulate_(self.loss_sum, loss)
        kl.count_correct(logits, target, self.correct)

    def read(self, batches: int, samples: int) -> tuple[float, float]:
        """(mean batch loss, accuracy): the one host sync of an epoch."""
        loss = float(self.loss_sum.cpu()) / max(batches, 1)
        return loss, int(self.correct.cpu()) / max(samples, 1)


FIELDS = [
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "skipped_steps",
    "images_per_s",
    "epoch_s",
]


class History:
    """Rows of per-epoch metrics, mirrored to ``metrics.csv`` after every epoch."""

    def __init__(self, run_dir: Path, rows: list[dict] | None = None) -> None:
        self.path = run_dir / "metrics.csv"
        self.plot_path = run_dir / "curves.png"
        self.rows: list[dict] = list(rows or [])

    def append(self, row: dict) -> None:
        self.rows.append({k: row.get(k, "") for k in FIELDS})
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(self.rows)

    def plot(self) -> None:
        """Loss and accuracy curves, train and validation."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if not self.rows:
            return
        ep = [r["epoch"] for r in self.rows]

        def col(k):
            return [float(r[k]) if r[k] != "" else math.nan for r in self.rows]

        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        a.plot(ep, col("train_loss"), label="train")
        a.plot(ep, col("val_loss"), label="val")
        a.set_xlabel("epoch")
        a.set_ylabel("loss")
        a.legend()
        b.plot(ep, col("train_acc"), label="train")
        b.plot(ep, col("val_acc"), label="val")
        b.set_xlabel("epoch")
        b.set_ylabel("accuracy")
        b.legend()
        fig.tight_layout()
        fig.savefig(self.plot_path, dpi=100)
        plt.close(fig)
