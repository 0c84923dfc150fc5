// Device launches of the activation quantizer, the GEMV dispatch (kernels in gemv_kq.cu / gemv_iq.cu)
// and dequantize-to-tile bodies in csrc/cuda/kernels/*.cuh (the host emulator in csrc/emu runs the
// same bodies lane by lane).
#include <cuda_runtime.h>

#include <string>

#include "cuda/kernels/act_q8.cuh"
#include "cuda/kernels/dequant_tile.cuh"
#include "cuda/kernels/gemv.cuh"
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
  const cudaError_t e = launch_gemv_kq(type, a, s);
  return e == cudaErrorInvalidValue ? launch_gemv_iq(type, a, s) : e;
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
