"""Read a kernel trace (``profile_step.py --trace``): where one step's time goes by kernel and
by layer, and the DRAM rate of the memory-bound kernels.

Each row of ``profile_trace_<gpu>.csv`` is one kernel with the layer that launched it (traces
from 2026-12-07 on). For the kernels below, whose traffic is a known number of passes over the
tensor the layer was called with (fp16 activations), the report gives the rate they reached:
the number to hold against the GPU's DRAM bandwidth (~3 TB/s on an H100 / H200's ~4.8), and
the time they spend beyond what their bytes need at ``--floor`` TB/s (2.8 by default: what
bn_bwd_input_kernel reaches on an H100's large layers), summed over their launches.

    python benchmarks/trace_report.py benchmarks/results/profile_trace_NVIDIA_H100_80GB_HBM3.csv
    python benchmarks/trace_report.py TRACE.csv --model mobilenetv2 --kernel bn_bwd_reduce_kernel
    python benchmarks/trace_report.py TRACE.csv --floor 4.0     # an H200
"""

from __future__ import annotations

import argparse
import ast
import csv
import math
from collections import defaultdict
from pathlib import Path

# Passes over the layer's input-sized tensor (reads + writes) of kernels that stream it once.
PASSES = {
    "bn_apply_kernel": 2,  # x in, y out
    "bn_stats_kernel": 1,  # x
    "bn_bwd_reduce_kernel": 2,  # g, x
    "bn_bwd_input_kernel": 3,  # g, x in, dx out
    "activation_bwd_kernel": 3,  # g, y in, dx out
    "activation_kernel": 2,
}

ELEMENT_BYTES = 2  # fp16 activations (profile_step.py's step)


def read_trace(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def tb_per_s(row: dict) -> float | None:
    """The DRAM-level rate (TB/s) of a ``PASSES`` kernel, from the shape of the call that
    launched it; None for other kernels or rows without a shape."""
    passes = PASSES.get(row["kernel"])
    if passes is None or not row.get("shape"):
        return None
    shape = ast.literal_eval(row["shape"])
    us = float(row["us"])
    return passes * math.prod(shape) * ELEMENT_BYTES / (us * 1e-6) / 1e12 if us > 0 else None


def over_floor_us(row: dict, floor_tbs: float) -> float:
    """Microseconds a ``PASSES`` kernel took beyond its bytes at ``floor_tbs`` TB/s (0 when it
    ran faster, as layers small enough to sit in L2 can)."""
    rate = tb_per_s(row)
    if rate is None:
        return 0.0
    us = float(row["us"])
    return max(0.0, us - us * rate / floor_tbs)


def by_kernel(rows: list[dict]) -> list[tuple[str, int, float]]:
    """[(kernel, launches, total us)], most time first."""
    totals: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for row in rows:
        totals[row["kernel"]][0] += 1
        totals[row["kernel"]][1] += float(row["us"])
    return sorted(((k, n, us) for k, (n, us) in totals.items()), key=lambda t: -t[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", type=Path)
    ap.add_argument("--model", help="only this model's rows (the trace may hold several)")
    ap.add_argument("--kernel", help="list every launch of this kernel with its layer")
    ap.add_argument("--top", type=int, default=15, help="kernels in the summary")
    ap.add_argument(
        "--floor", type=float, default=2.8, help="TB/s the streaming kernels are held to"
    )
    args = ap.parse_args()
    rows = [r for r in read_trace(args.trace) if args.model in (None, r["model"])]
    if not rows:
        raise SystemExit(f"{args.trace}: no rows" + (f" for {args.model}" if args.model else ""))
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        total = sum(float(r["us"]) for r in mine)
        print(f"{model} b{mine[0]['batch']}: {len(mine)} kernels, {total / 1e3:.2f} ms")
        for kernel, n, us in by_kernel(mine)[: args.top]:
            print(f"  {kernel:<40} {n:4d}x {us / 1e3:8.3f} ms  {100 * us / total:5.1f}%")
        if "layer" not in mine[0]:
            print("  (no layer columns: a trace from before 2026-12-07)")
            continue
        if args.kernel:
            for row in (r for r in mine if r["kernel"] == args.kernel):
                print("    " + _launch_line(row))
            continue
        for kernel in (k for k, _, _ in by_kernel(mine) if k in PASSES):
            launches = [r for r in mine if r["kernel"] == kernel and tb_per_s(r) is not None]
            if not launches:
                continue
            launches.sort(key=tb_per_s)
            median = tb_per_s(launches[len(launches) // 2])
            over = sum(over_floor_us(r, args.floor) for r in launches)
            print(
                f"  {kernel}: median {median:.2f} TB/s, {over:.0f} us over {args.floor} TB/s "
                "in all; slowest:"
            )
            for row in launches[:3]:
                print("    " + _launch_line(row))


def _launch_line(row: dict) -> str:
    rate = tb_per_s(row)
    shown = f"{rate:5.2f} TB/s" if rate is not None else ""
    return (
        f"{row['layer'] or '-':<24} {row['kind']:<12} {row['phase']:<8} {row['shape']:<20} "
        f"{float(row['us']):8.1f} us {shown}"
    )


if __name__ == "__main__":
    main()
