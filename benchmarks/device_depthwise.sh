#!/usr/bin/env bash
# On the GPU machine (the device tool), one call: the depthwise kernels' gpu tests, their tiles
# against cuDNN, and the graphed MobileNetV2 step with the depthwise options switched.
#
#   bash benchmarks/device_depthwise.sh          # carry .whl
#
# 1. the gpu tier of test_depthwise (flat and rolling-rows kernels, weight gradient included),
#    test_pending_norm and test_tile_moments;
# 2. depthwise_tiles.py: every MobileNetV2 depthwise layer at b512, fwd / dgrad / wgrad;
# 3. train_step.py, MobileNetV2 at b512, graphed: the defaults, the flat all-taps weight
#    gradient instead of rolling rows (--dw-wgrad-flat) and the BN deferral (--bn-into-depthwise).
# Heuristic tiles (TRITONCNN_AUTOTUNE=0). Logs and CSVs go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITONCNN_AUTOTUNE=0
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 200 python3 -m pytest -m gpu -n 16 -q -rf -p no:cacheprovider tests/test_depthwise.py \
    tests/test_pending_norm.py tests/test_tile_moments.py > "$OUT/gpu_tests.log" 2>&1
grep -E "FAILED|[0-9]+ passed|[0-9]+ failed" "$OUT/gpu_tests.log" | tail -12
timeout 150 python3 benchmarks/depthwise_tiles.py --out "$OUT" > "$OUT/depthwise_tiles.log" 2>&1
grep -A40 "totals" "$OUT/depthwise_tiles.log"
timeout 200 python3 benchmarks/train_step.py --models mobilenetv2 --batches 512 --ours-only \
    --graph-only --dw-wgrad-flat --bn-into-depthwise --out "$OUT" 2>&1 | grep -v -i warn | grep graph
