"""The training loop: epochs of device-resident steps, evaluation, best-model selection, early
stopping, checkpoints, resume. Knows nothing of Hydra: ``train/run.py`` builds its parts.

One training step (``Trainer.train_step``) is a fixed sequence of our kernels — gather +
augment, forward, loss, backward, unscale + inf check, fused optimizer update, loss-scale
update, LR schedule — with no host sync and no torch compute op; metrics accumulate on the
device and are read once per epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tritoncnn import runtime
from tritoncnn.data.loader import GPULoader
from tritoncnn.nn import CrossEntropyLoss, Module
from tritoncnn.optim import GradScaler, Optimizer
from tritoncnn.train import checkpoint
from tritoncnn.train.metrics import DeviceMeter, History

log = runtime.log


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


@dataclass
class TrainerConfig:
    epochs: int = 10
    limit_train_batches: int | None = None  # batches per epoch (smoke runs)
    patience: int | None = None  # early stopping: epochs without val improvement
    min_delta: float = 0.0
    schedule_unit: str = "epoch"  # "iteration" | "epoch" (when the LR schedule steps)
    progress: bool = True
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)  # resolved config, for checkpoints


class Trainer:
    """Fit ``model`` on ``train`` batches, select on ``val``, report on ``test``."""

    def __init__(
        self,
        model: Module,
        optimizer: Optimizer,
        train: GPULoader,
        val: GPULoader | None,
        test: GPULoader | None,
        run_dir: str | Path,
        cfg: TrainerConfig,
        loss_fn: CrossEntropyLoss | None = None,
        scaler: GradScaler | None = None,
        schedule=None,
    ) -> None:
        self.model, self.optimizer, self.scaler, self.schedule = model, optimizer, scaler, schedule
        self.loss_fn = loss_fn or CrossEntropyLoss()
        self.train_loader, self.val_loader, self.test_loader = train, val, test
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.history = History(self.run_dir)
        self.meter = DeviceMeter()
        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.best_val = -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.train_seconds = 0.0
        self.images_seen = 0

    # --- one step ---------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward, loss, backward and update on one batch; no host sync."""
        logits = self.model(x)
        loss = self.loss_fn(logits, y)
        self.meter.add(loss, logits, y)
        scale = self.scaler.scale_tensor if self.scaler is not None else None
        self.model.backward(self.loss_fn.backward(grad_scale=scale))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # unscale, inf check, masked update
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.schedule is not None and self.cfg.schedule_unit == "iteration":
            self.schedule.step()
        self.optimizer.zero_grad(set_to_none=False)  # keep grads allocated: one fill launch

    def _train_epoch(self) -> dict[str, float]:
        from tqdm import tqdm

        loader = self.train_loader
        loader.epoch = self.epoch  # the permutation and augmentation draws of this epoch
        self.model.train()
        self.meter.reset()
        n_batches = len(loader)
        if self.cfg.limit_train_batches:
            n_batches = min(n_batches, int(self.cfg.limit_train_batches))
        skipped_before = self.scaler.skipped_steps() if self.scaler else 0
        bar = tqdm(total=n_batches, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
                   disable=not self.cfg.progress, leave=False, unit="batch")
        t0 = time.perf_counter()
        samples = 0
        for i, (x, y) in enumerate(loader):
            if i == n_batches:
                break
            self.train_step(x, y)
            samples += len(y)
            self.global_step += 1
            bar.update(1)
        if not runtime.INTERPRETED:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        bar.close()
        loss, acc = self.meter.read(n_batches, samples)
        self.train_seconds += seconds
        self.images_seen += samples
        skipped = (self.scaler.skipped_steps() - skipped_before) if self.scaler else 0
        return {"train_loss": loss, "train_acc": acc, "images_per_s": samples / seconds,
                "epoch_s": seconds, "skipped_steps": skipped}

    def evaluate(self, loader: GPULoader) -> tuple[float, float]:
        """(mean loss, accuracy) of the model in eval mode over a whole loader."""
        self.model.eval()
        self.meter.reset()
        batches = samples = 0
        for x, y in loader:
            logits = self.model(x)
            self.meter.add(self.loss_fn(logits, y), logits, y)
            batches += 1
            samples += len(y)
        self.model.train()
        return self.meter.read(batches, samples)

    # --- the run ----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train for the configured epochs (from where a resume left off); returns the summary."""
        try:
            while self.epoch < self.cfg.epochs:
                row = self._train_epoch()
                val_loss, val_acc = (self.evaluate(self.val_loader) if self.val_loader
                                     else (row["train_loss"], row["train_acc"]))
                # a non-finite validation loss means the weights themselves went bad
                if not (math.isfinite(row["train_loss"]) and math.isfinite(val_loss)):
                    raise TrainingDivergedError(
                        f"the loss became NaN/inf in epoch {self.epoch + 1} (train "
                        f"{row['train_loss']}, val {val_loss}); stopped. The last good checkpoint "
                        f"is kept in {self.ckpt_dir}. Lower optimizer.lr or use precision=fp32."
                    )
                self.epoch += 1
                lr = self.optimizer.get_lrs()[0]
                self._step_epoch_schedule(val_acc)
                self.history.append({"epoch": self.epoch, **row, "val_loss": val_loss,
                                     "val_acc": val_acc, "lr": lr})
                improved = val_acc > self.best_val + self.cfg.min_delta
                if improved:
                    self.best_val, self.best_epoch, self.bad_epochs = val_acc, self.epoch, 0
                    self.save("best")
                else:
                    self.bad_epochs += 1
                self.save("last")
                log.info(
                    "epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.0f img/s%s",
                    self.epoch, row["train_loss"], row["train_acc"], val_loss, val_acc,
                    row["images_per_s"],
                    f" | {row['skipped_steps']} skipped steps" if self.scaler else "",
                )
                if self.cfg.patience is not None and self.bad_epochs > self.cfg.patience:
                    log.info("early stopping: no val improvement in %d epochs", self.bad_epochs)
                    break
        except KeyboardInterrupt:
            self.save("last")
            log.warning("interrupted: saved %s", self.ckpt_dir / "last.safetensors")
            raise
        finally:
            self.history.plot()
        return self.finish()

    def _step_epoch_schedule(self, val_acc: float) -> None:
        if self.schedule is None:
            return
        if getattr(self.schedule, "needs_metric", False):
            self.schedule.step(val_acc)
        elif self.cfg.schedule_unit == "epoch":
            self.schedule.step()

    def finish(self) -> dict[str, Any]:
        """Evaluate the best checkpoint on the test split; the run's summary."""
        test_loss = test_acc = None
        if self.best_epoch > 0 and (self.ckpt_dir / "best.json").exists():
            weights, _ = checkpoint.load(self.ckpt_dir / "best")
            self.model.load_state_dict(weights)
        if self.test_loader is not None:
            test_loss, test_acc = self.evaluate(self.test_loader)
        return {
            "best_val_acc": self.best_val if self.best_epoch > 0 else None,
            "best_epoch": self.best_epoch,
            "test_acc": test_acc,
            "test_loss": test_loss,
            "epochs": self.epoch,
            "steps": self.global_step,
            "train_seconds": self.train_seconds,
            "images_per_s": self.images_seen / self.train_seconds if self.train_seconds else None,
        }

    # --- checkpoints --------------------------------------------------------------------------
    def _dropout_states(self) -> dict[str, torch.Tensor]:
        return {name: m._rng_state for name, m in self.model.named_modules()
                if hasattr(m, "_rng_state")}

    def save(self, name: str) -> None:
        state = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "train_seconds": self.train_seconds,
            "images_seen": self.images_seen,
            "seed": self.cfg.seed,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "schedule": self.schedule.state_dict() if self.schedule else None,
            "dropout_rng": self._dropout_states(),
            "history": self.history.rows,
            "config": self.cfg.config,
        }
        checkpoint.save(self.ckpt_dir, name, self.model.state_dict(), state)

    def resume(self, path: str | Path) -> None:
        """Continue exactly where checkpoint ``path`` stopped (weights, optimizer, scaler,
        schedule, dropout RNG, epoch counters, history)."""
        weights, state = checkpoint.load(path)
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if self.schedule is not None and state["schedule"] is not None:
            self.schedule.load_state_dict(state["schedule"])
        for name, m in self.model.named_modules():
            if name in state["dropout_rng"]:
                m._rng_state.copy_(state["dropout_rng"][name])  # once, not in the step
        for key in ("epoch", "global_step", "best_val", "best_epoch", "bad_epochs",
                    "train_seconds", "images_seen"):
            setattr(self, key, state[key])
        self.history = History(self.run_dir, state["history"])
