#!/usr/bin/env bash
# On the GPU machine (the device tool), one call: the off-by-default options' gpu tests and
# their graphed-step rows against the defaults, in one run on one card.
#
#   bash benchmarks/device_options.sh          # carry .whl
#
# 1. the gpu tier of the options (residual fusion, skip / ReLU gradients in the dgrad
#    epilogue, dgrad BN sums, deferral), of the two-level BN backward sums and of depthwise;
# 2. train_step.py, ResNet-18 and MobileNetV2 at b512, graphed only: the defaults and one row
#    per option (--without-fuse-residual, --without-skip-grad-in-dgrad, --relu-grad-in-dgrad, --bn-grad-sums,
#    --bn-into-depthwise).
# Heuristic tiles (TRITONCNN_AUTOTUNE=0). Logs and the CSV go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITONCNN_AUTOTUNE=0
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/gpu.txt"
timeout 200 python3 -m pytest -m gpu -n 16 -v -p no:cacheprovider tests/test_residual_fusion.py \
    tests/test_skip_grad_dgrad.py tests/test_grad_sums.py tests/test_pending_norm.py \
    "tests/test_batchnorm.py::test_batchnorm_backward_many_partials_gpu" tests/test_depthwise.py \
    > "$OUT/gpu_tests.log" 2>&1
grep -c PASSED "$OUT/gpu_tests.log"
grep -E "FAILED|[0-9]+ passed|[0-9]+ failed" "$OUT/gpu_tests.log" | tail -12
timeout 330 python3 benchmarks/train_step.py --models resnet18 mobilenetv2 --batches 512 \
    --ours-only --graph-only --without-fuse-residual --without-skip-grad-in-dgrad --relu-grad-in-dgrad \
    --bn-grad-sums --bn-into-depthwise --out "$OUT" 2>&1 | grep -v -i warn | tail -16
