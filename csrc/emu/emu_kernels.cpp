// Host emulation of the GPU launches, lane by lane; see emu_kernels.h.
#include "emu/emu_kernels.h"

#include <string>

#include "cuda/kernels/act_q8.cuh"
#include "cuda/kernels/dequant_tile.cuh"

namespace kr::emu {

using namespace kr::gk;

void act_quant(const float* x, int64_t n_blocks, block_q8a32* y) {
  const int64_t grid = (n_blocks + kActWarps - 1) / kActWarps;
  for (int64_t bx = 0; bx < grid; ++bx) {
    for (int w = 0; w < kActWarps; ++w) {
      const int64_t blk = act_block_of(bx, w * kWarp);
      if (blk >= n_blocks) continue;  // warp-uniform exit, as in the kernel
      float amax[kWarp];
      int sum[kWarp];
      for (int l = 0; l < kWarp; ++l) amax[l] = act_amax_lane(x, blk, l);
      lanes_max(amax);
      for (int l = 0; l < kWarp; ++l) sum[l] = act_quant_lane(x, blk, l, amax[l], y);
      lanes_sum(sum);
      for (int l = 0; l < kWarp; ++l) act_finish_lane(blk, l, amax[l], sum[l], y);
    }
  }
}

void gemv_launch(int32_t type, const GemvArgs& a) {
  const int64_t grid = gemv_grid(a.rows);
  for (int64_t bx = 0; bx < grid; ++bx) {
    for (int w = 0; w < kGemvWarps; ++w) {
      const int64_t r = gemv_row_of(bx, w * kWarp);
      if (r >= a.rows) continue;
      float acc[kWarp][kMaxTok];
      for (int l = 0; l < kWarp; ++l) gemv_lane_any(type, a, r, l, acc[l]);
      float sum[kMaxTok][kWarp];
      for (int t = 0; t < kMaxTok; ++t) {
        for (int l = 0; l < kWarp; ++l) sum[t][l] = acc[l][t];
        lanes_sum(sum[t]);
      }
      for (int l = 0; l < kWarp; ++l) {
        float mine[kMaxTok];
        for (int t = 0; t < kMaxTok; ++t) mine[t] = sum[t][l];
        gemv_store(a, r, l, mine);
      }
    }
  }
}

void gemv(int32_t type, const uint8_t* w, size_t w_bytes, int64_t rows, int64_t cols, const float* x, int64_t n,
          float* out) {
  KR_CHECK(gpu_dot_supported(type), std::string("no GPU integer kernel for ggml type ") + std::to_string(type));
  const TypeTraits tt = type_traits(type);
  KR_CHECK(rows >= 0 && n >= 0 && cols > 0 && cols % tt.block_size == 0 && cols % 32 == 0, "bad shape");
  const size_t rb = (size_t)(cols / tt.block_size) * tt.type_size;
  KR_CHECK(w_bytes == rb * (size_t)rows, "weight buffer size does not match rows x row bytes");
  std::vector<block_q8a32> xq((size_t)(n * cols / 32));
  act_quant(x, n * cols / 32, xq.data());
  for (int64_t t0 = 0; t0 < n; t0 += kMaxTok) {
    GemvArgs a;
    a.w = w;
    a.row_bytes = rb;
    a.rows = rows;
    a.cols = cols;
    a.x = xq.data() + t0 * (cols / 32);
    a.ntok = (int)(n - t0 < kMaxTok ? n - t0 : kMaxTok);
    a.out = out + t0 * rows;
    a.out_stride = rows;
    gemv_launch(type, a);
  }
}

void moe(const std::vector<MoeRoute>& routes, int64_t n_tok, int64_t k, int64_t n_embd, int64_t n_ff,
         const float* x, float* out, bool accumulate) {
  const int64_t nr = n_tok * k;
  KR_CHECK((int64_t)routes.size() == nr, "route table must hold n_tok * k entries");
  std::vector<block_q8a32> xq((size_t)(n_tok * n_embd / 32)), hq((size_t)(nr * n_ff / 32));
  std::vector<float> h((size_t)(nr * n_ff)), y((size_t)(nr * n_embd));
  MoeArgs a;
  a.routes = routes.data();
  a.n_routes = nr;
  a.k = k;
  a.n_tok = n_tok;
  a.n_embd = n_embd;
  a.n_ff = n_ff;
  a.x = x;
  a.xq = xq.data();
  a.h = h.data();
  a.hq = hq.data();
  a.y = y.data();
  a.out = out;
  a.accumulate = accumulate;
  act_quant(a.x, n_tok * n_embd / 32, xq.data());  // launch 1
  for (int64_t route = 0; route < nr; ++route) {  // launch 2: grid (gemv_grid(n_ff), n_routes)
    for (int64_t bx = 0; bx < gemv_grid(n_ff); ++bx) {
      for (int w = 0; w < kGemvWarps; ++w) {
        const int64_t r = gemv_row_of(bx, w * kWarp);
        if (r >= n_ff) continue;
        float g[kWarp], u[kWarp];
        for (int l = 0; l < kWarp; ++l) moe_gate_up_lane(a, route, r, l, &g[l], &u[l]);
        lanes_sum(g);
        lanes_sum(u);
        for (int l = 0; l < kWarp; ++l) moe_gate_up_store(a, route, r, l, g[l], u[l]);
      }
    }
  }
  act_quant(h.data(), nr * n_ff / 32, hq.data());
  for (int64_t route = 0; route < nr; ++route) {  // launch 4
    for (int64_t bx = 0; bx < gemv_grid(n_embd); ++bx) {
      for (int w = 0; w < kGemvWarps; ++w) {
        const int64_t r = gemv_row_of(bx, w * kWarp);
        if (r >= n_embd) continue;
        float v[kWarp];
        for (int l = 0; l < kWarp; ++l) v[l] = moe_down_lane(a, route, r, l);
        lanes_sum(v);
        for (int l = 0; l < kWarp; ++l) moe_down_store(a, route, r, l, v[l]);
      }
    }
  }
  const int64_t total = n_tok * n_embd;  // launch 5: 256 threads per block
  for (int64_t bx = 0; bx < (total + 255) / 256; ++bx)
    for (int tx = 0; tx < 256; ++tx) moe_combine(a, bx * 256 + tx);
}

void dequant_tile(int32_t type, const uint8_t* w, int64_t cols, int64_t r0, int64_t r1, int out_dtype, void* out) {
  const TypeTraits tt = type_traits(type);
  KR_CHECK(has_decoder(type), "no dequantizer for ggml type " + std::to_string(type));
  KR_CHECK(cols > 0 && cols % tt.block_size == 0 && r0 >= 0 && r1 >= r0, "bad tile");
  KR_CHECK(out_dtype == 0 || out_dtype == 2, "out_dtype must be 0 (f32) or 2 (bf16)");
  const int64_t bpr = cols / tt.block_size, nb = (r1 - r0) * bpr;
  const uint8_t* src = w + r0 * bpr * tt.type_size;
  const int64_t grid = (nb + kTileThreads - 1) / kTileThreads;
  for (int64_t bx = 0; bx < grid; ++bx)
    for (int tx = 0; tx < kTileThreads; ++tx) {
      const int64_t i = bx * kTileThreads + tx;
      if (out_dtype == 0) dequant_tile_thread<0>(type, src, tt.block_size, tt.type_size, nb, i, out);
      else dequant_tile_thread<2>(type, src, tt.block_size, tt.type_size, nb, i, out);
    }
}

}  // namespace kr::emu
