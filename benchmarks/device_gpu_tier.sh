#!/usr/bin/env bash
# On the GPU machine (the device tool): the GPU test tier (benchmarks: benchmarks/*.py).
# (pytest-xdist: compiling the kernels dominates, and parallel workers share the one GPU.)
# Logs and CSVs go to $OUT (or benchmarks/results when run by hand).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
source benchmarks/device_env.sh  # Hydra's wheels (carry .whl) and the checkout on PYTHONPATH
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
# The whole tier takes longer than one 10-minute device call (2026-12-04: ~96% done at 550 s),
# so it runs in two parts: `bash benchmarks/device_gpu_tier.sh kernels` (the conv, depthwise and
# autotune sweeps over every tile) and `... rest` (everything else); explicit test paths also
# work, and no argument runs everything.
KERNEL_SWEEPS="tests/test_conv.py tests/test_depthwise.py tests/test_autotune.py"
case "${1:-all}" in
    kernels) set -- $KERNEL_SWEEPS ;;
    rest) set -- $(ls tests/test_*.py | grep -v -e test_conv.py -e test_depthwise.py -e test_autotune.py) ;;
    all) set -- tests ;;
esac
# -v names each test as it finishes, so a run cut off by the call's time limit still says which
# tests failed (the summary at the end would be lost); TIER_TIMEOUT stops pytest before that.
timeout "${TIER_TIMEOUT:-560}" python3 -m pytest -m gpu -n 12 -v -rf -p no:cacheprovider \
    -p no:benchmark --durations=15 "$@" > "$OUT/gpu_tests.log" 2>&1
echo "gpu tier exit: $?"
grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed)" "$OUT/gpu_tests.log" | tail -30
grep -cE " PASSED " "$OUT/gpu_tests.log" | sed 's/^/passed so far: /'
grep -E " (FAILED|ERROR) " "$OUT/gpu_tests.log" | head -20
