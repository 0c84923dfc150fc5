// Quantized GEMV for 1..kMaxTok tokens (mmvq-like): out[t][r] = W[r] . x[t] with x quantized once
// to q8a32 blocks. One warp per weight row; lane l takes sub-blocks l, l+32, ... so the lanes of a
// warp read consecutive bytes of the row, decode each sub-block once and dot it with every token.
#pragma once
#include "cuda/kernels/sub32.cuh"

namespace kr::gk {

constexpr int kMaxTok = 8;
constexpr int kGemvWarps = 4;  // rows per thread block

struct GemvArgs {
  const uint8_t* w = nullptr;     // rows x row_bytes
  size_t row_bytes = 0;
  int64_t rows = 0, cols = 0;
  const block_q8a32* x = nullptr; // [ntok][cols / 32]
  int ntok = 0;
  float* out = nullptr;           // out[t * out_stride + r]
  int64_t out_stride = 0;
};

KR_HD int64_t gemv_row_of(int64_t bx, int tx) { return bx * kGemvWarps + tx / kWarp; }
KR_HD int64_t gemv_grid(int64_t rows) { return (rows + kGemvWarps - 1) / kGemvWarps; }

// Phase 1 for format T: lane's partial dot of row r with each token (acc[0..ntok)).
template <int T>
KR_HD void gemv_lane(const uint8_t* row, int64_t nsub, const block_q8a32* x, int64_t x_stride, int ntok,
                     int lane, float* acc) {
  for (int t = 0; t < kMaxTok; ++t) acc[t] = 0.f;
  Sub32 s;
  for (int64_t ib = lane; ib < nsub; ib += kWarp) {
    unpack32<T>(row, ib, s);
    for (int t = 0; t < ntok; ++t) acc[t] += sub_dot(s, x[t * x_stride + ib]);
  }
}

struct GemvLane {
  const uint8_t* row;
  int64_t nsub;
  const block_q8a32* x;
  int64_t x_stride;
  int ntok, lane;
  float* acc;
  template <int T>
  KR_HD void run() { gemv_lane<T>(row, nsub, x, x_stride, ntok, lane, acc); }
};

KR_HD void gemv_lane_any(int32_t type, const GemvArgs& a, int64_t r, int lane, float* acc) {
  GemvLane f{a.w + r * a.row_bytes, a.cols / 32, a.x, a.cols / 32, a.ntok, lane, acc};
  dispatch_type(type, f);
}

// Phase 2 (after the warp sums): lane t < ntok stores token t's result.
KR_HD void gemv_store(const GemvArgs& a, int64_t r, int lane, const float* sum) {
  if (lane < a.ntok) a.out[lane * a.out_stride + r] = sum[lane];
}

}  // namespace kr::gk
