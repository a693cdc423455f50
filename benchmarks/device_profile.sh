#!/usr/bin/env bash
# On the GPU machine (the device tool), one call (~8 min): where ResNet-18's and MobileNetV2's
# graphed step spends its time now, and torch's eager modes beside it in the same call. Most
# wanted first (a call cut short keeps what it wrote):
#
#   bash benchmarks/device_profile.sh       # carry .whl
#
# 1. profile_step.py --trace, ResNet-18 and MobileNetV2 at b512 with the defaults: every kernel
#    of one step with its layer (trace_report.py prints the slowest layers);
# 2. the same trace of MobileNetV2 with the dgrads' BN sums (--bn-grad-sums);
# 3. train_step.py, both nets at b512: ours graphed, torch eager fp32 and eager AMP +
#    channels_last (--no-compile: torch.compile's rows take minutes per net; the 12-05 run
#    has them).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITONCNN_AUTOTUNE=0
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 160 python3 benchmarks/profile_step.py --models resnet18 mobilenetv2 --batches 512 \
    --trace --out "$OUT" > "$OUT/profile_step.log" 2>&1
grep -A14 "launches" "$OUT/profile_step.log"
grep "warning" "$OUT/profile_step.log"  # a trace without layers says why
python3 benchmarks/trace_report.py "$OUT"/profile_trace_NVIDIA*.csv --top 8 2>&1 | head -40
timeout 100 python3 benchmarks/profile_step.py --models mobilenetv2 --batches 512 --trace \
    --bn-grad-sums --out "$OUT" > "$OUT/profile_step_grad_sums.log" 2>&1
grep -A14 "launches" "$OUT/profile_step_grad_sums.log"
python3 benchmarks/trace_report.py "$OUT"/profile_trace_grad_sums_*.csv --top 8 2>&1 | head -30
left=$((540 - SECONDS))
[ "$left" -gt 60 ] || exit 0
timeout "$left" python3 benchmarks/train_step.py --models resnet18 mobilenetv2 --batches 512 \
    --no-compile --graph-only --out "$OUT/torch" 2>&1 | grep -v -i warn | grep " ms "
