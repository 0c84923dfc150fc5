// Reference quantizers (float32 -> GGUF blocks): Q8_0 / Q4_0 bit-exact to gguf-py, Q4_K / Q6_K as
// ggml's *_ref (no importance matrix), Q8_K as ggml's activation quantizer. Scalar and portable;
// SIMD activation quantizers elsewhere must match quantize_row_q8_K / quantize_row_q8_0 exactly.
#pragma once
#include <cstddef>
#include <cstdint>

#include "quant/blocks.h"

namespace kr {

// ggml's nearest_int: round half to even via the float adder (valid for |x| < 2^22).
inline int nearest_int(float x) {
  float v = x + 12582912.f;
  int32_t i;
  static_assert(sizeof(i) == sizeof(v), "float is 32-bit");
  __builtin_memcpy(&i, &v, 4);
  return (i & 0x007fffff) - 0x00400000;
}

void quantize_row_q8_0(const float* x, block_q8_0* y, int64_t n);
void quantize_row_q4_0(const float* x, block_q4_0* y, int64_t n);
void quantize_row_q4_K(const float* x, block_q4_K* y, int64_t n);
void quantize_row_q6_K(const float* x, block_q6_K* y, int64_t n);
void quantize_row_q8_K(const float* x, block_q8_K* y, int64_t n);

bool has_quantizer(int32_t type);

// n floats -> blocks of `type` (n a multiple of the block size); throws ArgError otherwise.
void quantize_row(int32_t type, const float* x, void* dst, int64_t n);

// Whole tensor, rows split across the thread pool; sizes of both buffers checked first.
void quantize_tensor(const float* src, size_t src_len, int32_t type, int64_t n_rows, int64_t n_cols,
                     uint8_t* dst, size_t dst_len);

}  // namespace kr
