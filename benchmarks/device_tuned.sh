#!/usr/bin/env bash
# On the GPU machine (the device tool), one call: tiles, the autotuner, where the step's time
# goes (after benchmarks/device_pdl.sh, which has the step's table). Most wanted first:
#
#   bash benchmarks/device_tuned.sh          # carry .whl
#
# 1. conv_tiles.py: ResNet-18's stride-1 3x3 forwards, dgrads and wgrads, every pointer tile
#    and every TMA tile (kernels/conv_tma.py) against cuDNN;
# 2. ResNet-18's graphed step with the autotuner on and the TMA tiles among its candidates
#    ($OUT/tuned), tuning from an empty cache kept in $OUT/cache/autotune.json: the tuned
#    choice for every conv problem of the step (benchmarks/autotune_report.py reads it);
# 3. profile_step.py --trace, ResNet-18 and MobileNetV2 at b512: every kernel of one step with
#    its time and layer, and the kernels' sum against the graphed step (trace_report.py: the
#    streaming kernels' slowest layers);
# 4. the batch-norm backward reductions alone (bn_bwd_reduce_kernel) per MobileNetV2 layer, by
#    tile (the default's narrow channel blocks against 128-wide ones) and programs per SM
#    (reduction_tiles.py; 6 pipeline stages were slower than 3 on 12-07);
# 5. the RGB stems (3 -> 64, 3 -> 32) by tile: the 12-06 H100 trace had ResNet-18's at 107 us
#    forward and 143 us wgrad (~25 us each at DRAM speed); ptxas gives the flat-K forward's
#    128 x 64 tile 255 registers, the 64 x 64 one 128.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
TRITONCNN_AUTOTUNE=0 timeout 180 python3 benchmarks/conv_tiles.py \
    --ops fwd fwd_tma dgrad dgrad_tma wgrad wgrad_tma \
    --weights fp16 --shapes 64:64:3:1:32 128:128:3:1:16 256:256:3:1:8 512:512:3:1:4 \
    --out "$OUT" 2>&1 | grep -v -i warn | tail -30
TRITONCNN_AUTOTUNE=1 TRITONCNN_TMA=1 TRITONCNN_CACHE_DIR="$OUT/cache" timeout 150 python3 \
    benchmarks/train_step.py --models resnet18 --batches 512 --ours-only --graph-only \
    --out "$OUT/tuned" 2>&1 | grep -v -i warn | grep " ms "
python3 benchmarks/autotune_report.py "$OUT/cache/autotune.json" | tail -3
TRITONCNN_AUTOTUNE=0 timeout 140 python3 benchmarks/profile_step.py --models resnet18 \
    mobilenetv2 --batches 512 --trace --out "$OUT" > "$OUT/profile_step.log" 2>&1
grep -A12 "launches" "$OUT/profile_step.log"
grep "warning" "$OUT/profile_step.log"  # a trace without layers says why
python3 benchmarks/trace_report.py "$OUT"/profile_trace_*.csv --top 8 2>&1 | head -50
TRITONCNN_AUTOTUNE=0 timeout 110 python3 benchmarks/reduction_tiles.py --kernels bn \
    --bn-ops bwd_reduce --bn-tiles default wide c64 --stages 3 --bn-programs 4 8 \
    --out "$OUT" > "$OUT/reduction_tiles.log" 2>&1
grep -A30 "totals" "$OUT/reduction_tiles.log"
TRITONCNN_AUTOTUNE=0 timeout 80 python3 benchmarks/conv_tiles.py --ops fwd wgrad --weights fp16 \
    --shapes 3:64:3:1:32 3:32:3:1:32 --out "$OUT/stem" 2>&1 | grep -v -i warn | tail -6
