"""The seed's CIFAR-10 recipe end to end: tritoncnn against plain torch, wall time and accuracy.

The recipe is ``experiment=seed_cifar10`` (baseline net, batch 128, Adam 1e-3, 15 epochs, no
augmentation, 10% seeded validation split, test accuracy of the best-validation epoch).

- ``tritoncnn-<fp16|fp32|bf16>[-graph|-eager]`` trains through the real entry point,
  ``tritoncnn.train.run.main(cfg, run_dir)``, with the Hydra config composed from ``conf/``
  (``precision=...``, ``trainer.cuda_graph=true|false``; the default follows the trainer's own
  default, the CUDA-graph step).
- ``torch-<fp32|amp|bf16>[-eager|-compile|-reduce-overhead|-max-autotune]`` trains the identical
  torch.nn twin of the same config with data resident on the GPU, fused Adam, channels_last + AMP
  for ``amp`` (``benchmarks/torch_seed_recipe.py``).

Each run reports training time (the epochs' step loops, synchronised), total wall time (files
read to test accuracy known, evaluation and tritoncnn's per-epoch checkpoints included), best
validation and test accuracy, and peak GPU memory (``torch.cuda.max_memory_allocated`` and
``max_memory_reserved``, reset before each run). By default each run is preceded by a warm-up
of the same configuration (one epoch: every batch shape, the partial last ones too) so that
Triton's JIT compilation, kernel autotuning and cuDNN's autotuning are not timed; its time is
reported as ``warmup_s`` (``--no-warmup`` times a cold start). One CSV row per run goes to
``$OUT/end_to_end_<gpu>.csv`` (else ``benchmarks/results/``), per-epoch rows to
``end_to_end_epochs_<gpu>.csv``, and the accuracy check of issue 4 is printed at the end:
each tritoncnn run against torch at its precision (fp32 vs torch-fp32, fp16/bf16 vs
torch-amp/bf16), within ``--tol`` (1 point).

    python benchmarks/end_to_end.py --data-root /tmp/data/cifar10
    python benchmarks/end_to_end.py --runs tritoncnn-fp16,tritoncnn-fp16-eager,torch-amp-compile
    python benchmarks/end_to_end.py --synthetic 512 --runs torch-fp32 --epochs 1   # smoke, no data
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import logging
import os
import pickle
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tritoncnn import runtime  # noqa: E402  (before triton: picks the interpreter on a CPU)

DEFAULT_RUNS = "torch-fp32,torch-amp,tritoncnn-fp16,tritoncnn-fp32"
PRECISIONS = {"tritoncnn": ("fp16", "fp32", "bf16"), "torch": ("fp32", "amp", "bf16")}
MODES = {
    "tritoncnn": ("graph", "eager"),
    "torch": ("eager", "compile", "reduce-overhead", "max-autotune"),
}
FIELDS = [
    "gpu",
    "torch",
    "triton",
    "date",
    "run",
    "impl",
    "precision",
    "mode",
    "epochs",
    "steps",
    "ms_per_step",
    "train_s",
    "total_s",
    "warmup_s",
    "epoch1_s",
    "epoch_median_s",
    "images_per_s",
    "test_acc",
    "test_acc_last",
    "best_val_acc",
    "best_epoch",
    "peak_mem_mb",
    "peak_reserved_mb",
    "note",
]
EPOCH_FIELDS = [
    "run",
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "epoch_s",
    "images_per_s",
    "skipped_steps",
]
log = logging.getLogger("end_to_end")


@dataclass(frozen=True)
class Run:
    """One entry of ``--runs``: ``<impl>-<precision>[-<mode>]``."""

    name: str
    impl: str
    precision: str
    mode: str


def parse_runs(text: str) -> list[Run]:
    """``tritoncnn-fp16,torch-amp-compile`` -> Runs; one clear line for a bad name."""
    runs = []
    for name in filter(None, (s.strip() for s in text.split(","))):
        impl, _, rest = name.partition("-")
        precision, _, mode = rest.partition("-")
        if impl not in PRECISIONS:
            raise SystemExit(f"--runs: {name!r} must start with tritoncnn- or torch-")
        if precision not in PRECISIONS[impl]:
            raise SystemExit(
                f"--runs: {name!r}: {impl} precision is one of {'|'.join(PRECISIONS[impl])}"
            )
        mode = mode or MODES[impl][0]
        if mode not in MODES[impl]:
            raise SystemExit(f"--runs: {name!r}: {impl} mode is one of {'|'.join(MODES[impl])}")
        runs.append(Run(name, impl, precision, mode))
    if not runs:
        raise SystemExit(f"--runs is empty; e.g. --runs {DEFAULT_RUNS}")
    return runs


def compose(overrides: list[str]):
    """The Hydra config of ``conf/`` with ``overrides`` (hydra's compose API, as scripts do)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def graph_step_available() -> tuple[bool, str]:
    """Whether the CUDA-graph step exists and can run here (imported lazily: it may not yet)."""
    try:
        from tritoncnn.train import cuda_graph
    except ImportError:
        return False, "tritoncnn.train.cuda_graph not found: the trainer runs eager"
    on = bool(cuda_graph.enabled())
    return on, "" if on else "cuda_graph.enabled() is False here: the trainer runs eager"


def write_synthetic_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """A learnable CIFAR-10 stand-in in the official python layout (class = tinted noise), so
    the smoke path reads files through ``tritoncnn.data.load('cifar10', ...)`` like the real one."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(40, 216, size=(10, 3))

    def make(n: int) -> tuple[np.ndarray, list[int]]:
        y = rng.integers(0, 10, n)
        x = palette[y][:, None, None, :] + rng.normal(0, 30, (n, 32, 32, 3))
        flat = np.clip(x, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2).reshape(n, 3072)
        return flat, y.tolist()

    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    x, y = make(n_train)
    for b, idx in enumerate(np.array_split(np.arange(n_train), 5)):
        with open(d / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump({b"data": x[idx], b"labels": [y[i] for i in idx]}, f)
    xt, yt = make(n_test)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": xt, b"labels": yt}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f)


# --- measuring ----------------------------------------------------------------------------


def _cuda() -> bool:
    return torch.cuda.is_available() and not runtime.INTERPRETED


def _reset_memory() -> None:
    gc.collect()
    if _cuda():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_memory() -> tuple[float | None, float | None]:
    if not _cuda():
        return None, None
    return torch.cuda.max_memory_allocated() / 2**20, torch.cuda.max_memory_reserved() / 2**20


def _train_ours(run: Run, overrides: list[str], run_dir: Path) -> tuple[dict, list[dict]]:
    from tritoncnn.train import run as train_run

    cfg = compose(
        [
            *overrides,
            f"precision={run.precision}",
            f"trainer.cuda_graph={'true' if run.mode == 'graph' else 'false'}",
        ]
    )
    summary = train_run.main(cfg, run_dir)
    with open(run_dir / "metrics.csv") as f:
        epochs = list(csv.DictReader(f))
    return summary, epochs


def _train_torch(run: Run, overrides: list[str]) -> tuple[dict, list[dict]]:
    from omegaconf import OmegaConf
    from torch_seed_recipe import train

    cfg = OmegaConf.to_container(compose(overrides), resolve=True)
    result = train(cfg, precision=run.precision, mode=run.mode, log=log.info)
    return result, result.pop("epochs")


def train_once(run: Run, overrides: list[str], work: Path) -> tuple[dict, list[dict], float]:
    """One training of ``run`` (its summary, per-epoch rows, wall seconds)."""
    t0 = time.perf_counter()
    if run.impl == "tritoncnn":
        work.mkdir(parents=True, exist_ok=True)
        summary, epochs = _train_ours(run, overrides, Path(tempfile.mkdtemp(dir=work)))
    else:
        summary, epochs = _train_torch(run, overrides)
    if _cuda():
        torch.cuda.synchronize()
    return summary, epochs, time.perf_counter() - t0


def measure(
    run: Run, overrides: list[str], work: Path, warmup: bool, warmup_batches: int | None = None
) -> tuple[dict, list[dict]]:
    """Warm up (optional: one epoch, or ``warmup_batches`` of it), then one timed training;
    the CSV row and its per-epoch rows."""
    note = ""
    if run.impl == "tritoncnn" and run.mode == "graph":
        ok, why = graph_step_available()
        if not ok:
            log.warning("%s: %s", run.name, why)
            note = why
    warm_s = None
    if warmup:
        warm = [*overrides, "trainer.epochs=1"]
        if warmup_batches:
            warm.append(f"trainer.limit_train_batches={warmup_batches}")
        _, _, warm_s = train_once(run, warm, work / "warmup")
        log.info("%s: warm-up (compile, autotune) took %.1f s", run.name, warm_s)
    _reset_memory()
    summary, epochs, total_s = train_once(run, overrides, work / run.name)
    peak, reserved = _peak_memory()
    times = [float(r["epoch_s"]) for r in epochs]
    train_s = float(summary["train_seconds"])
    steps = int(summary["steps"])
    images = sum(float(r["images_per_s"]) * float(r["epoch_s"]) for r in epochs)
    row = {
        "run": run.name,
        "impl": run.impl,
        "precision": run.precision,
        "mode": "eager" if note else run.mode,
        "epochs": len(epochs),
        "steps": steps,
        "ms_per_step": 1e3 * train_s / steps if steps else None,
        "train_s": train_s,
        "total_s": total_s,
        "warmup_s": warm_s,
        "epoch1_s": times[0] if times else None,
        "epoch_median_s": statistics.median(times[1:] or times) if times else None,
        "images_per_s": images / train_s if train_s else None,
        "test_acc": summary["test_acc"],
        "test_acc_last": summary.get("test_acc_last"),
        "best_val_acc": summary["best_val_acc"],
        "best_epoch": summary["best_epoch"],
        "peak_mem_mb": peak,
        "peak_reserved_mb": reserved,
        "note": note,
    }
    return row, [{"run": run.name, **{k: r.get(k, "") for k in EPOCH_FIELDS[1:]}} for r in epochs]


# --- reporting ----------------------------------------------------------------------------


def accuracy_check(rows: list[dict], tol: float) -> bool:
    """Issue 4's GPU check: each tritoncnn run's test accuracy within ``tol`` of torch's at the
    same precision (fp32 vs fp32; fp16/bf16 vs amp/bf16); prints one line per comparison."""
    torch_rows = {r["precision"]: r for r in rows if r["impl"] == "torch"}
    ok = True
    for r in (r for r in rows if r["impl"] == "tritoncnn"):
        want = (
            "fp32" if r["precision"] == "fp32" else ("bf16" if r["precision"] == "bf16" else "amp")
        )
        ref = torch_rows.get(want) or next(iter(torch_rows.values()), None)
        if ref is None or r["test_acc"] is None or ref["test_acc"] is None:
            print(f"accuracy check: {r['run']}: no torch test accuracy to compare with")
            continue
        diff = r["test_acc"] - ref["test_acc"]
        passed = diff >= -tol
        ok &= passed
        last = ""
        if r.get("test_acc_last") is not None and ref.get("test_acc_last") is not None:
            last = (
                f"; last-epoch weights {r['test_acc_last']:.4f} vs {ref['test_acc_last']:.4f} "
                f"({(r['test_acc_last'] - ref['test_acc_last']) * 100:+.2f})"
            )
        print(
            f"accuracy check: {r['run']} test {r['test_acc']:.4f} vs {ref['run']} "
            f"{ref['test_acc']:.4f}: {diff * 100:+.2f} points -> "
            f"{'PASS' if passed else 'FAIL'} (tolerance {tol * 100:.1f}){last}; wall "
            f"{r['total_s']:.1f} s vs {ref['total_s']:.1f} s, train {r['train_s']:.1f} s vs "
            f"{ref['train_s']:.1f} s"
        )
    return ok


def _write(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _fmt(v: Any, spec: str) -> str:
    """``format(v, spec)``, or a dash as wide when ``v`` is unknown."""
    if v is None or v == "":
        width = spec.split(".")[0]
        return "-".rjust(int(width) if width.isdigit() else 1)
    return format(v, spec)


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'run':<28}{'train s':>9}{'total s':>9}{'ms/step':>9}{'test':>8}{'best val':>9}"
        f"{'peak MiB':>10}{'reserved':>10}"
    )
    for r in rows:
        print(
            f"{r['run']:<28}{_fmt(r['train_s'], '9.1f')}{_fmt(r['total_s'], '9.1f')}"
            f"{_fmt(r.get('ms_per_step'), '9.2f')}{_fmt(r['test_acc'], '8.4f')}"
            f"{_fmt(r['best_val_acc'], '9.4f')}{_fmt(r['peak_mem_mb'], '10.0f')}"
            f"{_fmt(r['peak_reserved_mb'], '10.0f')}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument(
        "--runs",
        default=DEFAULT_RUNS,
        help=f"comma-separated <impl>-<precision>[-<mode>] (default {DEFAULT_RUNS})",
    )
    ap.add_argument("--epochs", type=int, default=15, help="trainer.epochs (default 15)")
    ap.add_argument(
        "--data-root",
        help="dataset.root: the folder holding cifar-10-batches-py "
        "(default: the config's, $TRITONCNN_DATA/cifar10 or data/cifar10)",
    )
    ap.add_argument("--experiment", default="seed_cifar10", help="conf/experiment/ entry")
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra overrides for every run (e.g. trainer.seed=1)",
    )
    ap.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        help="smoke test: write a learnable N-image CIFAR-10 stand-in and use it",
    )
    ap.add_argument("--no-warmup", action="store_true", help="time cold starts (JIT included)")
    ap.add_argument(
        "--warmup-batches",
        type=int,
        metavar="N",
        help="batches of the warm-up epoch (default: all, so every batch shape is compiled)",
    )
    ap.add_argument("--tol", type=float, default=0.01, help="accuracy check tolerance (0.01)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the accuracy check fails")
    ap.add_argument("--out", help="results folder (default $OUT, else benchmarks/results)")
    ap.add_argument("--work-dir", help="run directories (default a fresh temp folder)")
    args = ap.parse_args(argv)
    runs = parse_runs(args.runs)
    if args.epochs <= 0:
        raise SystemExit("--epochs must be a positive integer")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("tritoncnn").setLevel(logging.INFO)
    torch.backends.cudnn.benchmark = True

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="end_to_end_"))
    data_root = args.data_root
    if args.synthetic:
        if args.synthetic < 50:
            raise SystemExit("--synthetic needs at least 50 images")
        data_root = str(work / "synthetic_cifar10")
        write_synthetic_cifar10(Path(data_root), args.synthetic, max(args.synthetic // 5, 20))
    overrides = [
        f"experiment={args.experiment}",
        f"trainer.epochs={args.epochs}",
        "trainer.progress=false",
        *args.set,
    ]
    if data_root:
        overrides.append(f"dataset.root={Path(data_root).resolve()}")

    import triton

    gpu = torch.cuda.get_device_name() if _cuda() else "cpu-interpreter"
    meta = {
        "gpu": gpu,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.date.today().isoformat(),
    }
    out = Path(args.out or os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    tag = gpu.replace(" ", "_")
    csv_path, epochs_path = out / f"end_to_end_{tag}.csv", out / f"end_to_end_epochs_{tag}.csv"
    print(
        f"{gpu} | torch {torch.__version__} | triton {triton.__version__} | runs: "
        f"{', '.join(r.name for r in runs)} | overrides: {' '.join(overrides)} | work {work}",
        flush=True,
    )

    rows: list[dict] = []
    epoch_rows: list[dict] = []
    failed = []
    for run in runs:
        log.info("=== %s ===", run.name)
        try:
            row, erows = measure(run, overrides, work, not args.no_warmup, args.warmup_batches)
        except Exception as e:  # noqa: BLE001 - record and go on with the next run
            log.exception("%s failed: %r", run.name, e)
            failed.append(run.name)
            continue
        rows.append({**meta, **row})
        epoch_rows += erows
        _write(csv_path, FIELDS, rows)  # after every run: a later failure keeps these
        _write(epochs_path, EPOCH_FIELDS, epoch_rows)
        log.info(
            "%s: train %.1f s (%s ms/step), total %.1f s, test %s, best val %s, peak %s MiB",
            run.name,
            row["train_s"],
            _fmt(row["ms_per_step"], ".2f"),
            row["total_s"],
            _fmt(row["test_acc"], ".4f"),
            _fmt(row["best_val_acc"], ".4f"),
            _fmt(row["peak_mem_mb"], ".0f"),
        )
    print_table(rows)
    ok = accuracy_check(rows, args.tol)
    if rows:
        print(f"wrote {csv_path} and {epochs_path}")
    if failed:
        print(f"failed runs: {', '.join(failed)}")
    return 1 if failed or (args.strict and not ok) else 0


if __name__ == "__main__":
    sys.exit(main())
