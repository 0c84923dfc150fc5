// Dequantize-to-tile body for prompt GEMMs: one thread per quant block of a row range, decoding
// with decode.h (bit-identical to the CPU dequantizer) into an f32 or bf16 tile that cuBLAS /
// torch.matmul then multiplies.
#pragma once
#include "cuda/kernels/warp.cuh"
#include "quant/decode.h"

namespace kr::gk {

constexpr int kTileThreads = 128;

// Thread i of the launch decodes block i of the tile (blocks are contiguous across rows).
template <int kOut>
KR_HD void dequant_tile_thread(int32_t type, const uint8_t* src, int qk, int ts, int64_t n_blocks, int64_t i,
                               void* dst) {
  if (i >= n_blocks) return;
  const uint8_t* b = src + i * ts;
  if (kOut == 0) {
    decode_block(type, b, static_cast<float*>(dst) + i * qk);
  } else {
    float y[QK_K];
    decode_block(type, b, y);
    uint16_t* o = static_cast<uint16_t*>(dst) + i * qk;
    for (int j = 0; j < qk; ++j) o[j] = kOut == 1 ? fp32_to_fp16(y[j]) : fp32_to_bf16(y[j]);
  }
}

}  // namespace kr::gk
