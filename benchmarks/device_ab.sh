#!/usr/bin/env bash
# On the GPU machine (the device tool), one call: the graphed training step of the working tree
# against a base revision, alternating base / new twice on one card so drift hits both.
#
#   rm -rf .scratch/base && mkdir -p .scratch/base                      # here, first
#   git archive <rev> tritoncnn benchmarks | tar -x -C .scratch/base
#   bash benchmarks/device_ab.sh [train_step.py arguments]               # carry .whl .scratch
#
# Default arguments: ResNet-18 and MobileNetV2 at batch 512, tritoncnn only, graphed only.
# Heuristic tiles (TRITONCNN_AUTOTUNE=0). CSVs go to $OUT/base_<i> and $OUT/new_<i>; the
# summary lines to stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/ab}
[ -f .scratch/base/benchmarks/train_step.py ] || { echo "error: no .scratch/base (see top)"; exit 1; }
export PYTHONUNBUFFERED=1 TRITONCNN_AUTOTUNE=0
source benchmarks/device_env.sh
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--models resnet18 mobilenetv2 --batches 512 --ours-only --graph-only)
for i in 1 2; do
    for side in base new; do
        script=benchmarks/train_step.py
        [ "$side" = base ] && script=.scratch/base/benchmarks/train_step.py
        mkdir -p "$OUT/${side}_$i"
        echo "== $side $i"
        # train_step.py puts its own checkout first on sys.path: the base tree runs its package
        timeout 300 python3 "$script" "${args[@]}" --out "$OUT/${side}_$i" 2>&1 \
            | grep -v -i warn | grep -E "graph|ms" | tail -8
    done
done
