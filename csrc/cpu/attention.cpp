// Chunked-softmax MLA: a task converts a chunk of cached rows once (f16 -> f32) and scores it for all
// of its tokens and heads, folding the chunk into a running (max, sum, weighted latent) per query.
#include "cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common.h"
#include "cpu/cpu_features.h"
#include "cpu/gemv.h"
#include "cpu/threadpool.h"
#include "quant/half.h"

namespace kr {
namespace {

constexpr int64_t kChunk = 64;   // cached positions per chunk
constexpr int64_t kTokBlock = 4; // tokens per task (they share the converted chunk)
constexpr int64_t kHeadMax = 16; // heads per task at most

float dot_scalar(const float* a, const float* b, int64_t n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
  float r = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

void axpy_scalar(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void f16_row_scalar(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}

const AttnOps& ops() {
#if defined(__x86_64__)
  const Isa isa = active_isa();
  if (isa == Isa::Avx512 && cpu_features().has_avx512()) return attn_ops_avx512();
  if (isa != Isa::Scalar && cpu_features().has_avx2()) return attn_ops_avx2();
#endif
  return attn_ops_scalar();
}

}  // namespace

const AttnOps& attn_ops_scalar() {
  static const AttnOps o{dot_scalar, axpy_scalar, f16_row_scalar};
  return o;
}

size_t mla_scratch_floats(int64_t C, int64_t R) {
  const int64_t q = kTokBlock * kHeadMax;
  return (size_t)(kChunk * (C + R) + kChunk + 2 * q + q * C);
}

void mla_attend(const MlaArgs& a, float* tls) {
  KR_CHECK(a.T > 0 && a.H > 0 && a.C > 0 && a.R >= 0, "bad attention sizes");
  KR_CHECK(a.q_lat && a.q_pe && a.kv && a.o_lat && tls, "null attention buffer");
  const AttnOps& op = ops();
  const int64_t T = a.T, H = a.H, C = a.C, R = a.R, W = C + R;
  const int nt = num_threads();
  const int64_t tblocks = (T + kTokBlock - 1) / kTokBlock;
  // Head blocks: enough tasks for the pool (>= 4 per thread) without splitting below one head.
  int64_t hb = std::min<int64_t>(kHeadMax, std::max<int64_t>(1, (H * tblocks) / (4 * (int64_t)nt)));
  const int64_t hblocks = (H + hb - 1) / hb;
  const size_t per_thread = mla_scratch_floats(C, R);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  parallel_for((size_t)(tblocks * hblocks), [&](size_t task, int thread) {
    const int64_t t0 = (int64_t)task / hblocks * kTokBlock, t1 = std::min(T, t0 + kTokBlock);
    const int64_t h0 = (int64_t)task % hblocks * hb, h1 = std::min(H, h0 + hb);
    const int64_t nq = (t1 - t0) * (h1 - h0);
    float* buf = tls + per_thread * (size_t)thread;
    float* rows = buf;                       // [kChunk, W]
    float* sc = rows + kChunk * W;           // [kChunk]
    float* mx = sc + kChunk;                 // [nq]
    float* sum = mx + kTokBlock * kHeadMax;  // [nq]
    float* acc = sum + kTokBlock * kHeadMax; // [nq, C]
    std::fill(mx, mx + nq, neg_inf);
    std::fill(sum, sum + nq, 0.f);
    std::fill(acc, acc + nq * C, 0.f);
    const int64_t S = a.start + t1;  // positions the last token of the block sees
    for (int64_t s0 = 0; s0 < S; s0 += kChunk) {
      const int64_t n = std::min(kChunk, S - s0);
      const float* kv;
      if (a.f16) {
        const uint16_t* src = (const uint16_t*)a.kv + s0 * W;
        op.f16_row(src, rows, n * W);
        kv = rows;
      } else {
        kv = (const float*)a.kv + s0 * W;
      }
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t m = std::min(n, a.start + t + 1 - s0);  // causal: positions <= start + t
        if (m <= 0) continue;
        for (int64_t h = h0; h < h1; ++h) {
          const int64_t qi = (t - t0) * (h1 - h0) + (h - h0);
          const float* ql = a.q_lat + (h * T + t) * C;
          const float* qp = a.q_pe + (t * H + h) * R;
          float cmax = neg_inf;
          for (int64_t j = 0; j < m; ++j) {
            const float* r = kv + j * W;
            sc[j] = (op.dot(ql, r, C) + op.dot(qp, r + C, R)) * a.scale;
            cmax = std::max(cmax, sc[j]);
          }
          float* ac = acc + qi * C;
          if (cmax > mx[qi]) {
            const float corr = std::exp(mx[qi] - cmax);  // exp(-inf) = 0 on the first chunk
            sum[qi] *= corr;
            for (int64_t c = 0; c < C; ++c) ac[c] *= corr;
            mx[qi] = cmax;
          }
          for (int64_t j = 0; j < m; ++j) {
            const float p = std::exp(sc[j] - mx[qi]);
            sum[qi] += p;
            op.axpy(p, kv + j * W, ac, C);
          }
        }
      }
    }
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t h = h0; h < h1; ++h) {
        const int64_t qi = (t - t0) * (h1 - h0) + (h - h0);
        const float inv = 1.f / sum[qi];
        float* o = a.o_lat + (h * T + t) * C;
        const float* ac = acc + qi * C;
        for (int64_t c = 0; c < C; ++c) o[c] = ac[c] * inv;
      }
  });
}

}  // namespace kr
