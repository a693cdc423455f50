"""The training loop: epochs of device-resident steps, evaluation, best-model selection, early
stopping, checkpoints, resume. Knows nothing of Hydra: ``train/run.py`` builds its parts.

One training step (``Trainer.train_step``) is a fixed sequence of our kernels — gather +
augment, the convs' 16-bit weight copies (one launch, nn/weight_casts.py), forward, loss,
backward, unscale + inf check, fused optimizer update, loss-scale update, LR schedule — with
no host sync and no torch compute op; metrics accumulate on the device and are read once per
epoch.

On a CUDA device (``TrainerConfig.cuda_graph``, the default) the gather and that step are
captured once in a CUDA graph (``train/cuda_graph.py``) and replayed for every full batch;
evaluation of full batches is captured too. A partial last batch runs eagerly. Results are
those of the eager loop.

Ctrl-C stops at the next step boundary and saves ``last`` with the position inside the epoch
(batch, meter sums), so ``resume`` continues mid-epoch as if never interrupted.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tritoncnn import runtime
from tritoncnn.data.loader import GPULoader
from tritoncnn.nn import CrossEntropyLoss, Module
from tritoncnn.nn.weight_casts import WeightCasts
from tritoncnn.optim import GradScaler, Optimizer
from tritoncnn.train import checkpoint, cuda_graph
from tritoncnn.train.cuda_graph import CudaGraphStep
from tritoncnn.train.metrics import DeviceMeter, History

if TYPE_CHECKING:
    from tritoncnn.train.distributed import Distributed

log = runtime.log

# Eager training steps before the capture: the first allocates the gradients (its backward
# kernels write rather than accumulate), the second runs -- and so compiles and tunes -- the
# steady-state kernels the graph records; capture then compiles nothing.
TRAIN_WARMUP = 2


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
    cuda_graph: bool = True  # replay captured steps on a CUDA device (ignored in the interpreter)
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
        dist: Distributed | None = None,
    ) -> None:
        self.model, self.optimizer, self.scaler, self.schedule = model, optimizer, scaler, schedule
        # data parallel (train/distributed.py): None runs the single-process loop unchanged
        self.dist = dist
        self.is_main = dist is None or dist.is_main
        if dist is not None:
            _check_sharded(train, dist)
            if dist.model is not model:
                from tritoncnn.train.distributed import prepare_model

                prepare_model(model, dist)
        self.loss_fn = loss_fn or CrossEntropyLoss()
        # the convs' 16-bit weight copies, refreshed in one launch before each forward
        self.weight_casts = WeightCasts(model)
        self.train_loader, self.val_loader, self.test_loader = train, val, test
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        if self.is_main:  # metrics.csv and curves.png go here from the first epoch on
            self.run_dir.mkdir(parents=True, exist_ok=True)
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
        # where the epoch being trained stands (None between epochs): saved by an interrupt
        self._pos: dict[str, Any] | None = None
        self._segment_t0 = 0.0  # when this process started training the current epoch
        self._resume_pos: dict[str, Any] | None = None  # a mid-epoch checkpoint's position
        self._stop_requested = False  # Ctrl-C seen: stop at the next step boundary
        self._hard_interrupt = False  # a second Ctrl-C: stopped mid-step, state inconsistent
        self._train_graph: CudaGraphStep | None = None
        self._eval_graphs: dict[int, tuple[GPULoader, CudaGraphStep]] = {}

    # --- one step ---------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward, loss, backward and update on one batch; no host sync."""
        with self.weight_casts.refreshed(x.dtype):
            logits = self.model(x)
        loss = self.loss_fn(logits, y)
        self.meter.add(loss, logits, y)
        scale = self.scaler.scale_tensor if self.scaler is not None else None
        self.model.backward(self.loss_fn.backward(grad_scale=scale))
        if self.dist is not None:  # data parallel: average the flat gradient bucket
            self.dist.all_reduce_gradients()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # unscale, inf check, masked update
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.schedule is not None and self.cfg.schedule_unit == "iteration":
            self.schedule.step()
        self.optimizer.zero_grad(set_to_none=False)  # keep grads allocated: one fill launch

    # --- CUDA graphs ------------------------------------------------------------------------
    @property
    def use_graphs(self) -> bool:
        """Full batches run as captured CUDA graphs (``cfg.cuda_graph`` on a CUDA device; not
        with the loss's opt-in target check, a host sync per step)."""
        return bool(self.cfg.cuda_graph) and cuda_graph.enabled() and not self.loss_fn.check_targets

    def reset_graphs(self) -> None:
        """Forget the captured graphs (after something they read was re-allocated)."""
        self._train_graph = None
        self._eval_graphs.clear()

    def _gather_and_train(self) -> None:
        """The training graph's body: gather the batch at the loader's device step, step on it."""
        x, y = self.train_loader.next_batch()
        self.train_step(x, y)

    def _eval_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with self.weight_casts.refreshed(x.dtype):
            logits = self.model(x)
        self.meter.add(self.loss_fn(logits, y), logits, y)

    def _train_batch(self, rows: int) -> None:
        """One step on the next batch, of which ``rows`` are real samples."""
        loader = self.train_loader
        if rows == loader.batch_size and self.use_graphs:
            if self._train_graph is None:
                self._train_graph = CudaGraphStep(self._gather_and_train, TRAIN_WARMUP)
            self._train_graph()
            return
        x, y = loader.next_batch()
        if rows < loader.batch_size:  # the partial last batch: eager, on a view
            x, y = x[:rows], y[:rows]
        self.train_step(x, y)

    def _eval_batch(self, loader: GPULoader, rows: int) -> None:
        if rows == loader.batch_size and self.use_graphs:
            entry = self._eval_graphs.get(id(loader))
            if entry is None:

                def body(loader=loader):
                    self._eval_step(*loader.next_batch())

                entry = self._eval_graphs[id(loader)] = (loader, CudaGraphStep(body))
            entry[1]()
            return
        x, y = loader.next_batch()
        if rows < loader.batch_size:
            x, y = x[:rows], y[:rows]
        self._eval_step(x, y)

    # --- epochs -------------------------------------------------------------------------------
    def _batches_per_epoch(self) -> int:
        n = len(self.train_loader)
        if self.cfg.limit_train_batches:
            n = min(n, int(self.cfg.limit_train_batches))
        return n

    def _meter_sums(self) -> tuple[float, int]:
        """This rank's raw meter sums (loss, correct): a host read, for checkpoints."""
        return float(self.meter.loss_sum.cpu()), int(self.meter.correct.cpu())

    def _start_epoch(self) -> dict[str, Any]:
        """Position the loader and meter at the epoch's start, or where a checkpoint left it."""
        loader = self.train_loader
        loader.set_epoch(self.epoch)  # the permutation and augmentation draws of this epoch
        pos, self._resume_pos = self._resume_pos, None
        if pos is None:
            self.meter.reset()
            skipped = self.scaler.skipped_steps() if self.scaler else 0
            return {"batch": 0, "samples": 0, "seconds": 0.0, "skipped_before": skipped}
        loader.seek(int(pos["batch"]))
        self.meter.loss_sum.copy_(torch.tensor(float(pos["loss_sum"]), dtype=torch.float32))
        self.meter.correct.copy_(torch.tensor(int(pos["correct"]), dtype=torch.int64))
        return {k: pos[k] for k in ("batch", "samples", "seconds", "skipped_before")}

    def _train_epoch(self) -> dict[str, float]:
        from tqdm import tqdm

        self.model.train()
        self.optimizer.sync_hyperparameters()  # host edits reach the device (replays skip it)
        n_batches = self._batches_per_epoch()
        pos = self._pos = self._start_epoch()
        bar = tqdm(
            total=n_batches,
            initial=pos["batch"],
            desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
            disable=not (self.cfg.progress and self.is_main),
            leave=False,
            unit="batch",
        )
        self._segment_t0 = time.perf_counter()
        for i in range(pos["batch"], n_batches):
            rows = self.train_loader._rows(i)
            if rows == 0:  # data parallel without drop_last: no share of the last batch
                self.train_loader.next_batch()
            else:
                self._train_batch(rows)
                self.global_step += 1
            pos["batch"], pos["samples"] = i + 1, pos["samples"] + rows
            bar.update(1)
            if self._stop_requested:
                raise KeyboardInterrupt
        if not runtime.INTERPRETED:
            torch.cuda.synchronize()
        pos["seconds"] += time.perf_counter() - self._segment_t0
        bar.close()
        # kept until the epoch is counted: an interrupt before then resumes past the loop
        pos["loss_sum"], pos["correct"] = self._meter_sums()
        seconds = pos["seconds"]
        loss, acc, samples = self._read_meter(n_batches, pos["samples"])
        skipped = (self.scaler.skipped_steps() - pos["skipped_before"]) if self.scaler else 0
        return {
            "train_loss": loss,
            "train_acc": acc,
            "images_per_s": samples / seconds if seconds > 0 else 0.0,
            "epoch_s": seconds,
            "skipped_steps": skipped,
            "samples": samples,  # not a metrics.csv column
        }

    def _position_state(self) -> dict[str, Any] | None:
        """The mid-epoch position for a checkpoint (None at an epoch boundary)."""
        pos = self._pos
        if pos is None:
            return None
        out = dict(pos)
        if "loss_sum" not in out:  # still inside the loop: the meter holds this epoch's sums
            if not runtime.INTERPRETED:
                torch.cuda.synchronize()
            out["seconds"] += time.perf_counter() - self._segment_t0
            out["loss_sum"], out["correct"] = self._meter_sums()
        return out

    def evaluate(self, loader: GPULoader) -> tuple[float, float]:
        """(mean loss, accuracy) of the model in eval mode over a whole loader."""
        if self.dist is not None:  # data parallel: evaluate with rank 0's BN running stats
            self.dist.broadcast_buffers(self.model)
        self.model.eval()
        self.meter.reset()
        loader.set_epoch(loader.epoch)
        batches = samples = 0
        for i in range(len(loader)):
            rows = loader._rows(i)
            if rows == 0:  # data parallel: no share of the last batch
                loader.next_batch()
                continue
            self._eval_batch(loader, rows)
            batches += 1
            samples += rows
        loader.epoch += 1
        self.model.train()
        return self._read_meter(batches, samples)[:2]

    def _read_meter(self, batches: int, samples: int) -> tuple[float, float, int]:
        """(mean batch loss, accuracy, samples) of this epoch, over every rank: one host read
        and, data parallel, one collective."""
        loss, acc = self.meter.read(batches, samples)
        if self.dist is None:
            return loss, acc, samples
        loss_sum, correct, batches, samples = self.dist.sum_values(
            [loss * batches, acc * samples, batches, samples]
        )
        return loss_sum / max(batches, 1), round(correct) / max(samples, 1), int(samples)

    # --- the run ----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train for the configured epochs (from where a resume left off); returns the summary."""
        restore_sigint = self._defer_sigint()
        try:
            while self.epoch < self.cfg.epochs:
                row = self._train_epoch()
                val_loss, val_acc = (
                    self.evaluate(self.val_loader)
                    if self.val_loader
                    else (row["train_loss"], row["train_acc"])
                )
                # a non-finite validation loss means the weights themselves went bad
                if not (math.isfinite(row["train_loss"]) and math.isfinite(val_loss)):
                    raise TrainingDivergedError(
                        f"the loss became NaN/inf in epoch {self.epoch + 1} (train "
                        f"{row['train_loss']}, val {val_loss}); stopped. The last good checkpoint "
                        f"is kept in {self.ckpt_dir}. Lower optimizer.lr or use precision=fp32."
                    )
                self.epoch += 1
                self._pos = None  # an epoch boundary again
                self.train_seconds += row["epoch_s"]
                self.images_seen += row["samples"]
                lr = self.optimizer.get_lrs()[0]
                self._step_epoch_schedule(val_acc)
                if self.is_main:  # data parallel: rank 0 writes metrics.csv
                    self.history.append(
                        {
                            "epoch": self.epoch,
                            **row,
                            "val_loss": val_loss,
                            "val_acc": val_acc,
                            "lr": lr,
                        }
                    )
                improved = val_acc > self.best_val + self.cfg.min_delta
                if improved:
                    self.best_val, self.best_epoch, self.bad_epochs = val_acc, self.epoch, 0
                    self.save("best")
                else:
                    self.bad_epochs += 1
                self.save("last")
                self._log_main(
                    "epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.0f img/s%s",
                    self.epoch,
                    row["train_loss"],
                    row["train_acc"],
                    val_loss,
                    val_acc,
                    row["images_per_s"],
                    f" | {row['skipped_steps']} skipped steps" if self.scaler else "",
                )
                if self._stop_requested:  # Ctrl-C during evaluation: stop at the epoch's end
                    raise KeyboardInterrupt
                if self.cfg.patience is not None and self.bad_epochs > self.cfg.patience:
                    self._log_main(
                        "early stopping: no val improvement in %d epochs", self.bad_epochs
                    )
                    break
        except KeyboardInterrupt:
            if self._hard_interrupt:  # stopped inside a step: "last" keeps the previous state
                if self.is_main:
                    log.warning("interrupted mid-step: %s not updated", self.ckpt_dir / "last")
            else:
                self.save("last")
                if self.is_main:
                    where = (
                        f" at batch {self._pos['batch']} of epoch {self.epoch + 1}"
                        if self._pos is not None
                        else ""
                    )
                    log.warning(
                        "interrupted: saved %s%s", self.ckpt_dir / "last.safetensors", where
                    )
            raise
        finally:
            restore_sigint()
            if self.is_main:
                self.history.plot()
        return self.finish()

    def _defer_sigint(self) -> Callable[[], None]:
        """Make Ctrl-C stop the run at the next step boundary (so ``last`` is a consistent
        state); a second Ctrl-C interrupts at once. Returns the function restoring the previous
        handler. Only the main thread of a single process can do this (data-parallel ranks
        could stop at different steps): elsewhere Ctrl-C behaves as usual."""
        self._stop_requested = self._hard_interrupt = False
        if self.dist is not None or threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = signal.getsignal(signal.SIGINT)
        if previous is None:  # installed outside Python: put Python's default back afterwards
            previous = signal.default_int_handler

        def on_sigint(signum, frame):
            if self._stop_requested:
                self._hard_interrupt = True
                raise KeyboardInterrupt
            self._stop_requested = True
            log.warning("Ctrl-C: stopping after this step and saving (press again to stop now)")

        signal.signal(signal.SIGINT, on_sigint)
        return lambda: signal.signal(signal.SIGINT, previous)

    def _log_main(self, *args) -> None:
        if self.is_main:
            log.info(*args)

    def _step_epoch_schedule(self, val_acc: float) -> None:
        if self.schedule is None:
            return
        if getattr(self.schedule, "needs_metric", False):
            self.schedule.step(val_acc)
        elif self.cfg.schedule_unit == "epoch":
            self.schedule.step()

    def finish(self) -> dict[str, Any]:
        """Evaluate the best checkpoint on the test split; the run's summary.

        The last weights are evaluated on the test split too (``test_acc_last``): the test
        accuracy at the best-validation epoch carries that selection's noise, the last one
        doesn't, so comparisons between runs can use both.
        """
        test_loss = test_acc = test_acc_last = None
        if self.test_loader is not None and self.epoch > 0:
            _, test_acc_last = self.evaluate(self.test_loader)
        if self.best_epoch > 0 and self.is_main and (self.ckpt_dir / "best.json").exists():
            weights, _ = checkpoint.load(self.ckpt_dir / "best")
            self.model.load_state_dict(weights)
        if self.best_epoch > 0 and self.dist is not None:  # rank 0 read it: share the weights
            self.dist.broadcast_model(self.model)
        if self.test_loader is not None:
            test_loss, test_acc = self.evaluate(self.test_loader)
        return {
            "best_val_acc": self.best_val if self.best_epoch > 0 else None,
            "best_epoch": self.best_epoch,
            "test_acc": test_acc,
            "test_loss": test_loss,
            "test_acc_last": test_acc_last,
            "epochs": self.epoch,
            "steps": self.global_step,
            "train_seconds": self.train_seconds,
            "images_per_s": self.images_seen / self.train_seconds if self.train_seconds else None,
        }

    # --- checkpoints --------------------------------------------------------------------------
    def _dropout_states(self) -> dict[str, torch.Tensor]:
        return {
            name: m._rng_state for name, m in self.model.named_modules() if hasattr(m, "_rng_state")
        }

    def save(self, name: str) -> None:
        if not self.is_main:  # data parallel: rank 0 writes; the state is global
            return
        state = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "train_seconds": self.train_seconds,
            "images_seen": self.images_seen,
            "position": self._position_state(),  # inside an epoch (Ctrl-C), else None
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
        schedule, dropout RNG, epoch counters, history; inside an epoch: its batch and meter
        sums)."""
        weights, state = checkpoint.load(path)
        self.reset_graphs()  # the schedule's load re-allocates its table: capture again
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if self.schedule is not None and state["schedule"] is not None:
            self.schedule.load_state_dict(state["schedule"])
        for name, m in self.model.named_modules():
            if name in state["dropout_rng"]:
                m._rng_state.copy_(state["dropout_rng"][name])  # once, not in the step
        for key in (
            "epoch",
            "global_step",
            "best_val",
            "best_epoch",
            "bad_epochs",
            "train_seconds",
            "images_seen",
        ):
            setattr(self, key, state[key])
        self.history = History(self.run_dir, state["history"])
        self._resume_pos = state.get("position")


def _check_sharded(train: GPULoader, dist: Distributed) -> None:
    """A data-parallel step needs every rank, every step: one shard per rank, full batches."""
    if train.world_size != dist.world_size or train.rank != dist.rank:
        raise ValueError(
            f"the train loader is shard {train.rank} of {train.world_size} but this process is "
            f"rank {dist.rank} of {dist.world_size}; build it with GPULoader(rank=, world_size=)"
        )
    if dist.world_size > 1 and not train.drop_last:
        raise ValueError("data-parallel training needs a train loader with drop_last=True")
