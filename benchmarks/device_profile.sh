#!/usr/bin/env bash
# On the GPU machine (the device tool), one call (~9 min), most wanted first (a call cut short
# keeps what it wrote; the CSVs come back bundled in csvs.tgz):
#
#   bash benchmarks/device_profile.sh       # carry .whl
#
# 1. MobileNetV2 and ResNet-18 graphed at b512, the default (the weight gradients' K splits
#    bounded by conv_configs.MAX_SPLITS = 512 since 12-08) against the old bound of 64
#    (--wgrad-max-splits 64), in one process: per op the 32x32 1x1 weight gradients ran
#    1.2-2.8x faster with more splits, not yet timed in the step;
# 2. the conv gpu tests (the 1x1 tile rules, reduce_rows and the larger splits have run on
#    the GPU only inside conv_tiles.py's checks against cuDNN);
# 3. bn_bwd_reduce_kernel alone over MobileNetV2's layers at 1-8 stage-1 programs per SM
#    (reduction_tiles.py, per layer in its CSV): the 8x8 and 4x4 layers move 0.5-1.8 TB/s
#    against the input pass's 2.8-4.0 (benchmarks/README.md, 2026-12-08);
# 4. torch eager fp32 and eager AMP + channels_last beside the default step, for the ratios.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 TRITONCNN_AUTOTUNE=0
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 240 python3 benchmarks/train_step.py --models mobilenetv2 resnet18 --batches 512 \
    --graph-only --ours-only --wgrad-max-splits 64 --out "$OUT/splits" 2>&1 | grep " ms "
gpu_tests gpu_tests_conv 150 tests/test_conv.py
timeout 90 python3 benchmarks/reduction_tiles.py --kernels bn --bn-ops bwd_reduce --stages 3 \
    --bn-programs 1 2 4 8 --out "$OUT/reduce" 2>&1 | grep -v -i warn | tail -8
left=$((560 - SECONDS))
[ "$left" -gt 60 ] && timeout "$left" python3 benchmarks/train_step.py \
    --models mobilenetv2 resnet18 --batches 512 --graph-only --no-compile --out "$OUT/torch" \
    2>&1 | grep " ms "
bundle_csvs
