#!/usr/bin/env bash
# On the GPU machine (the device tool), one call (~9 min): the checks and step times that
# decide two off-by-default options, then where MobileNetV2's graphed step spends its time and
# torch's eager modes beside ours. Most wanted first (a call cut short keeps what it wrote):
#
#   bash benchmarks/device_profile.sh       # carry .whl
#
# 1. the depthwise, batch-norm sums' and pointwise gpu tests (the rolling-rows dgrad stores
#    the sums now; kernels/conv_pointwise.py is new);
# 2. MobileNetV2 graphed at b512: the default against --bn-grad-sums (the dgrads' BN sums;
#    with the BN deferral too) and --pointwise (the persistent short-K 1x1 forward);
# 3. bn_bwd_reduce_kernel alone per MobileNetV2 layer (reduction_tiles.py): loads pipelined
#    through shared memory (3 stages: cp.async, two barriers per row tile) against plain
#    register loads (1 stage), on 4 and 8 warps and 128-channel blocks (never timed on the
#    H100: 12-07 had 3 and 6 stages of the default tile);
# 4. MobileNetV2's 1x1 convs (forward, dgrad), every pointer tile and the persistent
#    pointwise kernel's (kernels/conv_pointwise.py, off by default) graphed against cuDNN: the
#    12-06 H100 trace had the 24 -> 144 expand forward at 216 us for ~176 MB (0.8 TB/s),
#    the 1x1 forwards at 1.59 ms in all for ~1.8 GB (~0.6 ms at 3 TB/s);
# 5. ResNet-18 graphed at b512: the default against --bn-grad-sums and --loader-warp-wgrad
#    (the halo weight gradient's loader warp);
# 6. profile_step.py --trace of MobileNetV2 with --bn-grad-sums and with the defaults: every
#    kernel of one step with its layer (trace_report.py prints the slowest layers);
# 7. train_step.py, both nets at b512: torch eager fp32 and eager AMP + channels_last beside
#    ours (--no-compile: torch.compile's rows take minutes per net; the 12-05 run has them).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITONCNN_AUTOTUNE=0
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
gpu_tests gpu_tests_depthwise 90 tests/test_depthwise.py
gpu_tests gpu_tests_grad_sums 160 tests/test_grad_sums.py
gpu_tests gpu_tests_pointwise 120 tests/test_conv_pointwise.py
timeout 150 python3 benchmarks/train_step.py --models mobilenetv2 --batches 512 --graph-only \
    --ours-only --bn-grad-sums --pointwise --out "$OUT/options" 2>&1 | grep -v -i warn \
    | grep " ms "
timeout 90 python3 benchmarks/reduction_tiles.py --kernels bn --bn-ops bwd_reduce --stages 1 3 \
    --bn-tiles default w8 wide --bn-programs 4 --out "$OUT" > "$OUT/reduction_tiles.log" 2>&1
grep -A8 "totals" "$OUT/reduction_tiles.log"
timeout 120 python3 benchmarks/conv_tiles.py --ops fwd fwd_pointwise dgrad dgrad_pointwise \
    --weights fp16 \
    --out "$OUT/pointwise" \
    --shapes 24:144:1:1:32 144:24:1:1:32 32:192:1:1:16 96:576:1:1:8 2>&1 | grep -v -i warn \
    | tail -10
timeout 150 python3 benchmarks/train_step.py --models resnet18 --batches 512 --graph-only \
    --ours-only --bn-grad-sums --loader-warp-wgrad --out "$OUT/options" 2>&1 \
    | grep -v -i warn | grep " ms "
trace() {  # trace <log name> <timeout s> [profile_step.py options]: MobileNetV2's step trace
    timeout "$2" python3 benchmarks/profile_step.py --models mobilenetv2 --batches 512 --trace \
        "${@:3}" --out "$OUT" > "$OUT/$1.log" 2>&1
    grep -A14 "launches" "$OUT/$1.log"
    grep "warning" "$OUT/$1.log"  # a trace without layers says why
}
trace profile_step_grad_sums 90 --bn-grad-sums
python3 benchmarks/trace_report.py "$OUT"/profile_trace_grad_sums_*.csv --top 10 2>&1 | head -30
trace profile_step 90
python3 benchmarks/trace_report.py "$OUT"/profile_trace_NVIDIA*.csv --top 10 2>&1 | head -30
left=$((560 - SECONDS))
if [ "$left" -gt 60 ]; then
    timeout "$left" python3 benchmarks/train_step.py --models mobilenetv2 resnet18 --batches 512 \
        --no-compile --graph-only --out "$OUT/torch" 2>&1 | grep -v -i warn | grep " ms "
fi
bundle_csvs
