// The device GEMV kernel template and a launcher over a list of formats; included by the .cu files
// that instantiate it for a group of formats each (so the groups compile in parallel).
#pragma once
#include <cuda_runtime.h>

#include "cuda/kernels/gemv.cuh"

namespace kr::cuda {

template <int T>
__global__ void __launch_bounds__(gk::kGemvWarps * gk::kWarp) gemv_kernel(gk::GemvArgs a) {
  const int64_t r = gk::gemv_row_of(blockIdx.x, threadIdx.x);
  if (r >= a.rows) return;  // warp-uniform
  const int lane = threadIdx.x % gk::kWarp;
  float acc[gk::kMaxTok];
  gk::gemv_lane<T>(a.w + r * a.row_bytes, a.cols / 32, a.x, a.cols / 32, a.ntok, lane, acc);
#pragma unroll
  for (int t = 0; t < gk::kMaxTok; ++t) acc[t] = gk::warp_sum(acc[t]);
  gk::gemv_store(a, r, lane, acc);
}

#define KR_GEMV_CASE(name)                                                                        \
  case GgmlType::name:                                                                            \
    gemv_kernel<(int)GgmlType::name><<<(unsigned)gk::gemv_grid(a.rows), gk::kGemvWarps * gk::kWarp, \
                                       0, s>>>(a);                                                \
    return cudaGetLastError();

}  // namespace kr::cuda
