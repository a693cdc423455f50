"""Data-parallel scaling: images/s of the whole training step at 1, 2, 4, 8 GPUs via torchrun.

For each model and GPU count this launches ``torchrun --standalone --nproc_per_node=N`` on this
script's worker mode, which trains through ``Trainer.fit`` (fp16 + dynamic loss scaling, SGD
momentum, the GPU-resident loader's gather + the CUDA-graph step unless ``--no-graph``, one flat
NCCL all-reduce per step) on synthetic CIFAR-shaped uint8 data: epoch 1 warms up (compiles,
captures), epoch 2 is timed by the trainer (global images / rank 0's seconds). ``--batch`` is
per GPU, so the global batch grows with N (weak scaling, as torch's DDP is used).

Writes ``scaling_<gpu>.csv`` to ``--out`` (default ``$OUT``, else ``benchmarks/results/``) with
images/s, ms/step, speedup and scaling efficiency (images/s at N / (N x images/s at 1)), and
each run's log beside it. GPU counts above the visible GPUs are skipped (a row says so).

    python benchmarks/scaling.py [--gpus 1 2 4 8] [--models baseline resnet18] [--batch 256]
                                 [--steps 40] [--no-graph] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIELDS = [
    "gpu",
    "n_gpus",
    "model",
    "batch_per_gpu",
    "global_batch",
    "precision",
    "cuda_graph",
    "images_per_s",
    "ms_per_step",
    "speedup",
    "efficiency",
    "status",
    "torch",
    "triton",
    "date",
]


# --- worker: one rank ------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from tritoncnn import models
    from tritoncnn.data.loader import GPULoader
    from tritoncnn.optim import SGD, GradScaler
    from tritoncnn.train import distributed
    from tritoncnn.train.trainer import Trainer, TrainerConfig

    dist = distributed.setup(distributed.DistributedConfig(enabled=True))
    try:
        n = dist.world_size * args.batch * args.steps  # one epoch = --steps global steps
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, n)
        loader = GPULoader(
            images,
            labels,
            args.batch,
            (0.5,) * 3,
            (0.25,) * 3,
            shuffle=True,
            drop_last=True,
            dtype=torch.float16,
            rank=dist.rank,
            world_size=dist.world_size,
        )
        torch.manual_seed(0)
        model = models.build(args.model, num_classes=10, in_channels=3)
        opt = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Trainer(
                model, opt, loader, None, None, run_dir,
                TrainerConfig(epochs=2, progress=False, cuda_graph=args.graph),
                scaler=GradScaler(), dist=dist,
            )  # fmt: skip
            trainer.fit()
            rows = trainer.history.rows
        if dist.is_main:
            Path(args.result).write_text(json.dumps({
                "images_per_s": float(rows[-1]["images_per_s"]),
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                "torch": torch.__version__,
            }))  # fmt: skip
    finally:
        dist.shutdown()


# --- driver: one torchrun per (model, GPU count) ---------------------------------------------
def run_one(model: str, n_gpus: int, args: argparse.Namespace, out: Path) -> dict:
    result = out / f"scaling_{model}_{n_gpus}gpu.json"
    log = out / f"scaling_{model}_{n_gpus}gpu.log"
    result.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n_gpus}",
        __file__,
        "--worker",
        "--model",
        model,
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--result",
        str(result),
    ]
    if not args.graph:
        cmd.append("--no-graph")
    print(f"[{model} x{n_gpus}] {' '.join(cmd)}", flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(
            cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout
        )
    if proc.returncode != 0 or not result.exists():
        tail = log.read_text().splitlines()[-30:]
        print(f"[{model} x{n_gpus}] FAILED (rc {proc.returncode}); log {log}:", *tail, sep="\n")
        return {"status": f"failed rc={proc.returncode} (see {log.name})"}
    return {**json.loads(result.read_text()), "status": "ok"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--models", nargs="+", default=["baseline", "resnet18"])
    p.add_argument("--model", default="resnet18", help=argparse.SUPPRESS)  # worker
    p.add_argument("--batch", type=int, default=256, help="per GPU")
    p.add_argument("--steps", type=int, default=40, help="timed global steps")
    p.add_argument("--no-graph", dest="graph", action="store_false")
    p.add_argument("--timeout", type=float, default=900, help="seconds per torchrun")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks/results"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    import torch
    import triton

    visible = torch.cuda.device_count()
    if visible == 0:
        sys.exit("scaling.py needs CUDA GPUs (torchrun starts one process per GPU)")
    gpu = torch.cuda.get_device_name(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    rows = []
    for model in args.models:
        base = None
        for n in sorted(args.gpus):
            row = {
                "gpu": gpu,
                "n_gpus": n,
                "model": model,
                "batch_per_gpu": args.batch,
                "global_batch": n * args.batch,
                "precision": "fp16",
                "cuda_graph": args.graph,
                "torch": torch.__version__,
                "triton": triton.__version__,
                "date": date,
            }
            if n > visible:
                rows.append({**row, "status": f"skipped: {visible} GPU(s) visible"})
                continue
            r = run_one(model, n, args, out)
            row["status"] = r["status"]
            if r["status"] == "ok":
                ips = r["images_per_s"]
                base = ips if n == 1 else base
                row.update(
                    images_per_s=round(ips, 1), ms_per_step=round(1000 * n * args.batch / ips, 3)
                )
                if base:
                    row.update(speedup=round(ips / base, 3), efficiency=round(ips / (n * base), 3))
            rows.append(row)
            print(
                {
                    k: row.get(k)
                    for k in ("model", "n_gpus", "images_per_s", "efficiency", "status")
                },
                flush=True,
            )
    path = out / f"scaling_{gpu.replace(' ', '_')}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
