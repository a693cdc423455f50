#!/usr/bin/env bash
# On the GPU machine (the device tool), one call (~9 min), most wanted first (a call cut short
# keeps what it wrote; the CSVs come back bundled in csvs.tgz):
#
#   bash benchmarks/device_profile.sh       # carry .whl
#
# 1. MobileNetV2 and ResNet-18 graphed at b512, the default (the weight gradients' K splits
#    bounded by conv_configs.MAX_SPLITS = 512 since 12-08) against the old bound of 64
#    (--wgrad-max-splits 64), in one process: per op the 32x32 1x1 weight gradients ran
#    1.2-2.8x faster with more splits, not yet timed in the step; and against the convs
#    casting their own 16-bit weights (--per-conv-casts: 35 launches on MobileNetV2, 56 us
#    in 12-08's trace, instead of one since the sixteenth session);
# 2. the expand 1x1 forwards with the BN moments, as the step runs them (conv_tiles.py
#    --moments), every pointwise tile: in 12-08's trace the pointwise forwards
#    took 1.5-3x their plain-forward sweep times (64 -> 384 at 8x8: 28.4 us against 9.8;
#    16 -> 96 at 32x32: 124 against 45), the pointer ones ~1.2x; each shape with the
#    two-pass moments epilogue and the one-pass one (TRITONCNN_ONE_PASS_MOMENTS=1); since
#    the sixteenth session (no GPU) the moments count their rows without a reduction and the
#    tiles run the programs per SM ptxas's registers allow at each K (16 -> 96: 2, was 1),
#    then the pointwise and weight-cast gpu tests (the 128 x 128 tile at 2 programs an SM
#    never ran);
# 3. the same step with programmatic dependent launch (TRITONCNN_PDL=1, kernels/pdl.py: the
#    next kernel's launch and scheduling overlap the running one), never timed in a step: the
#    fixed cost of MobileNetV2's small kernels is its largest loss (benchmarks/README.md,
#    2026-12-08; 467 launches);
# 4. the conv gpu tests (the 1x1 tile rules, reduce_rows and the larger splits have run on
#    the GPU only inside conv_tiles.py's checks against cuDNN), then the PDL ones (graphed
#    steps with PDL equal those without, bit for bit); MobileNetV2 with bn_grad_sums (the
#    dgrads store the BN backward sums: last timed before the pointwise kernel, whose dgrad
#    stores them too, was on);
# 5. bn_bwd_reduce_kernel alone over MobileNetV2's layers at 1-8 stage-1 programs per SM
#    (reduction_tiles.py, per layer in its CSV): the 8x8 and 4x4 layers move 0.5-1.8 TB/s
#    against the input pass's 2.8-4.0;
# 6. torch eager fp32 and eager AMP + channels_last beside the default step, for the ratios.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 TRITONCNN_AUTOTUNE=0
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
left() { echo $((550 - SECONDS)); }  # what the call has left (the device's limit is 600 s)
step() {  # step <out dir> <timeout s> [train_step.py arguments]: our graphed b512 rows
    timeout "$2" python3 benchmarks/train_step.py --batches 512 --graph-only --ours-only \
        --out "$OUT/$1" "${@:3}" 2>&1 | grep " ms "
}
step splits 260 --models mobilenetv2 resnet18 --wgrad-max-splits 64 --per-conv-casts
for shape in 64:384:1:1:8 16:96:1:1:32 24:144:1:1:32 96:576:1:1:8 32:192:1:1:16; do
    for one_pass in 0 1; do  # the two-pass moments epilogue, then the one-pass one
        [ "$(left)" -gt 260 ] || break 2
        TRITONCNN_ONE_PASS_MOMENTS=$one_pass timeout 45 python3 benchmarks/conv_tiles.py \
            --shapes "$shape" --weights fp16 --moments --ops fwd_pointwise \
            --out "$OUT/moments/${shape//:/_}_$one_pass" 2>&1 | grep -v -i warn | grep " us "
    done
done
[ "$(left)" -gt 200 ] && gpu_tests gpu_tests_pointwise 90 tests/test_conv_pointwise.py \
    tests/test_weight_casts.py
TRITONCNN_PDL=1 step pdl "$(( $(left) < 200 ? $(left) : 200 ))" --models mobilenetv2 resnet18
[ "$(left)" -gt 30 ] && gpu_tests gpu_tests_conv "$(( $(left) < 120 ? $(left) : 120 ))" tests/test_conv.py
[ "$(left)" -gt 30 ] && gpu_tests gpu_tests_pdl "$(( $(left) < 60 ? $(left) : 60 ))" tests/test_pdl.py
[ "$(left)" -gt 40 ] && step grad_sums "$(left)" --models mobilenetv2 --bn-grad-sums
[ "$(left)" -gt 30 ] && timeout "$(left)" python3 benchmarks/reduction_tiles.py --kernels bn \
    --bn-ops bwd_reduce --stages 3 --bn-programs 1 2 4 8 --out "$OUT/reduce" 2>&1 \
    | grep -v -i warn | tail -8
[ "$(left)" -gt 60 ] && timeout "$(left)" python3 benchmarks/train_step.py \
    --models mobilenetv2 resnet18 --batches 512 --graph-only --no-compile --out "$OUT/torch" \
    2>&1 | grep " ms "
bundle_csvs
