#!/usr/bin/env bash
# On the GPU machine (the device tool), one call: gpu tests of the kernels a change touched,
# the graphed step of the working tree against .scratch/base (one pass each, same card), and
# the new tree's per-kernel trace.
#
#   rm -rf .scratch/base && mkdir -p .scratch/base                      # here, first
#   git archive <rev> tritoncnn benchmarks | tar -x -C .scratch/base
#   bash benchmarks/device_order.sh tests/test_a.py ...                 # carry .whl .scratch
#
# Heuristic tiles (TRITONCNN_AUTOTUNE=0). Logs, CSVs and the trace go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/ab}
mkdir -p "$OUT"
[ -f .scratch/base/benchmarks/train_step.py ] || { echo "error: no .scratch/base (see top)"; exit 1; }
export PYTHONUNBUFFERED=1 TRITONCNN_AUTOTUNE=0
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if [ $# -gt 0 ]; then
    timeout 200 python3 -m pytest -m gpu -n 16 -q -p no:cacheprovider "$@" > "$OUT/gpu_tests.log" 2>&1
    grep -E "FAILED|[0-9]+ passed|[0-9]+ failed" "$OUT/gpu_tests.log" | tail -12
fi
args=(--models resnet18 mobilenetv2 --batches 512 --ours-only --graph-only)
for side in base new; do
    script=benchmarks/train_step.py
    [ "$side" = base ] && script=.scratch/base/benchmarks/train_step.py
    mkdir -p "$OUT/$side"
    echo "== $side"
    timeout 150 python3 "$script" "${args[@]}" --out "$OUT/$side" 2>&1 \
        | grep -v -i warn | grep -E "graph|ms" | tail -8
done
timeout 120 python3 benchmarks/profile_step.py --models mobilenetv2 resnet18 --batches 512 \
    --trace --out "$OUT" 2>&1 | grep -v -i warn | tail -30
