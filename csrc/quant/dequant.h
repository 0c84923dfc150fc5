// Row dequantization entry points shared by every CPU kernel: `dequantize_row` decodes n weights
// (n a multiple of the type's block size) from raw GGUF blocks into floats.
#pragma once
#include <cstddef>
#include <cstdint>

namespace kr {

// Throws ArgError for an unknown type or an n that is not a multiple of the block size.
void dequantize_row(int32_t type, const void* src, float* dst, int64_t n);

}  // namespace kr
