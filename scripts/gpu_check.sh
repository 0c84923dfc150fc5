#!/usr/bin/env bash
# First run on a GPU machine, one command (< 10 min): build the CUDA module for this device's
# architecture, run the CUDA tests (real kernels against the emulator and the CPU kernels), then print
# the GPU table (bench/bench_gpu.py): GEMV GB/s per format vs device copy bandwidth, H2D pinned /
# pageable, MoE layer time at several cache sizes, CUDA vs CPU engine tok/s (medium, K2-shaped).
#
#   scripts/gpu_check.sh            # everything
#   QUICK=1 scripts/gpu_check.sh    # shorter benchmark runs
#   SKIP_ENGINE=1 ...               # no engine rows (no model files written)
# Env: PYTHON (default python3), BUILD_DIR (default build/gpu), KR_BENCH_TMP (scratch for model files).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUILD_DIR=${BUILD_DIR:-build/gpu}
T0=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - T0 )) s)"; }

step "environment"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv \
  || echo "nvidia-smi not found"
command -v nvcc >/dev/null && nvcc --version | tail -2 || { echo "nvcc not found: install the CUDA toolkit"; exit 2; }
$PY - <<'PY' || { echo "python deps missing: pip install -e '.[test]' (torch with CUDA, pybind11, cmake, ninja)"; exit 2; }
import torch, pybind11, numpy, gguf
print("torch", torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count())
assert torch.cuda.is_available(), "torch does not see a GPU (a CPU-only torch wheel?)"
PY
for tool in cmake ninja; do command -v $tool >/dev/null || $PY -m pip install -q $tool; done

step "build (_C + _C_cuda for this device's architecture)"
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
ARCH=${ARCH:-90}
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKR_CUDA=ON -DKR_CUDA_ARCHS="$ARCH" \
    -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v $PY)" >/dev/null || exit 3
fi
cmake --build "$BUILD_DIR" -j "$(nproc)" || exit 3
export KR_EXT_DIR=$PWD/$BUILD_DIR PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY -c "from kimi_runtime.gpu import cuda_status; s = cuda_status(); print('CUDA module:', s or 'usable'); raise SystemExit(1 if s else 0)" \
  || exit 4

step "CUDA tests (real kernels vs emulator / CPU kernels) + the emulated and protocol tests"
timeout 300 $PY -m pytest -q -x -p no:cacheprovider tests/test_cuda_kernels.py tests/test_cuda_dequant.py \
  tests/test_cuda_emulated_gemv.py tests/test_cuda_emulated_moe.py tests/test_devpool_protocol.py tests/test_gpu_lanes.py
TEST_RC=$?

step "GPU table"
ARGS=()
[ -n "${QUICK:-}" ] && ARGS+=(--quick)
[ -n "${SKIP_ENGINE:-}" ] && ARGS+=(--skip-engine)
timeout 420 $PY bench/bench_gpu.py "${ARGS[@]}"
BENCH_RC=$?

step "done: tests rc=$TEST_RC, bench rc=$BENCH_RC (results in bench/results/gpu.json)"
[ $TEST_RC -eq 0 ] && [ $BENCH_RC -eq 0 ]
