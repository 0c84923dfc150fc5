// Row dequantization entry points shared by every CPU kernel: `dequantize_row` decodes n weights
// (n a multiple of the type's block size) from raw GGUF blocks into floats.
#pragma once
#include <cstddef>
#include <cstdint>

namespace kr {

// Throws ArgError for an unknown type or an n that is not a multiple of the block size.
void dequantize_row(int32_t type, const void* src, float* dst, int64_t n);

// Bytes of one row of n_cols weights; throws for unknown types and ragged rows (cpu/dequant_parallel.cpp).
int64_t row_bytes_checked(int32_t type, int64_t n_cols);

// Whole-tensor dequantization on the thread pool into f32 (out_dtype 0), f16 (1) or bf16 (2); both
// buffer lengths are checked against the shape before anything is read or written.
void dequantize_tensor(const uint8_t* src, size_t src_len, int32_t type, int64_t n_rows, int64_t n_cols,
                       void* dst, size_t dst_len, int out_dtype);

}  // namespace kr
