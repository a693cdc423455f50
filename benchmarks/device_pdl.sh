#!/usr/bin/env bash
# On the GPU machine (the device tool), one call: the TMA conv kernels (kernels/conv_tma.py)
# and programmatic dependent launch (kernels/pdl.py), measured in the step and checked.
#
#   bash benchmarks/device_pdl.sh          # carry .whl
#   bash benchmarks/device_pdl.sh short    # ~6 min: the TMA gpu tests, our rows with and
#                                          # without the TMA kernels, the autotuner's tests
#
# Most wanted first (a call cut short keeps what it wrote under $OUT; the whole list takes
# ~12 minutes, so the PDL part may be cut at the 10-minute limit):
# 1. train_step.py, ResNet-18 and MobileNetV2 at b512, heuristic tiles: our graphed step, with
#    the TMA conv kernels (--tma), with the flat depthwise weight gradient, and torch's eager
#    fp32 / AMP + channels_last rows ($OUT/heuristic);
# 2. the TMA kernels' gpu tests (every candidate tile at ResNet-18's shapes, a graph capture),
#    the autotuner's (its result check on real kernels), then a row per conv op alone on the
#    TMA kernels (--tma-each, $OUT/tma_each);
# 3. our graphed step with PDL ($OUT/pdl_1), beside the rows of 1;
# 4. the other gpu tests: graphed steps with PDL equal those without, bit for bit
#    (tests/test_pdl.py), the rolling-rows depthwise / BN split tests.
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
if [ "${1:-}" = short ]; then  # what decides the TMA defaults, in ~6 minutes
    gpu_tests gpu_tests_tma 110 tests/test_conv_tma.py
    step 0 tma_each 150 --ours-only --tma --tma-each
    gpu_tests gpu_tests_autotune 90 tests/test_autotune.py
    exit 0
fi
step 0 heuristic 200 --no-compile --dw-wgrad-flat --tma
gpu_tests gpu_tests_tma 110 tests/test_conv_tma.py
gpu_tests gpu_tests_autotune 90 tests/test_autotune.py
step 0 tma_each 120 --ours-only --tma-each
step 1 pdl_1 90 --ours-only
gpu_tests gpu_tests 130 tests/test_pdl.py tests/test_depthwise.py tests/test_batchnorm.py \
    -k "pdl or rows or partials or split"
