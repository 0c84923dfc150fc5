// Device launches of the quantized GEMV, grouped MoE and dequantize-to-tile bodies in
// csrc/cuda/kernels/*.cuh (the host emulator in csrc/emu runs the same bodies lane by lane).
#include <cuda_runtime.h>

#include <string>

#include "cuda/kernels/act_q8.cuh"
#include "cuda/kernels/dequant_tile.cuh"
#include "cuda/kernels/moe.cuh"
#include "cuda/ops.h"

namespace kr::cuda {

using namespace kr::gk;

namespace {

__global__ void act_quant_kernel(const float* __restrict__ x, int64_t n_blocks, block_q8a32* __restrict__ y) {
  const int64_t blk = act_block_of(blockIdx.x, threadIdx.x);
  if (blk >= n_blocks) return;  // warp-uniform
  const int lane = threadIdx.x % kWarp;
  const float amax = warp_max(act_amax_lane(x, blk, lane));
  const int sum = warp_sum(act_quant_lane(x, blk, lane, amax, y));
  act_finish_lane(blk, lane, amax, sum, y);
}

template <int T>
__global__ void __launch_bounds__(kGemvWarps * kWarp) gemv_kernel(GemvArgs a) {
  const int64_t r = gemv_row_of(blockIdx.x, threadIdx.x);
  if (r >= a.rows) return;  // warp-uniform
  const int lane = threadIdx.x % kWarp;
  float acc[kMaxTok];
  gemv_lane<T>(a.w + r * a.row_bytes, a.cols / 32, a.x, a.cols / 32, a.ntok, lane, acc);
#pragma unroll
  for (int t = 0; t < kMaxTok; ++t) acc[t] = warp_sum(acc[t]);
  gemv_store(a, r, lane, acc);
}

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

template <int kOut>
__global__ void dequant_tile_kernel(const uint8_t* __restrict__ src, int32_t type, int qk, int ts, int64_t nb,
                                    void* __restrict__ dst) {
  dequant_tile_thread<kOut>(type, src, qk, ts, nb, (int64_t)blockIdx.x * blockDim.x + threadIdx.x, dst);
}

unsigned grid_of(int64_t n, int per) { return (unsigned)((n + per - 1) / per); }

}  // namespace

cudaError_t launch_act_quant(const float* x, int64_t n_blocks, block_q8a32* y, cudaStream_t s) {
  if (n_blocks == 0) return cudaSuccess;
  act_quant_kernel<<<grid_of(n_blocks, kActWarps), kActWarps * kWarp, 0, s>>>(x, n_blocks, y);
  return cudaGetLastError();
}

cudaError_t launch_gemv(int32_t type, const GemvArgs& a, cudaStream_t s) {
  if (a.rows == 0 || a.ntok == 0) return cudaSuccess;
  const unsigned grid = (unsigned)gemv_grid(a.rows);
  switch (static_cast<GgmlType>(type)) {
#define KR_LAUNCH(name)                                                              \
  case GgmlType::name:                                                               \
    gemv_kernel<(int)GgmlType::name><<<grid, kGemvWarps * kWarp, 0, s>>>(a); break;
    KR_GPU_FORMATS(KR_LAUNCH)
#undef KR_LAUNCH
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

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

cudaError_t launch_dequant_tile(int32_t type, const uint8_t* src, int64_t n_blocks, void* dst, int out_dtype,
                                cudaStream_t s) {
  const TypeTraits tt = type_traits(type);
  if (!has_decoder(type) || (out_dtype != 0 && out_dtype != 2)) return cudaErrorInvalidValue;
  if (n_blocks == 0) return cudaSuccess;
  if (out_dtype == 0)
    dequant_tile_kernel<0><<<grid_of(n_blocks, kTileThreads), kTileThreads, 0, s>>>(src, type, tt.block_size,
                                                                                   tt.type_size, n_blocks, dst);
  else
    dequant_tile_kernel<2><<<grid_of(n_blocks, kTileThreads), kTileThreads, 0, s>>>(src, type, tt.block_size,
                                                                                   tt.type_size, n_blocks, dst);
  return cudaGetLastError();
}

}  // namespace kr::cuda
