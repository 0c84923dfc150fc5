// GPU dequantization of any GGUF format through decode.h's shared decoders, so device results
// equal the CPU's bit for bit (decode.h keeps nvcc from fusing the products that gguf rounds).
#include <cuda_runtime.h>

#include <cstdint>

#include "quant/decode.h"

namespace kr::cuda {

namespace {

// One thread per quant block (grid-stride). f32 output is written in place by the decoder; the
// half formats go through a per-thread buffer of one block.
template <int kOut>
__global__ void dequant_blocks(const uint8_t* __restrict__ src, int32_t type, int qk, int ts,
                               int64_t n_blocks, void* __restrict__ dst) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_blocks; i += stride) {
    const uint8_t* b = src + i * ts;
    if constexpr (kOut == 0) {
      decode_block(type, b, static_cast<float*>(dst) + i * qk);
    } else {
      float y[QK_K];
      decode_block(type, b, y);
      uint16_t* o = static_cast<uint16_t*>(dst) + i * qk;
      for (int j = 0; j < qk; ++j) o[j] = kOut == 1 ? fp32_to_fp16(y[j]) : fp32_to_bf16(y[j]);
    }
  }
}

}  // namespace

// ---- kernel launchers

// Dequantizes n_blocks contiguous blocks of `type` at device pointer src into dst (out_dtype 0 =
// f32, 1 = f16, 2 = bf16) on `stream`. Arguments are validated by the caller (ops layer); an
// unsupported type or dtype returns cudaErrorInvalidValue without launching.
cudaError_t dequantize_blocks(const void* src, int32_t type, int64_t n_blocks, void* dst, int out_dtype,
                              cudaStream_t stream) {
  const TypeTraits tt = type_traits(type);
  if (!has_decoder(type) || out_dtype < 0 || out_dtype > 2 || n_blocks < 0) return cudaErrorInvalidValue;
  if (n_blocks == 0) return cudaSuccess;
  const int threads = 128;
  const int64_t want = (n_blocks + threads - 1) / threads;
  const int grid = (int)(want < 65535 * 8 ? want : 65535 * 8);
  const uint8_t* s = static_cast<const uint8_t*>(src);
  switch (out_dtype) {
    case 0: dequant_blocks<0><<<grid, threads, 0, stream>>>(s, type, tt.block_size, tt.type_size, n_blocks, dst); break;
    case 1: dequant_blocks<1><<<grid, threads, 0, stream>>>(s, type, tt.block_size, tt.type_size, n_blocks, dst); break;
    default: dequant_blocks<2><<<grid, threads, 0, stream>>>(s, type, tt.block_size, tt.type_size, n_blocks, dst); break;
  }
  return cudaGetLastError();
}

}  // namespace kr::cuda
