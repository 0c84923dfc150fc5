#!/usr/bin/env bash
# Incremental developer build of the extensions into build/dev-<name> (default: build/dev).
# Use with: KR_EXT_DIR=build/dev python -m pytest ...   (Python sources are used from the tree.)
# Set KR_CUDA=OFF to skip the CUDA module while iterating on CPU code.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build/dev}
py=${PYTHON:-python}
if [ ! -f "$dir/build.ninja" ]; then
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DKR_CUDA="${KR_CUDA:-AUTO}" ${KR_CMAKE_ARGS:-} \
    -Dpybind11_DIR="$($py -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v $py)" >/dev/null
fi
cmake --build "$dir" -j "${KR_JOBS:-2}"
