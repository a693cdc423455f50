#!/usr/bin/env bash
# On the GPU machine (the device tool), one call: heuristic tiles against the autotuner's.
#
#   bash benchmarks/device_tuned.sh          # carry .whl
#
# 1. train_step.py, ResNet-18 and MobileNetV2 at b512: our graphed step with heuristic tiles
#    (TRITONCNN_AUTOTUNE=0; MobileNetV2 also with the flat depthwise weight gradient) and
#    torch's eager fp32 and eager AMP + channels_last rows, in one run ($OUT/heuristic);
# 2. the batch-norm backward reductions alone (bn_bwd_reduce_kernel) per MobileNetV2 layer, by
#    tile, loop stages and programs per SM (reduction_tiles.py);
# 3. the rolling-rows depthwise and batch-norm partials gpu tests;
# 4. ResNet-18's graphed step with the autotuner on ($OUT/tuned), tuning from an empty cache
#    kept in $OUT/cache/autotune.json: the tuned choice for every conv problem of the step.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
TRITONCNN_AUTOTUNE=0 timeout 170 python3 benchmarks/train_step.py --models resnet18 mobilenetv2 \
    --batches 512 --graph-only --no-compile --dw-wgrad-flat --out "$OUT/heuristic" 2>&1 \
    | grep -v -i warn | grep " ms "
TRITONCNN_AUTOTUNE=0 timeout 110 python3 benchmarks/reduction_tiles.py --kernels bn \
    --bn-ops bwd_reduce --bn-tiles default half w8 --stages 2 3 4 --bn-programs 4 8 \
    --out "$OUT" \
    > "$OUT/reduction_tiles.log" 2>&1
grep -A30 "totals" "$OUT/reduction_tiles.log"
TRITONCNN_AUTOTUNE=0 timeout 70 python3 -m pytest -m gpu -n 16 -q -rf -p no:cacheprovider \
    tests/test_depthwise.py tests/test_batchnorm.py -k "rows or partials or split" \
    > "$OUT/gpu_tests.log" 2>&1
grep -E "FAILED|[0-9]+ passed|[0-9]+ failed" "$OUT/gpu_tests.log" | tail -12
TRITONCNN_AUTOTUNE=1 TRITONCNN_CACHE_DIR="$OUT/cache" timeout 180 python3 \
    benchmarks/train_step.py --models resnet18 --batches 512 --ours-only --graph-only \
    --out "$OUT/tuned" 2>&1 | grep -v -i warn | grep " ms "
