#!/usr/bin/env bash
# On the GPU machine (the device tool): the GPU test tier (benchmarks: benchmarks/*.py).
# (pytest-xdist: compiling the kernels dominates, and parallel workers share the one GPU.)
# Logs and CSVs go to $OUT (or benchmarks/results when run by hand).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -m gpu -n 12 -q -p no:cacheprovider -p no:benchmark --durations=15 "${@:-tests}" 2>&1 | tee "$OUT/gpu_tests.log"
echo "gpu tier exit: ${PIPESTATUS[0]}"
