#!/usr/bin/env bash
# On the GPU machine (the device tool), one call (~9 min), most wanted first (a call cut short
# keeps what it wrote; the CSVs come back bundled in tiles.tgz and csvs.tgz):
#
#   bash benchmarks/device_profile.sh       # carry .whl
#
# 1. MobileNetV2 graphed at b512, the default (with the 1x1 tile rules of 12-07 night,
#    conv._pick_1x1) against TRITONCNN_POINTWISE=1, in two processes so the order and the
#    noise show: on 12-07 the pointwise kernel won on every 1x1 shape it takes, by 5-35%, but
#    the step was 11.95 against 12.08 ms in one call and 12.13 against 12.10 in another;
# 2. the kernel trace of that step with the pointwise kernel (profile_step.py --trace):
#    where the per-kernel gain goes;
# 3. device_1x1_tiles.sh: the 32x32 / 16x16 1x1 weight gradients at 32-512 K splits (the
#    heuristic caps them at 64), then the 8x8 and 4x4 layers' tiles;
# 4. the pointwise kernel's gpu tests (45 of 47 passed on 12-07 before a 60 s timeout).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 TRITONCNN_AUTOTUNE=0
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for run in 1 2; do
    timeout 150 python3 benchmarks/train_step.py --models mobilenetv2 --batches 512 \
        --graph-only --ours-only --pointwise --out "$OUT/step$run" 2>&1 | grep " ms "
done
TRITONCNN_POINTWISE=1 timeout 90 python3 benchmarks/profile_step.py --models mobilenetv2 \
    --batches 512 --trace --out "$OUT/pointwise" > "$OUT/profile_step_pointwise.log" 2>&1
grep -A14 "launches" "$OUT/profile_step_pointwise.log"
for f in "$OUT"/pointwise/profile_trace_*.csv; do
    python3 benchmarks/trace_report.py "$f" --kernel pointwise_fwd_kernel 2>&1 | head -24
done
BUDGET_S=$((480 - SECONDS)) bash benchmarks/device_1x1_tiles.sh 2>&1 | grep " us "
left=$((570 - SECONDS))
[ "$left" -gt 30 ] && gpu_tests gpu_tests_pointwise "$left" tests/test_conv_pointwise.py
bundle_csvs
