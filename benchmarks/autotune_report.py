"""How far the heuristic tiles are from the autotuner's, per problem, read from a cache file.

The autotuner (``tritoncnn/kernels/autotune.py``) keeps, for every problem it timed, the fastest
candidate and the heuristic's config with its own time. This prints one line per problem
(op, problem fields, heuristic -> tuned config, their times, candidates whose results the tuner
rejected) and the sum over the file; no GPU needed.

    python benchmarks/autotune_report.py ~/.cache/tritoncnn/autotune.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def short(config: dict) -> str:
    """A candidate's fields as one compact string (nested split candidates flattened)."""
    parts = []
    for k, v in config.items():
        parts.append(short(v) if isinstance(v, dict) else f"{k}={v}")
    return ",".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache", type=Path)
    args = ap.parse_args()
    entries = json.loads(args.cache.read_text())["entries"]
    total_heuristic = total_tuned = 0.0
    rejected = 0
    for key, entry in sorted(entries.items()):
        op, problem = key.split("|")[:2]
        tuned, heuristic = entry["ms"], entry.get("heuristic_ms")
        ratio = f"{heuristic / tuned:5.2f}x" if heuristic else "    -"
        if heuristic:
            total_heuristic += heuristic
            total_tuned += tuned
        print(
            f"{op:<14} {problem}\n    heuristic {short(entry.get('heuristic', {}))} "
            f"{heuristic if heuristic else float('nan'):.4f} ms -> tuned {short(entry['config'])} "
            f"{tuned:.4f} ms ({ratio})"
        )
        for config in entry.get("rejected", []):  # results off the heuristic's: a wrong kernel
            print(f"    REJECTED (result differs from the heuristic's) {short(config)}")
        rejected += len(entry.get("rejected", []))
    if total_tuned:
        print(
            f"sum over problems with both times: heuristic {total_heuristic:.3f} ms, tuned "
            f"{total_tuned:.3f} ms ({total_heuristic / total_tuned:.2f}x)"
        )
    print(f"candidates rejected by the tuner's result check: {rejected}")


if __name__ == "__main__":
    main()
