// Activation-side quantizers for the fused dequant-dot kernels: x is quantized once per call to
// 8-bit blocks so that every weight block is dotted with integer arithmetic (llama.cpp's scheme).
#pragma once
#include <cstddef>
#include <cstdint>

#include "quant/blocks.h"

namespace kr {

// 32-weight activation block for the 32-block weight formats. Unlike GGUF's Q8_0, d stays f32
// (no f16 rounding of the scale) and s = d * sum(qs) serves the "+ m" term of Q4_1 / Q5_1.
struct block_q8a32 {
  float d;
  float s;
  int8_t qs[32];
};
static_assert(sizeof(block_q8a32) == 40, "q8a32 size");

// What a weight type wants its activation row turned into before the dot.
enum class ActKind : int { F32 = 0, Q8A32 = 1, Q8K = 2 };

// Bytes of one quantized activation row of n values (n a multiple of the kind's block).
inline size_t act_row_bytes(ActKind k, int64_t n) {
  switch (k) {
    case ActKind::F32: return (size_t)n * sizeof(float);
    case ActKind::Q8A32: return (size_t)(n / 32) * sizeof(block_q8a32);
    case ActKind::Q8K: return (size_t)(n / QK_K) * sizeof(block_q8_K);
  }
  return 0;
}

// Round-to-nearest, d = amax/127, so |x - d*q| <= d/2 per value. n must be a block multiple.
void quantize_act_q8a32(const float* x, block_q8a32* y, int64_t n);
void quantize_act_q8K(const float* x, block_q8_K* y, int64_t n);
// Dispatches on kind; F32 copies.
void quantize_act(ActKind k, const float* x, void* y, int64_t n);

}  // namespace kr
