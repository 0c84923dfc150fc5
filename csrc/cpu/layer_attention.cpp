// The attention half of a layer: norm, q / kv projections, rope from the model's table, the latent
// cache write (f32, or f16 rounded to nearest even as torch does), absorbed MLA through the batched
// heads kernel and the chunked softmax, output projection and residual; then the FFN norm and router.
#include <algorithm>
#include <cmath>
#include <string>

#include "common.h"
#include "cpu/attention.h"
#include "cpu/gemm_heads.h"
#include "cpu/gemv.h"
#include "cpu/layer.h"
#include "cpu/router.h"
#include "cpu/threadpool.h"
#include "quant/half.h"

namespace kr {
namespace {

// Interleaved pairs (x0, x1), (x2, x3)...: out0 = x0 c - x1 s, out1 = x1 c + x0 s.
inline void rope_pairs(const float* x, float* y, const float* c, const float* s, int64_t R) {
  for (int64_t i = 0; i < R / 2; ++i) {
    const float x0 = x[2 * i], x1 = x[2 * i + 1];
    y[2 * i] = x0 * c[i] - x1 * s[i];
    y[2 * i + 1] = x1 * c[i] + x0 * s[i];
  }
}

}  // namespace

void StepPlan::attention(int64_t i, int64_t T, int64_t start) {
  KR_CHECK(T > 0 && T <= max_tokens_, "token count " + std::to_string(T) + " out of range 1.." +
                                          std::to_string(max_tokens_));
  KR_CHECK(kv_.base != nullptr && cos_ != nullptr, "KV cache / rope table not bound");
  KR_CHECK(start >= 0 && start + T <= kv_.n_ctx, "context overflow: " + std::to_string(start) + " + " +
                                                      std::to_string(T) + " > n_ctx " + std::to_string(kv_.n_ctx));
  KR_CHECK(start + T <= rope_rows_, "rope table too short");
  LayerPlan& L = layer(i);
  const StepConfig& c = cfg_;
  const int64_t D = c.n_embd, H = c.n_head, C = c.kv_lora_rank, R = c.rope, N = c.nope, V = c.v_dim,
                QD = N + R, W = C + R;
  rms_norm_rows(h_.data(), L.attn_norm, T, D, D, x_.data(), D, c.eps);
  // Both projections of the normed input in one pool job.
  const MatRef* first[2] = {c.q_lora_rank > 0 ? &L.q_a : &L.q, &L.kv_a};
  float* first_out[2] = {c.q_lora_rank > 0 ? qa_.data() : q_.data(), kv_tmp_.data()};
  linear_multi(first, first_out, 2, x_.data(), T, act_);
  if (c.q_lora_rank > 0) {
    rms_norm_rows(qa_.data(), L.q_a_norm, T, c.q_lora_rank, c.q_lora_rank, qa_.data(), c.q_lora_rank, c.eps);
    linear(L.q_b, qa_.data(), T, q_.data());
  }

  // Cache rows of this layer: normalised latent then roped key.
  const size_t elt = kv_.f16 ? 2 : 4;
  uint8_t* kv_layer = kv_.base + (size_t)i * (size_t)kv_.n_ctx * (size_t)W * elt;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t pos = start + t;
    float* row = kv_tmp_.data() + t * W;
    rms_norm_rows(row, L.kv_a_norm, 1, C, W, row, W, c.eps);
    rope_pairs(row + C, row + C, cos_ + pos * (R / 2), sin_ + pos * (R / 2), R);
    if (kv_.f16) {
      uint16_t* dst = (uint16_t*)kv_layer + pos * W;
      for (int64_t j = 0; j < W; ++j) dst[j] = fp32_to_fp16(row[j]);
    } else {
      std::copy_n(row, W, (float*)kv_layer + pos * W);
    }
    for (int64_t h = 0; h < H; ++h) {
      const float* qr = q_.data() + (t * H + h) * QD;
      std::copy_n(qr, N, qh_.data() + (h * T + t) * N);
      rope_pairs(qr + N, qpe_.data() + (t * H + h) * R, cos_ + pos * (R / 2), sin_ + pos * (R / 2), R);
    }
  }

  // q_lat[h] = k_b[h] q_nope[h]; attention in latent space; o[h] = v_b[h] o_lat[h].
  gemm_heads_into(L.k_b.type, L.k_b.w, L.k_b.row_bytes * (size_t)L.k_b.rows, H, C, N, qh_.data(), T, qlat_.data(),
                  head_act_);
  const int nt = num_threads();
  const size_t per = mla_scratch_floats(C, R);
  if (attn_threads_ < nt) {  // grows only when the pool does
    attn_tls_.assign(per * (size_t)nt, 0.f);
    attn_threads_ = nt;
  }
  MlaArgs a;
  a.q_lat = qlat_.data();
  a.q_pe = qpe_.data();
  a.kv = kv_layer;
  a.f16 = kv_.f16;
  a.T = T;
  a.H = H;
  a.C = C;
  a.R = R;
  a.start = start;
  a.scale = c.softmax_scale;
  a.o_lat = olat_.data();
  mla_attend(a, attn_tls_.data());
  gemm_heads_into(L.v_b.type, L.v_b.w, L.v_b.row_bytes * (size_t)L.v_b.rows, H, V, C, olat_.data(), T, oh_.data(),
                  head_act_);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) std::copy_n(oh_.data() + (h * T + t) * V, V, o_.data() + (t * H + h) * V);
  linear(L.out, o_.data(), T, y_.data());
  float* hp = h_.data();
  const float* yp = y_.data();
  for (int64_t j = 0; j < T * D; ++j) hp[j] += yp[j];

  rms_norm_rows(h_.data(), L.ffn_norm, T, D, D, x_.data(), D, c.eps);
  if (L.moe) route(L, T);
}

void StepPlan::route(const LayerPlan& L, int64_t T) {
  const StepConfig& c = cfg_;
  const int64_t E = c.n_expert, K = c.n_expert_used;
  MatRef rw;
  rw.w = (const uint8_t*)L.router_w;
  rw.type = 0;  // F32
  rw.rows = E;
  rw.cols = c.n_embd;
  rw.row_bytes = (size_t)c.n_embd * sizeof(float);
  linear(rw, x_.data(), T, logits_.data());
  RouterArgs ra;
  ra.n_expert = E;
  ra.k = K;
  ra.n_group = c.n_group;
  ra.topk_group = c.topk_group;
  ra.sigmoid = c.sigmoid;
  ra.norm_topk = c.norm_topk;
  ra.scale = c.routed_scale;
  ra.bias = L.router_b;
  for (int64_t t = 0; t < T; ++t)
    route_token(ra, logits_.data() + t * E, sel_.data() + t * K, selw_.data() + t * K, route_tmp_.data());
}

}  // namespace kr
