#!/usr/bin/env bash
# On the GPU machine (the device tool), one command: the seed's CIFAR-10 recipe end to end,
# tritoncnn against plain torch (benchmarks/end_to_end.py), plus issue 4's accuracy check.
#
#   bash benchmarks/device_end_to_end.sh                       # default runs, 15 epochs
#   bash benchmarks/device_end_to_end.sh --runs tritoncnn-fp16,torch-amp-compile --epochs 5
#
# Every argument goes to end_to_end.py (its --help lists them); --data-root defaults to the
# CIFAR-10 stand-in this script builds in /tmp/data/cifar10. Carry `.whl` (hydra-core,
# omegaconf, antlr4 wheels: the GPU image lacks them) and `.gpudata` (the stand-in's npz and
# its tool). Logs and CSVs go to $OUT (or benchmarks/results when run by hand). The python run
# is capped at E2E_TIMEOUT seconds (default 500) so the logs and the rows of the runs that
# finished still come back if it overruns the device tool's 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
DATA=${E2E_DATA:-/tmp/data/cifar10}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t0=$(date +%s)

source benchmarks/device_env.sh
python3 - <<'EOF' || exit 1
import importlib.util
need = ["hydra", "omegaconf", "numpy", "PIL", "tqdm", "safetensors", "matplotlib", "triton"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    raise SystemExit(f"error: missing Python packages {missing}: carry their wheels in .whl/")
EOF

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu \
        --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/gpu.txt"

# The CIFAR-10 stand-in (JPEG q75 re-encoding) in the official python layout, built once
if [ ! -f "$DATA/cifar-10-batches-py/test_batch" ]; then
    tool=""
    for t in .gpudata/tools/cifar10_from_npz.py .gpudata/cifar10_from_npz.py \
             shared/tools/cifar10_from_npz.py ../shared/tools/cifar10_from_npz.py; do
        [ -f "$t" ] && tool=$t && break
    done
    if [ -z "$tool" ]; then
        echo "error: no cifar10_from_npz.py: carry .gpudata (tools/ + datasets/cifar10_jpegq75.npz)"
        exit 1
    fi
    python3 "$tool" "$DATA" 2>&1 | tee "$OUT/data.log" || { echo "error: building $DATA failed"; exit 1; }
fi
echo "data ready after $(( $(date +%s) - t0 )) s"

args=("$@")
case " $* " in *" --data-root"*) ;; *) args+=(--data-root "$DATA") ;; esac
timeout --signal=TERM "${E2E_TIMEOUT:-500}" \
    python3 benchmarks/end_to_end.py --out "$OUT" "${args[@]}" 2>&1 | tee "$OUT/end_to_end.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "end_to_end.py stopped at E2E_TIMEOUT=${E2E_TIMEOUT:-500} s: rows of finished runs are in $OUT"
nvidia-smi --query-gpu=memory.used,clocks.sm,temperature.gpu --format=csv 2>&1 | tee -a "$OUT/gpu.txt"
echo "end_to_end exit: $rc after $(( $(date +%s) - t0 )) s"
exit "$rc"
