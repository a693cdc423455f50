#!/usr/bin/env bash
# On the GPU machine (the device tool), one call: the speed numbers of benchmarks/README.md.
#
#   bash benchmarks/device_speed.sh          # carry .whl and .gpudata (see device_end_to_end.sh)
#
# 1. profile_step.py --trace: per-kernel time of one step (seed net b128, ResNet-18 and
#    MobileNetV2 b512) and every launch in order;
# 2. train_step.py: the seed net at b128/b512 against every default torch mode, ResNet-18 and
#    MobileNetV2 at b512 against torch eager (torch.compile of those takes minutes);
# 3. the seed recipe end to end, tritoncnn fp16 only (torch's runs are in results/).
# Heuristic tiles (TRITONCNN_AUTOTUNE=0): first-use tuning of the large nets takes minutes.
# Each step has its own time cap so the whole call stays inside the device tool's 10 minutes;
# CSVs and logs go to $OUT (benchmarks/results when run by hand), at most 8 files.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT/small" "$OUT/large"
export PYTHONUNBUFFERED=1 TRITONCNN_AUTOTUNE=0
source benchmarks/device_env.sh
{
    timeout 60 python3 benchmarks/profile_step.py --models baseline --batches 128 --out "$OUT/small"
    timeout 130 python3 benchmarks/profile_step.py --trace --models resnet18 mobilenetv2 \
        --batches 512 --steps 5 --out "$OUT/large"
    timeout 110 python3 benchmarks/train_step.py --models baseline --batches 128 512 --out "$OUT/small"
    timeout 140 python3 benchmarks/train_step.py --models resnet18 mobilenetv2 --batches 512 \
        --no-compile --out "$OUT/large"
} 2>&1 | grep -v -e Warning -e warn > "$OUT/speed.log"
rm -f "$OUT"/*/*.png
E2E_TIMEOUT=80 bash benchmarks/device_end_to_end.sh --runs tritoncnn-fp16 > "$OUT/e2e.log" 2>&1
rm -f "$OUT"/data.log "$OUT"/gpu.txt "$OUT"/end_to_end.log "$OUT"/end_to_end_epochs_*.csv
grep -e "launches" -e "ms " -e "train " "$OUT/speed.log" "$OUT/e2e.log"
