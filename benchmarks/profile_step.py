"""Where a tritoncnn training step's GPU time goes: every kernel of one step, with its time.

Builds the step of ``benchmarks/train_step.py`` (fp16, gather + forward + loss + backward +
unscale + SGD + scaler, fused BN -> activation), runs it eagerly under ``torch.profiler``
(each kernel's device time is the same as inside the CUDA graph; eager launch gaps are not
counted) and, for comparison, times the graphed step. Prints per-kernel rows (launches per
step, microseconds per step, share of the kernels' total) and the sum of kernel time against
the graphed step's wall time: the difference is what a graph still pays between kernels.
Writes ``profile_step_<gpu>.csv`` to ``--out`` (default ``$OUT``, else benchmarks/results).

    python benchmarks/profile_step.py [--models baseline resnet18] [--batches 128] [--steps 10]
        [--bn-grad-sums]   # the BatchNorms before convs take their backward sums from the
                           # dgrads (train_step.ours_step's option; files get a _grad_sums tag)
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_step  # noqa: E402
from launch_log import Launch, first_difference, record_launches, with_layers  # noqa: E402

from tritoncnn import runtime  # noqa: E402


def kernel_times(step, steps: int) -> dict[str, list[float]]:
    """{kernel name: [launches, device microseconds]} summed over ``steps`` eager steps."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", None)
        if us is None:  # older torch
            us = ev.cuda_time_total
        if us <= 0:
            continue
        totals[ev.key][0] += ev.count
        totals[ev.key][1] += us
    return totals


def kernel_trace(step) -> list[dict]:
    """Every kernel of one eager step in launch order: its name, device microseconds, and the
    layer, module class, phase and input shape of the module call that launched it
    (launch_log.py, from ``step.model``; left empty, with a warning saying where, if the
    profiler's kernels and the recorded launches don't match one to one)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof, record_launches(step.model) as log:
        step()
        torch.cuda.synchronize()
    events = [ev for ev in prof.events() if ev.device_type == DeviceType.CUDA]
    events.sort(key=lambda ev: ev.time_range.start)
    kernels = [(ev.name, ev.time_range.elapsed_us()) for ev in events]
    rows = with_layers(kernels, log)
    if rows is None:
        print(f"warning: the trace has no layers ({first_difference(kernels, log)})", flush=True)
        rows = [{**Launch(name)._asdict(), "us": us} for name, us in kernels]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["baseline"])
    ap.add_argument("--batches", nargs="+", type=int, default=[128])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument(
        "--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results")
    )
    ap.add_argument(
        "--trace",
        action="store_true",
        help="also write every kernel of one step in launch order, with the layer that "
        "launched it (profile_trace_<gpu>.csv)",
    )
    ap.add_argument(
        "--bn-grad-sums",
        action="store_true",
        help="the step with models.build's bn_grad_sums (files named *_grad_sums_<gpu>.csv)",
    )
    args = ap.parse_args()
    if runtime.INTERPRETED:
        sys.exit("benchmarks/profile_step.py needs a CUDA GPU")
    gpu = torch.cuda.get_device_name()
    rows, trace_rows = [], []
    for name in args.models:
        for batch in args.batches:
            options = {"bn_grad_sums": args.bn_grad_sums}
            step = train_step.ours_step(name, batch, torch.float16, graph=False, **options)
            totals = kernel_times(step, args.steps)
            if args.trace:
                for i, row in enumerate(kernel_trace(step)):
                    trace_rows.append(
                        {"gpu": gpu, "model": name, "batch": batch, "index": i,
                         "kernel": row.pop("kernel"), "us": row.pop("us"), **row}
                    )  # fmt: skip
            graphed = train_step.ours_step(name, batch, torch.float16, graph=True, **options)
            graph_ms = train_step.bench(graphed)
            kernel_us = sum(us for _, us in totals.values()) / args.steps
            launches = sum(n for n, _ in totals.values()) / args.steps
            print(
                f"\n{name} b{batch}: {launches:.0f} launches, kernels {kernel_us:.1f} us/step, "
                f"graphed step {graph_ms * 1e3:.1f} us ({graph_ms * 1e3 - kernel_us:.1f} us "
                "outside kernels)"
            )
            for key, (n, us) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
                row = {
                    "gpu": gpu,
                    "torch": torch.__version__,
                    "model": name,
                    "batch": batch,
                    "kernel": key,
                    "launches_per_step": n / args.steps,
                    "us_per_step": us / args.steps,
                    "share": us / args.steps / kernel_us,
                    "graph_step_us": graph_ms * 1e3,
                }
                rows.append(row)
                print(
                    f"  {key[:48]:<48} {row['launches_per_step']:5.1f}x "
                    f"{row['us_per_step']:9.1f} us  {100 * row['share']:5.1f}%"
                )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "_grad_sums" if args.bn_grad_sums else ""
    write_csv(out / f"profile_step{tag}_{gpu.replace(' ', '_')}.csv", rows)
    if trace_rows:
        write_csv(out / f"profile_trace{tag}_{gpu.replace(' ', '_')}.csv", trace_rows)


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
