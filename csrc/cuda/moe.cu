// Device launches of the grouped MoE (csrc/cuda/kernels/moe.cuh): five launches per layer.
#include <cuda_runtime.h>

#include "cuda/kernels/moe.cuh"
#include "cuda/ops.h"

namespace kr::cuda {

using namespace kr::gk;

namespace {

__global__ void __launch_bounds__(kGemvWarps * kWarp) moe_gate_up_kernel(MoeArgs a) {
  const int64_t r = gemv_row_of(blockIdx.x, threadIdx.x), route = blockIdx.y;
  if (r >= a.n_ff) return;
  const int lane = threadIdx.x % kWarp;
  float g, u;
  moe_gate_up_lane(a, route, r, lane, &g, &u);
  g = warp_sum(g);
  u = warp_sum(u);
  moe_gate_up_store(a, route, r, lane, g, u);
}

__global__ void __launch_bounds__(kGemvWarps * kWarp) moe_down_kernel(MoeArgs a) {
  const int64_t r = gemv_row_of(blockIdx.x, threadIdx.x), route = blockIdx.y;
  if (r >= a.n_embd) return;
  const int lane = threadIdx.x % kWarp;
  const float v = warp_sum(moe_down_lane(a, route, r, lane));
  moe_down_store(a, route, r, lane, v);
}

__global__ void moe_combine_kernel(MoeArgs a) { moe_combine(a, (int64_t)blockIdx.x * blockDim.x + threadIdx.x); }

unsigned grid_of(int64_t n, int per) { return (unsigned)((n + per - 1) / per); }

}  // namespace

cudaError_t launch_moe(const MoeArgs& a, cudaStream_t s) {
  if (a.n_routes == 0) return cudaSuccess;
  cudaError_t e = launch_act_quant(a.x, a.n_tok * a.n_embd / 32, const_cast<block_q8a32*>(a.xq), s);
  if (e != cudaSuccess) return e;
  moe_gate_up_kernel<<<dim3(grid_of(a.n_ff, kGemvWarps), (unsigned)a.n_routes), kGemvWarps * kWarp, 0, s>>>(a);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  if ((e = launch_act_quant(a.h, a.n_routes * a.n_ff / 32, const_cast<block_q8a32*>(a.hq), s)) != cudaSuccess)
    return e;
  moe_down_kernel<<<dim3(grid_of(a.n_embd, kGemvWarps), (unsigned)a.n_routes), kGemvWarps * kWarp, 0, s>>>(a);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  moe_combine_kernel<<<grid_of(a.n_tok * a.n_embd, 256), 256, 0, s>>>(a);
  return cudaGetLastError();
}

}  // namespace kr::cuda
