#!/usr/bin/env bash
# On the GPU machine (the device tool), one call: programmatic dependent launch measured and
# checked (kernels/pdl.py), and the TMA conv forward (kernels/conv_tma.py) in the step.
#
#   bash benchmarks/device_pdl.sh          # carry .whl
#
# 1. train_step.py, ResNet-18 and MobileNetV2 at b512, heuristic tiles: our graphed step
#    (also with the flat depthwise weight gradient, and with the TMA conv kernel) and torch's
#    eager fp32 / AMP + channels_last rows ($OUT/heuristic); then our graphed step with PDL
#    ($OUT/pdl_1) and without again ($OUT/nopdl_2): alternating, so drift hits both;
# 2. the gpu tests: graphed steps with PDL equal those without, bit for bit (tests/test_pdl.py),
#    the TMA forward (tests/test_conv_tma.py), the rolling-rows depthwise / BN split tests.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITONCNN_AUTOTUNE=0
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step() {  # step <TRITONCNN_PDL> <out dir> <timeout s> [train_step.py arguments]
    TRITONCNN_PDL=$1 timeout "$3" python3 benchmarks/train_step.py --models resnet18 mobilenetv2 \
        --batches 512 --graph-only --out "$OUT/$2" "${@:4}" 2>&1 | grep -v -i warn | grep " ms "
}
step 0 heuristic 200 --no-compile --dw-wgrad-flat --tma
step 1 pdl_1 100 --ours-only
step 0 nopdl_2 60 --ours-only
timeout 180 python3 -m pytest -m gpu -n 8 -q -rf -p no:cacheprovider tests/test_pdl.py \
    tests/test_conv_tma.py tests/test_depthwise.py tests/test_batchnorm.py \
    -k "pdl or tma or rows or partials or split" \
    > "$OUT/gpu_tests.log" 2>&1
grep -E "FAILED|Error|[0-9]+ passed|[0-9]+ failed" "$OUT/gpu_tests.log" | tail -12
