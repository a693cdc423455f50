"""Build a training run from a composed config (Hydra's DictConfig or a plain dict) and run it.

``scripts/train.py`` is a thin Hydra entry point around ``main(cfg, run_dir)``; tests call
``main`` directly too. Every impossible value is rejected here, before any work, with one
line naming the fix (``ConfigError``).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tritoncnn import data, models, runtime
from tritoncnn.data.loader import Augmentation, GPULoader
from tritoncnn.nn import CrossEntropyLoss
from tritoncnn.optim import OPTIMIZERS, SCHEDULES, GradScaler
from tritoncnn.train import distributed
from tritoncnn.train.trainer import Trainer, TrainerConfig, TrainingDivergedError

log = runtime.log

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# LR schedules stepped once per iteration; the others step once per epoch (torch's habit).
PER_ITERATION = ("cosine", "onecycle")
_DATASET_KEYS = ("name", "root", "mean", "std", "val_fraction")


__all__ = ["ConfigError", "TrainingDivergedError", "main", "validate"]


class ConfigError(ValueError):
    """An impossible or unknown configuration value."""


def _plain(cfg) -> dict[str, Any]:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(cfg)


def resolve_precision(name: str) -> torch.dtype:
    if name == "auto":
        return torch.float32 if runtime.INTERPRETED else torch.float16
    if name not in PRECISIONS:
        raise ConfigError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {name!r}")
    if name == "bf16" and not runtime.bf16_supported():
        raise ConfigError("precision=bf16 needs a GPU with bf16 (sm_80+); use precision=fp16")
    return PRECISIONS[name]


def validate(cfg: dict[str, Any]) -> None:
    """Reject impossible values before any work (one line each)."""
    ds, tr, opt, sch = cfg["dataset"], cfg["trainer"], cfg["optimizer"], cfg["scheduler"]
    if ds["name"] not in data.DATASETS:
        raise ConfigError(f"unknown dataset {ds['name']!r}; choose one of {data.names()}")
    model_name = cfg["model"].get("name")
    if model_name not in models.names():
        raise ConfigError(f"unknown model {model_name!r}; choose one of {models.names()}")
    if opt["name"] not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {opt['name']!r}; choose one of {sorted(OPTIMIZERS)}")
    if sch["name"] not in SCHEDULES:
        raise ConfigError(f"unknown scheduler {sch['name']!r}; choose one of {sorted(SCHEDULES)}")
    if not opt["lr"] > 0:
        raise ConfigError(f"optimizer.lr must be > 0, got {opt['lr']}")
    if opt.get("weight_decay", 0) < 0:
        raise ConfigError(f"optimizer.weight_decay must be >= 0, got {opt['weight_decay']}")
    if not (isinstance(tr["batch_size"], int) and tr["batch_size"] > 0):
        raise ConfigError(f"trainer.batch_size must be a positive integer, got {tr['batch_size']}")
    if not (isinstance(tr["epochs"], int) and tr["epochs"] > 0):
        raise ConfigError(f"trainer.epochs must be a positive integer, got {tr['epochs']}")
    if not 0 <= ds["val_fraction"] < 1:
        raise ConfigError(f"dataset.val_fraction must be in [0, 1), got {ds['val_fraction']}")
    lim = tr.get("limit_train_batches")
    if lim is not None and not (isinstance(lim, int) and lim > 0):
        raise ConfigError(f"trainer.limit_train_batches must be a positive integer, got {lim}")
    in_ch = cfg["model"].get("in_channels", ds["channels"])
    if in_ch != ds["channels"]:
        raise ConfigError(
            f"model.in_channels={in_ch} but dataset {ds['name']} has {ds['channels']} channel(s); "
            f"drop the model.in_channels override"
        )
    resolve_precision(cfg["precision"]["name"])
    try:
        distributed.DistributedConfig.from_dict(tr.get("distributed")).wanted()
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def split_train_val(x, y, fraction: float, seed: int):
    """A seeded split of the official train split into train and validation."""
    if fraction == 0:
        return (x, y), None
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(round(fraction * len(x))))
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def build_optimizer(cfg_opt: dict[str, Any], model):
    kw = {k: v for k, v in cfg_opt.items() if k not in ("name",)}
    if "betas" in kw:
        kw["betas"] = tuple(kw["betas"])
    return OPTIMIZERS[cfg_opt["name"]](model.parameters(), **kw)


def build_schedule(cfg_sch: dict[str, Any], optimizer, epochs: int, steps_per_epoch: int):
    """The LR schedule and when it steps ('iteration' or 'epoch')."""
    name = cfg_sch["name"]
    kw = {k: v for k, v in cfg_sch.items() if k not in ("name",)}
    total = epochs * steps_per_epoch
    if name == "cosine":
        warmup = int(round(kw.pop("warmup_epochs", 0) * steps_per_epoch))
        sched = SCHEDULES[name](
            optimizer, warmup_steps=min(warmup, total - 1), total_steps=total, **kw
        )
    elif name == "onecycle":
        kw["max_lr"] = kw.get("max_lr") or optimizer.param_groups[0]["lr"]
        sched = SCHEDULES[name](optimizer, total_steps=total, **kw)
    elif name == "plateau":
        sched = SCHEDULES[name](optimizer, mode="max", **kw)
    else:
        sched = SCHEDULES[name](optimizer, **kw)
    return sched, "iteration" if name in PER_ITERATION else "epoch"


def main(cfg, run_dir: str | Path) -> dict[str, Any]:
    """Train one configuration; writes metrics, curves, checkpoints and summary.json.

    Under torchrun (or ``trainer.distributed.enabled=true``) every process runs this with its
    rank: ``trainer.batch_size`` is per GPU, rank 0 writes the files.
    """
    cfg = _plain(cfg)
    validate(cfg)
    # data parallel: join the process group and pick this rank's GPU before any allocation
    dist_cfg = distributed.DistributedConfig.from_dict(cfg["trainer"].get("distributed"))
    dist = distributed.setup(dist_cfg)
    try:
        return _main(cfg, run_dir, dist)
    finally:
        if dist is not None:
            dist.shutdown()


def _main(cfg: dict[str, Any], run_dir: str | Path, dist) -> dict[str, Any]:
    ds_cfg, tr, aug_cfg = cfg["dataset"], cfg["trainer"], cfg["augmentation"]
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed = int(tr["seed"])
    torch.manual_seed(seed)
    from tritoncnn.nn import dropout

    dropout.manual_seed(seed)
    dtype = resolve_precision(cfg["precision"]["name"])
    wall0 = time.perf_counter()

    extra = {k: v for k, v in ds_cfg.items() if k not in _DATASET_KEYS}
    x, y = data.load(ds_cfg["name"], ds_cfg["root"], "train", **extra)
    if x.shape[-1] != ds_cfg["channels"]:
        raise ConfigError(
            f"dataset.channels={ds_cfg['channels']} but the files hold {x.shape[-1]}-channel images"
        )
    test = data.load(ds_cfg["name"], ds_cfg["root"], "test", **extra)
    (xt, yt), val = split_train_val(x, y, ds_cfg["val_fraction"], seed)
    norm = (ds_cfg["mean"], ds_cfg["std"])
    bs = tr["batch_size"]
    eval_bs = tr.get("eval_batch_size") or max(bs, 256)
    # data parallel: each rank gathers its shard; a training step needs full batches on all
    shard = {"rank": dist.rank, "world_size": dist.world_size} if dist else {}
    drop_last = tr.get("drop_last", False) or (dist is not None and dist.world_size > 1)
    train_loader = GPULoader(
        xt,
        yt,
        bs,
        *norm,
        shuffle=True,
        drop_last=drop_last,
        augmentation=Augmentation(**aug_cfg),
        dtype=dtype,
        seed=seed,
        **shard,
    )
    if dist is not None and len(train_loader) == 0:
        raise ConfigError(
            f"trainer.batch_size={bs} x {shard.get('world_size', 1)} rank(s) is "
            f"more than the {len(yt)} training images; lower trainer.batch_size"
        )
    val_loader = (
        GPULoader(*val, eval_bs, *norm, shuffle=False, dtype=dtype, **shard) if val else None
    )
    test_loader = GPULoader(*test, eval_bs, *norm, shuffle=False, dtype=dtype, **shard)

    from hydra.utils import instantiate

    model = instantiate(cfg["model"])
    optimizer = build_optimizer(cfg["optimizer"], model)
    steps = len(train_loader)
    if tr.get("limit_train_batches"):
        steps = min(steps, tr["limit_train_batches"])
    schedule, unit = build_schedule(cfg["scheduler"], optimizer, tr["epochs"], steps)
    scaler = None
    if dtype == torch.float16:
        scaler = GradScaler(**cfg["precision"].get("loss_scale", {}))
    es = tr.get("early_stopping") or {}
    trainer = Trainer(
        model,
        optimizer,
        train_loader,
        val_loader,
        test_loader,
        run_dir,
        TrainerConfig(
            epochs=tr["epochs"],
            limit_train_batches=tr.get("limit_train_batches"),
            patience=es.get("patience"),
            min_delta=es.get("min_delta", 0.0),
            schedule_unit=unit,
            progress=tr.get("progress", True),
            seed=seed,
            cuda_graph=tr.get("cuda_graph", True),
            config=cfg,
        ),
        loss_fn=CrossEntropyLoss(label_smoothing=cfg.get("label_smoothing", 0.0)),
        scaler=scaler,
        schedule=schedule,
        dist=dist,
    )
    if tr.get("resume"):
        trainer.resume(tr["resume"])
        log.info("resumed from %s at epoch %d", tr["resume"], trainer.epoch)
    summary = trainer.fit()
    summary.update(
        wall_seconds=time.perf_counter() - wall0,
        model=cfg["model"]["name"],
        dataset=ds_cfg["name"],
        precision=str(dtype).replace("torch.", ""),
        device=str(runtime.DEVICE),
        world_size=dist.world_size if dist else 1,
        rank=dist.rank if dist else 0,
    )
    if trainer.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def append_sweep_row(sweep_dir: str | Path, overrides: list[str], summary: dict[str, Any]) -> None:
    """One row per multirun job in ``<sweep dir>/sweep_summary.csv`` (rank 0's, data parallel)."""
    if summary.get("rank", 0) != 0:
        return
    path = Path(sweep_dir) / "sweep_summary.csv"
    fields = ["overrides", "best_val_acc", "test_acc", "wall_seconds", "images_per_s"]
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow({"overrides": " ".join(overrides), **{k: summary.get(k) for k in fields[1:]}})
