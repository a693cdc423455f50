"""The seed's training recipe in plain torch, done well: the reference we measure against.

Reads the same composed config that ``tritoncnn.train.run.main`` reads (dataset, model, optimizer,
trainer, label_smoothing) and follows the same conventions, so the two runs differ only in who
computes:

- data: ``tritoncnn.data.load`` (the official files), ``split_train_val`` with
  ``dataset.val_fraction`` and ``trainer.seed``; the uint8 images live on the GPU, each epoch's
  order is a ``torch.randperm`` on the device, and each batch is gathered and normalised there;
- model: the tritoncnn model of ``cfg.model`` turned into its torch.nn twin (``to_torch``), so
  architecture and initial weights are identical;
- optimizer: ``torch.optim.Adam``/``AdamW``/``SGD`` with ``fused=True`` on the GPU;
- precision: ``fp32`` (torch's defaults, NCHW), ``amp`` (fp16 autocast + GradScaler,
  channels_last) or ``bf16`` (bf16 autocast, channels_last); ``mode`` is ``eager`` or a
  ``torch.compile`` mode (``compile``, ``reduce-overhead``, ``max-autotune``);
- loop: metrics summed on the device and read once per epoch; evaluation on the validation split
  after every epoch; the test accuracy of the best-validation epoch's weights.

    from benchmarks.torch_seed_recipe import train
    result = train(cfg_dict, precision="amp", mode="eager")
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

PRECISIONS = ("fp32", "amp", "bf16")
MODES = ("eager", "compile", "reduce-overhead", "max-autotune")


def _model(cfg_model: dict[str, Any]) -> torch.nn.Module:
    """The torch.nn twin of the tritoncnn model the config describes (same initial weights)."""
    from tritoncnn import models
    from tritoncnn.export import to_torch

    kw = {k: v for k, v in cfg_model.items() if k != "_target_"}
    return to_torch(models.build(**kw))


def _optimizer(cfg_opt: dict[str, Any], net: torch.nn.Module, fused: bool):
    """torch.optim's twin of ``optimizer.*`` (no weight decay on 1-d params when asked, as ours)."""
    name, wd = cfg_opt["name"], float(cfg_opt.get("weight_decay", 0.0))
    params = list(net.parameters())
    groups: list[dict[str, Any]] = [{"params": params}]
    if wd and cfg_opt.get("no_decay_bn_bias", True):
        groups = [
            {"params": [p for p in params if p.dim() > 1]},
            {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
        ]
    kw = {"lr": float(cfg_opt["lr"]), "weight_decay": wd}
    if fused:
        kw["fused"] = True
    if name in ("adam", "adamw"):
        kw.update(
            betas=tuple(cfg_opt.get("betas", (0.9, 0.999))), eps=float(cfg_opt.get("eps", 1e-8))
        )
        return (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(groups, **kw)
    if name == "sgd":
        kw.update(
            momentum=float(cfg_opt.get("momentum", 0.0)),
            nesterov=bool(cfg_opt.get("nesterov", False)),
        )
        return torch.optim.SGD(groups, **kw)
    raise ValueError(f"the torch recipe knows optimizer=adam|adamw|sgd, not {name!r}")


def _check_recipe(cfg: dict[str, Any]) -> None:
    """The torch twin covers the seed recipe's features; refuse what it would silently skip."""
    if cfg["scheduler"]["name"] != "constant":
        raise ValueError("the torch recipe supports scheduler=constant only (the seed recipe)")
    aug = cfg.get("augmentation", {})
    if any(v for k, v in aug.items() if k != "padding_mode"):
        raise ValueError("the torch recipe supports augmentation=none only (the seed recipe)")


def train(
    cfg: dict[str, Any],
    precision: str = "fp32",
    mode: str = "eager",
    device: str | torch.device | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the recipe of ``cfg`` (a resolved plain dict) in torch; returns the summary and the
    per-epoch rows (``epochs``) in the shape of tritoncnn's metrics."""
    from tritoncnn import data
    from tritoncnn.train.run import split_train_val

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _check_recipe(cfg)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    ds, tr = cfg["dataset"], cfg["trainer"]
    seed, bs = int(tr["seed"]), int(tr["batch_size"])
    eval_bs = tr.get("eval_batch_size") or max(bs, 256)
    es = tr.get("early_stopping") or {}
    patience, min_delta = es.get("patience"), float(es.get("min_delta") or 0.0)

    # --- data: uint8 on the device, normalised per batch there -----------------------------
    # the reader's extra keywords, as run.main passes them
    extra = {
        k: v for k, v in ds.items() if k not in ("name", "root", "mean", "std", "val_fraction")
    }
    x, y = data.load(ds["name"], ds["root"], "train", **extra)
    test = data.load(ds["name"], ds["root"], "test", **extra)
    (xtr, ytr), val = split_train_val(x, y, ds["val_fraction"], seed)

    def on_dev(a):
        return torch.as_tensor(a).to(dev)

    xtr, ytr = on_dev(xtr), on_dev(ytr)
    val = (on_dev(val[0]), on_dev(val[1])) if val else None
    test = on_dev(test[0]), on_dev(test[1])
    mean = torch.tensor(ds["mean"], device=dev).view(1, -1, 1, 1)
    std = torch.tensor(ds["std"], device=dev).view(1, -1, 1, 1)
    scale, shift = 1.0 / (255.0 * std), -mean / std
    channels_last = precision != "fp32"
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def batch(images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC rows -> float NCHW (memory in ``fmt``), normalised in place."""
        xb = images.permute(0, 3, 1, 2)
        return xb.to(torch.float32, memory_format=fmt).mul_(scale).add_(shift)

    # --- model, optimizer, precision ---------------------------------------------------------
    torch.manual_seed(seed)
    net = _model(cfg["model"]).to(dev, memory_format=fmt)
    opt = _optimizer(cfg["optimizer"], net, fused=cuda)
    amp_dtype = {"amp": torch.float16, "bf16": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "amp")
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=float(cfg.get("label_smoothing", 0.0)))
    fwd = net if mode == "eager" else torch.compile(net, mode=None if mode == "compile" else mode)

    def autocast():
        return torch.autocast(
            dev.type, dtype=amp_dtype or torch.float16, enabled=amp_dtype is not None
        )

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    @torch.no_grad()
    def evaluate(images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        net.eval()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        n, batches = len(labels), 0
        for i in range(0, n, eval_bs):
            yb = labels[i : i + eval_bs]
            with autocast():
                logits = fwd(batch(images[i : i + eval_bs]))
                loss_sum += loss_fn(logits.float(), yb)
            correct += (logits.argmax(1) == yb).sum()
            batches += 1
        net.train()
        return loss_sum.item() / max(batches, 1), correct.item() / max(n, 1)

    # --- the loop ----------------------------------------------------------------------------
    gen = torch.Generator(device=dev).manual_seed(seed)
    n = len(ytr)
    steps = -(-n // bs)  # the last partial batch is kept, as tritoncnn's loader does
    if tr.get("limit_train_batches"):
        steps = min(steps, int(tr["limit_train_batches"]))
    rows: list[dict[str, Any]] = []
    best_val, best_epoch, bad, best_state, train_s, total_steps = -1.0, 0, 0, None, 0.0, 0
    for epoch in range(1, int(tr["epochs"]) + 1):
        net.train()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        sync()
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=dev, generator=gen)
        seen = 0
        for i in range(steps):
            idx = perm[i * bs : (i + 1) * bs]
            xb, yb = batch(xtr.index_select(0, idx)), ytr.index_select(0, idx)
            with autocast():
                logits = fwd(xb)
                loss = loss_fn(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(1) == yb).sum()
            seen += len(idx)
        sync()
        epoch_s = time.perf_counter() - t0
        train_s += epoch_s
        total_steps += steps
        train_loss, train_acc = loss_sum.item() / steps, correct.item() / seen
        val_loss, val_acc = evaluate(*val) if val else (train_loss, train_acc)
        rows.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "images_per_s": seen / epoch_s,
                "epoch_s": epoch_s,
            }
        )
        log(
            f"torch {precision}/{mode} epoch {epoch}: train loss {train_loss:.4f} acc "
            f"{train_acc:.4f} | val loss {val_loss:.4f} acc {val_acc:.4f} | {seen / epoch_s:.0f} "
            f"img/s"
        )
        if val_acc > best_val + min_delta:
            best_val, best_epoch, bad = val_acc, epoch, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
        if patience is not None and bad > patience:
            break
    _, test_acc_last = evaluate(*test)  # the last weights, as tritoncnn's summary reports
    if best_state is not None:
        net.load_state_dict(best_state)
    test_loss, test_acc = evaluate(*test)
    return {
        "best_val_acc": best_val,
        "best_epoch": best_epoch,
        "test_acc": test_acc,
        "test_acc_last": test_acc_last,
        "test_loss": test_loss,
        "train_seconds": train_s,
        "steps": total_steps,
        "epochs": rows,
    }
