// Batched-heads gemm: H independent small matrices (MLA's per-head k_b / v_b) applied in one native
// call, so a decode token pays one thread-pool hand-out per tensor instead of one per head.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace kr {

// out[h][i][r] = dot(W_h row r, x[h][i]) for h < heads, i < n, r < rows, where W is `heads`
// contiguous slices of rows x row_bytes raw GGUF weight bytes (w_nbytes checked first), x is
// float32 [heads, n, cols] and out float32 [heads, n, rows]. Uses the same row kernels (and ISA
// choice) as gemm; threads split heads x row-chunks through kr::parallel_for.
void gemm_heads(int32_t type, const void* w, size_t w_nbytes, int64_t heads, int64_t rows, int64_t cols,
                const float* x, int64_t n, float* out);

// The same with the prepared activations kept in `act` (grown when too small, else reused), for
// callers that run the same shapes every step (the native layer step).
void gemm_heads_into(int32_t type, const void* w, size_t w_nbytes, int64_t heads, int64_t rows, int64_t cols,
                     const float* x, int64_t n, float* out, std::vector<uint8_t>& act);

}  // namespace kr
