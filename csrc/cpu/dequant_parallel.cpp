// Whole-tensor dequantization into f32 / f16 / bf16 on the shared thread pool. Rows are contiguous
// in both buffers, so the tensor is one flat run of blocks, split into equal chunks; a single long
// row is parallel too.
#include <algorithm>
#include <string>

#include "common.h"
#include "cpu/threadpool.h"
#include "quant/decode.h"
#include "quant/dequant.h"
#include "quant/half.h"

namespace kr {

enum class OutDtype : int { F32 = 0, F16 = 1, BF16 = 2 };

// Bytes per row of n weights of `type`; throws for unknown types and ragged rows.
int64_t row_bytes_checked(int32_t type, int64_t n_cols) {
  const TypeTraits tt = type_traits(type);
  KR_CHECK(tt.name != nullptr, "unknown ggml type " + std::to_string(type));
  KR_CHECK(n_cols >= 0, "negative column count");
  KR_CHECK(n_cols % tt.block_size == 0, "row length " + std::to_string(n_cols) +
                                            " is not a multiple of the " + tt.name + " block size " +
                                            std::to_string(tt.block_size));
  return n_cols / tt.block_size * tt.type_size;
}

void dequantize_tensor(const uint8_t* src, size_t src_len, int32_t type, int64_t n_rows, int64_t n_cols,
                       void* dst, size_t dst_len, int out_dtype) {
  KR_CHECK(has_decoder(type), "no dequantizer for ggml type " + std::to_string(type));
  KR_CHECK(n_rows >= 0, "negative row count");
  KR_CHECK(out_dtype >= 0 && out_dtype <= 2, "out_dtype must be 0 (f32), 1 (f16) or 2 (bf16)");
  const int64_t rb = row_bytes_checked(type, n_cols);
  KR_CHECK(n_cols == 0 || n_rows <= INT64_MAX / n_cols, "tensor too large");
  KR_CHECK(rb == 0 || n_rows <= INT64_MAX / rb, "tensor too large");
  KR_CHECK((uint64_t)(n_rows * rb) == src_len,
           "buffer holds " + std::to_string(src_len) + " bytes but the shape needs " +
               std::to_string(n_rows * rb));
  const size_t out_elt = out_dtype == 0 ? 4 : 2;
  KR_CHECK((uint64_t)(n_rows * n_cols) * out_elt == dst_len, "output buffer has the wrong size");
  if (n_rows == 0 || n_cols == 0) return;

  const TypeTraits tt = type_traits(type);
  const int64_t n_blocks = n_rows * n_cols / tt.block_size;
  // ~16K weights per task: enough to amortise dispatch, small enough to balance across threads.
  const int64_t per_task = std::max<int64_t>(1, 16384 / tt.block_size);
  const int64_t n_tasks = (n_blocks + per_task - 1) / per_task;
  const OutDtype od = static_cast<OutDtype>(out_dtype);
  parallel_for((size_t)n_tasks, [&](size_t task, int) {
    const int64_t b0 = (int64_t)task * per_task;
    const int64_t nb = std::min(per_task, n_blocks - b0);
    const uint8_t* s = src + b0 * tt.type_size;
    const int64_t w0 = b0 * tt.block_size, nw = nb * tt.block_size;
    if (od == OutDtype::F32) {
      dequantize_row(type, s, static_cast<float*>(dst) + w0, nw);
      return;
    }
    float tmp[1024];  // a whole number of blocks of any type (QK divides 1024)
    uint16_t* out = static_cast<uint16_t*>(dst) + w0;
    const int64_t step_blocks = 1024 / tt.block_size;
    for (int64_t i = 0; i < nb; i += step_blocks) {
      const int64_t k = std::min(step_blocks, nb - i);
      const int64_t n = k * tt.block_size;
      dequantize_row(type, s + i * tt.type_size, tmp, n);
      uint16_t* o = out + i * tt.block_size;
      if (od == OutDtype::F16)
        for (int64_t j = 0; j < n; ++j) o[j] = fp32_to_fp16(tmp[j]);
      else
        for (int64_t j = 0; j < n; ++j) o[j] = fp32_to_bf16(tmp[j]);
    }
  });
}

}  // namespace kr
