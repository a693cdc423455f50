#!/usr/bin/env bash
# On the GPU machine (the device tool), one call (~8 min): MobileNetV2's 1x1 convs against
# cuDNN, graphed, one conv_tiles.py run per shape so a call cut short keeps what it finished.
# The CSVs come back as one tar, tiles.tgz (the device tool returns at most 8 files):
#
#   bash benchmarks/device_1x1_tiles.sh       # carry .whl
#
# 1. the weight gradients of the 32x32 and 16x16 layers at their heuristic tile with 32 to
#    512 K (pixel) splits (--ops wgrad_split; the heuristic's own split is the untagged
#    row). Its 12-08 run moved the bound from 64 to conv_configs.MAX_SPLITS (512):
#    results/conv_tiles_1x1_splits_2026-12-08_NVIDIA_H100_80GB_HBM3.csv;
# 2. every pointer and pointwise tile (fwd, fwd_pointwise, dgrad, dgrad_pointwise, wgrad) of
#    the 8x8 and 4x4 layers (12-08: results/conv_tiles_1x1_8x8_4x4_2026-12-08_*.csv; the
#    32x32 and 16x16 ones: results/conv_tiles_1x1_2026-12-07_NVIDIA_H100_80GB_HBM3.csv).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT/tiles" "$OUT/splits"
export PYTHONUNBUFFERED=1 TRITONCNN_AUTOTUNE=0
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
budget=${BUDGET_S:-470}
for shape in 32:16:1:1:32 16:96:1:1:32 24:144:1:1:32 144:24:1:1:32 96:24:1:1:32 \
    192:32:1:1:16 32:192:1:1:16 144:32:1:1:16; do
    left=$((budget - SECONDS))
    [ "$left" -gt 20 ] || break
    timeout "$left" python3 benchmarks/conv_tiles.py --shapes "$shape" --ops wgrad_split \
        --splits 32 128 256 512 --out "$OUT/splits/${shape//:/_}" 2>&1 | grep -v -i warn \
        | grep " us "
done
for shape in 96:576:1:1:8 576:96:1:1:8 64:384:1:1:8 384:64:1:1:8 160:960:1:1:4 \
    960:160:1:1:4 192:64:1:1:8 384:96:1:1:8 576:160:1:1:4 960:320:1:1:4 320:1280:1:1:4; do
    left=$((budget - SECONDS))
    [ "$left" -gt 20 ] || break
    timeout "$left" python3 benchmarks/conv_tiles.py --shapes "$shape" --weights fp16 \
        --ops fwd fwd_pointwise dgrad dgrad_pointwise wgrad --out "$OUT/tiles/${shape//:/_}" \
        2>&1 | grep -v -i warn | grep " us "
done
bundle_csvs tiles
