#!/usr/bin/env bash
# On the GPU machine (the device tool), one call (~9 min): the halo 3x3 conv kernel
# (kernels/conv_halo.py, Gluon, sm_90; on unless TRITONCNN_HALO=0) checked and measured, and
# the TMA kernels' checks beside it. Most wanted first (a call cut short keeps what it wrote):
#
#   bash benchmarks/device_halo.sh          # carry .whl
#   bash benchmarks/device_halo.sh short    # ~4 min: 1, and 2 for ResNet-18 without --tma
#   bash benchmarks/device_halo.sh check    # 9 min: 1; 3 for the forward / dgrad halo tiles;
#                                           # ResNet-18 with --relu-grad-in-dgrad, --bn-grad-sums; the
#                                           # gpu tests of the whole-model paths the halo kernels
#                                           # reach (named as they finish) until 560 s
#   bash benchmarks/device_halo.sh tiles    # 9 min: 1; conv_graphed.py (the heuristic tiles
#                                           # graphed), with the wgrad's loader warp alone,
#                                           # ResNet-18 with it (--loader-warp-wgrad); the BN
#                                           # depthwise and BN sums' gpu tests, MobileNetV2
#                                           # --bn-grad-sums;
#                                           # then 3 for every halo tile, loader-warp included
#
# 1. the halo kernel's gpu tests: every tile at ResNet-18's 3x3 shapes against torch, the
#    epilogues, the dispatch, a CUDA-graph capture ($OUT/gpu_tests_halo.log);
# 2. ResNet-18 and MobileNetV2's graphed step at b512: ours by default (the halo kernels on),
#    without them (--without-halo) and with the TMA kernels (--tma) ($OUT/halo);
# 3. conv_tiles.py: ResNet-18's 3x3 forwards, dgrads and wgrads, every pointer / halo (/ TMA)
#    tile against cuDNN;
# 4. the TMA kernels' and the autotuner's gpu tests.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITONCNN_AUTOTUNE=0
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
# (the loader-warp tiles apart: a hang there must not cost the others' verdict)
gpu_tests gpu_tests_halo 150 tests/test_conv_halo.py -k "not loader_warp"
# A halo kernel that failed its tests (or hung) is left out of the timed runs.
HALO_ROW=(--without-halo) HALO_OPS=(fwd_halo dgrad_halo wgrad_halo)
if grep -qE "failed|error|Timeout" "$OUT/gpu_tests_halo.log" \
    || ! grep -qE "[0-9]+ passed" "$OUT/gpu_tests_halo.log"; then
    echo "halo gpu tests did not pass: timing without the halo kernels"
    export TRITONCNN_HALO=0
    HALO_ROW=() HALO_OPS=()
fi
if [ "${1:-}" = tiles ]; then  # the rest of a 560 s call, most wanted first
    # the heuristic tiles in graphs (the 12-07 regression check), then with the weight
    # gradient's loader warp alone
    timeout 80 python3 benchmarks/conv_graphed.py --label default --out "$OUT" 2>&1 \
        | grep -v -i warn
    TRITONCNN_HALO_WGRAD_LOADER_WARP=1 timeout 80 python3 benchmarks/conv_graphed.py \
        --label lw_wgrad --out "$OUT" 2>&1 | grep -v -i warn | grep wgrad
    timeout 150 python3 benchmarks/train_step.py --models resnet18 --batches 512 \
        --graph-only --ours-only --loader-warp-wgrad --out "$OUT/halo" 2>&1 | grep -v -i warn \
        | grep " ms "
    # MobileNetV2 with the dgrad BN sums: the rolling-rows depthwise dgrad stores them now
    # (its default path changed too: the depthwise gpu tests first)
    gpu_tests gpu_tests_depthwise 100 tests/test_depthwise.py
    gpu_tests gpu_tests_grad_sums 100 tests/test_grad_sums.py
    if grep -qE "[0-9]+ passed" "$OUT/gpu_tests_grad_sums.log" \
        && ! grep -qE "failed|error|Timeout" "$OUT/gpu_tests_grad_sums.log"; then
        timeout 120 python3 benchmarks/train_step.py --models mobilenetv2 --batches 512 \
            --graph-only --ours-only --bn-grad-sums --out "$OUT/grad_sums" 2>&1 \
            | grep -v -i warn | grep " ms "
    fi
    # every halo tile (loader-warp ones too) graphed against cuDNN: the heuristics' next tiles
    left=$((560 - SECONDS))
    [ "$left" -gt 30 ] || exit 0
    TRITONCNN_HALO_LOADER_WARP=1 timeout "$left" python3 benchmarks/conv_tiles.py \
        --ops "${HALO_OPS[@]}" --weights fp16 --shapes 64:64:3:1:32 128:128:3:1:16 \
        --out "$OUT" 2>&1 | grep -v -i warn | tail -12
    exit 0
fi
if [ "${1:-}" = check ]; then  # the rest of a 560 s call, most wanted first
    timeout 120 python3 benchmarks/conv_tiles.py --ops "${HALO_OPS[@]:0:2}" \
        --weights fp16 --shapes 64:64:3:1:32 128:128:3:1:16 --out "$OUT" 2>&1 \
        | grep -v -i warn | tail -12
    timeout 120 python3 benchmarks/train_step.py --models resnet18 --batches 512 --graph-only \
        --ours-only --relu-grad-in-dgrad --bn-grad-sums --out "$OUT/halo" 2>&1 | grep -v -i warn \
        | grep " ms "
    left=$((560 - SECONDS))
    [ "$left" -gt 30 ] || exit 0
    timeout "$left" python3 -m pytest -m gpu -n 8 -v -p no:cacheprovider tests/test_models.py \
        tests/test_amp.py tests/test_cuda_graph.py tests/test_pdl.py tests/test_residual_fusion.py \
        tests/test_skip_grad_dgrad.py tests/test_grad_sums.py > "$OUT/gpu_tests_models.log" 2>&1
    grep -E " (FAILED|ERROR) |[0-9]+ (passed|failed)" "$OUT/gpu_tests_models.log" | head -20
    grep -cE " PASSED " "$OUT/gpu_tests_models.log" | sed 's/^/models: passed /'
    exit 0
fi
if [ "${1:-}" = short ]; then  # ~4 min: the tests, ResNet-18's step with and without
    timeout 150 python3 benchmarks/train_step.py --models resnet18 --batches 512 --graph-only \
        --ours-only "${HALO_ROW[@]}" --out "$OUT/halo" 2>&1 | grep -v -i warn | grep " ms "
    exit 0
fi
timeout 200 python3 benchmarks/train_step.py --models resnet18 mobilenetv2 --batches 512 \
    --graph-only --ours-only "${HALO_ROW[@]}" --tma --out "$OUT/halo" 2>&1 | grep -v -i warn \
    | grep " ms "
timeout 150 python3 benchmarks/conv_tiles.py --ops fwd fwd_tma dgrad dgrad_tma wgrad \
    "${HALO_OPS[@]}" --weights fp16 --shapes 64:64:3:1:32 128:128:3:1:16 256:256:3:1:8 \
    --out "$OUT" 2>&1 | grep -v -i warn | tail -24
gpu_tests gpu_tests_tma 100 tests/test_conv_tma.py
gpu_tests gpu_tests_autotune 80 tests/test_autotune.py
