// Batched-heads gemm over the per-row kernels of gemv.h: one activation preparation for all heads and
// one parallel_for over (head, row chunk) tasks.
#include "cpu/gemm_heads.h"

#include <algorithm>
#include <string>
#include <vector>

#include "common.h"
#include "cpu/gemv.h"
#include "cpu/threadpool.h"

namespace kr {

void gemm_heads(int32_t type, const void* w, size_t w_nbytes, int64_t heads, int64_t rows, int64_t cols,
                const float* x, int64_t n, float* out) {
  std::vector<uint8_t> act;
  gemm_heads_into(type, w, w_nbytes, heads, rows, cols, x, n, out, act);
}

void gemm_heads_into(int32_t type, const void* w, size_t w_nbytes, int64_t heads, int64_t rows, int64_t cols,
                     const float* x, int64_t n, float* out, std::vector<uint8_t>& quantized) {
  KR_CHECK(heads > 0, "heads must be positive");
  KR_CHECK(rows > 0, "rows must be positive");
  KR_CHECK(n > 0, "x must have at least one row per head");
  const size_t rb = weight_row_bytes(type, cols);
  // Division first: heads * rows * rb may overflow for hostile sizes.
  KR_CHECK(w_nbytes / rb >= (size_t)rows && w_nbytes / (rb * (size_t)rows) >= (size_t)heads,
           "weight buffer too short for " + std::to_string(heads) + " heads of " + std::to_string(rows) + " x " +
               std::to_string(rb) + " bytes, got " + std::to_string(w_nbytes));
  const RowKernel k = row_kernel(type);
  const size_t arb = act_row_bytes(k.act, cols);
  const size_t head_bytes = rb * (size_t)rows;
  // Float activations are used in place (x is already [heads * n] rows of cols floats).
  const uint8_t* act = (const uint8_t*)x;
  if (k.act != ActKind::F32) {
    const size_t need = arb * (size_t)(heads * n);
    if (quantized.size() < need) quantized.resize(need);
    for (int64_t i = 0; i < heads * n; ++i) quantize_act(k.act, x + i * cols, quantized.data() + arb * (size_t)i, cols);
    act = quantized.data();
  }
  const uint8_t* wb = (const uint8_t*)w;
  auto run = [&](int64_t h, int64_t r0, int64_t r1) {
    dot_rows(k, wb + head_bytes * (size_t)h, rb, r0, r1, cols, act + arb * (size_t)(h * n), arb, n,
             out + h * n * rows, rows);
  };
  const int nt = num_threads();
  const size_t work = head_bytes * (size_t)heads * (size_t)n;
  if (nt <= 1 || work < (64u << 10)) {  // tiny: the pool hand-out would cost more than it saves
    for (int64_t h = 0; h < heads; ++h) run(h, 0, rows);
    return;
  }
  // Enough tasks to balance dynamically (>= 4 per thread), each at most 64 rows like gemm's chunks.
  const int64_t per_head = std::max<int64_t>(1, (4 * nt + heads - 1) / heads);
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(64, (rows + per_head - 1) / per_head));
  const int64_t chunks = (rows + chunk - 1) / chunk;
  parallel_for((size_t)(heads * chunks), [&](size_t t, int) {
    const int64_t h = (int64_t)t / chunks, r0 = ((int64_t)t % chunks) * chunk;
    run(h, r0, std::min(rows, r0 + chunk));
  });
}

}  // namespace kr
