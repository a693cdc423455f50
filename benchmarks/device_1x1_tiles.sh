#!/usr/bin/env bash
# On the GPU machine (the device tool), one call (~8 min): every tile of MobileNetV2's 1x1
# convs against cuDNN, the pointer GEMM's (fwd, dgrad, wgrad) and the persistent pointwise
# kernel's (fwd_pointwise, dgrad_pointwise), graphed, one conv_tiles.py run per shape so a
# call cut short keeps the shapes it finished; the 32x32 layers first (they are ~60% of the
# 1x1 convs' time in the 12-06 trace), then 16x16, then the 8x8 ones that repeat. The CSVs
# come back as one tar, csvs.tgz (the device tool returns at most 8 files):
#
#   bash benchmarks/device_1x1_tiles.sh       # carry .whl
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT/tiles"
export PYTHONUNBUFFERED=1 TRITONCNN_AUTOTUNE=0
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for shape in 144:24:1:1:32 24:144:1:1:32 96:24:1:1:32 16:96:1:1:32 32:16:1:1:32 \
    192:32:1:1:16 32:192:1:1:16 144:32:1:1:16 96:576:1:1:8 576:96:1:1:8 64:384:1:1:8 \
    384:64:1:1:8 160:960:1:1:4 960:160:1:1:4; do
    left=$((${BUDGET_S:-470} - SECONDS))
    [ "$left" -gt 20 ] || break
    timeout "$left" python3 benchmarks/conv_tiles.py --shapes "$shape" --weights fp16 \
        --ops fwd fwd_pointwise dgrad dgrad_pointwise wgrad --out "$OUT/tiles/${shape//:/_}" \
        2>&1 | grep -v -i warn | grep " us "
done
bundle_csvs
