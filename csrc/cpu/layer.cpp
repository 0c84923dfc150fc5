// StepPlan: binding checks, scratch sizing, the shared linear/norm helpers and the FFN half of a
// layer (the attention half is in layer_attention.cpp).
#include "cpu/layer.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "common.h"
#include "cpu/gemv.h"
#include "cpu/threadpool.h"

namespace kr {
namespace {

constexpr int64_t kTokBlock = 32;  // activation rows per weight-row pass (they stay in L2)

}  // namespace

MatRef make_mat_ref(const void* w, int32_t type, int64_t rows, int64_t cols, size_t nbytes) {
  KR_CHECK(w != nullptr, "null weight pointer");
  KR_CHECK(rows > 0, "rows must be positive");
  MatRef m;
  m.row_bytes = weight_row_bytes(type, cols);
  (void)row_kernel(type);  // rejects types without a kernel now, not mid-step
  KR_CHECK(nbytes / m.row_bytes >= (size_t)rows, "weight buffer too short: need " +
                                                     std::to_string(m.row_bytes * (size_t)rows) + " bytes, got " +
                                                     std::to_string(nbytes));
  m.w = (const uint8_t*)w;
  m.type = type;
  m.rows = rows;
  m.cols = cols;
  return m;
}

void rms_norm_rows(const float* x, const float* w, int64_t T, int64_t n, int64_t x_stride, float* y,
                   int64_t y_stride, float eps) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * x_stride;
    double ss = 0.0;
    for (int64_t i = 0; i < n; ++i) ss += (double)xr[i] * xr[i];
    const float r = 1.f / std::sqrt((float)(ss / (double)n) + eps);
    float* yr = y + t * y_stride;
    for (int64_t i = 0; i < n; ++i) yr[i] = w[i] * (xr[i] * r);
  }
}

void linear_rows(const MatRef& m, const float* x, int64_t T, float* out, std::vector<uint8_t>& act) {
  const MatRef* ms[1] = {&m};
  float* outs[1] = {out};
  linear_multi(ms, outs, 1, x, T, act);
}

void linear_multi(const MatRef* const* ms, float* const* outs, int nm, const float* x, int64_t T,
                  std::vector<uint8_t>& act) {
  KR_CHECK(nm >= 1 && nm <= 4, "1..4 matrices per call");
  const int64_t cols = ms[0]->cols;
  RowKernel k[4];
  size_t off[3] = {0, 0, 0};
  bool used[3] = {false, false, false};
  size_t total = 0;
  for (int j = 0; j < nm; ++j) {
    KR_CHECK(ms[j]->set(), "weight not bound");
    KR_CHECK(ms[j]->cols == cols, "matrices of one call must share their input width");
    k[j] = row_kernel(ms[j]->type);
    const int kind = (int)k[j].act;
    if (!used[kind]) {
      used[kind] = true;
      off[kind] = total;
      total += act_row_bytes(k[j].act, cols) * (size_t)T;
    }
  }
  if (act.size() < total) act.resize(total);
  // Each activation kind in use is prepared once for all matrices of the call.
  for (int kind = 0; kind < 3; ++kind) {
    if (!used[kind]) continue;
    const ActKind ak = (ActKind)kind;
    const size_t arb = act_row_bytes(ak, cols);
    uint8_t* a = act.data() + off[kind];
    if (T >= 4)
      parallel_for((size_t)T, [&](size_t t, int) { quantize_act(ak, x + (int64_t)t * cols, a + arb * t, cols); });
    else
      for (int64_t t = 0; t < T; ++t) quantize_act(ak, x + t * cols, a + arb * (size_t)t, cols);
  }
  // One pool job over the row chunks of all matrices.
  const int nt = num_threads();
  int64_t chunk[4], first[5] = {0, 0, 0, 0, 0};
  for (int j = 0; j < nm; ++j) {
    const int64_t rows = ms[j]->rows;
    chunk[j] = std::max<int64_t>(1, std::min<int64_t>(64, (rows + 4 * nt - 1) / (4 * nt)));
    if (ms[j]->row_bytes * (size_t)rows * (size_t)T < (64u << 10)) chunk[j] = rows;  // tiny: one task
    first[j + 1] = first[j] + (rows + chunk[j] - 1) / chunk[j];
  }
  parallel_for((size_t)first[nm], [&](size_t task, int) {
    int j = 0;
    while ((int64_t)task >= first[j + 1]) ++j;
    const MatRef& m = *ms[j];
    const size_t arb = act_row_bytes(k[j].act, cols);
    const uint8_t* a = act.data() + off[(int)k[j].act];
    const int64_t r0 = ((int64_t)task - first[j]) * chunk[j], r1 = std::min(m.rows, r0 + chunk[j]);
    for (int64_t t0 = 0; t0 < T; t0 += kTokBlock) {
      const int64_t nb = std::min(kTokBlock, T - t0);
      dot_rows(k[j], m.w, m.row_bytes, r0, r1, cols, a + arb * (size_t)t0, arb, nb, outs[j] + t0 * m.rows, m.rows);
    }
  });
}

StepPlan::StepPlan(const StepConfig& cfg, int64_t n_layer, int64_t max_tokens) : cfg_(cfg), max_tokens_(max_tokens) {
  const StepConfig& c = cfg_;
  KR_CHECK(n_layer > 0 && n_layer <= 4096, "bad layer count");
  KR_CHECK(max_tokens > 0 && max_tokens <= 65536, "max_tokens must be in 1..65536");
  KR_CHECK(c.n_embd > 0 && c.n_head > 0 && c.kv_lora_rank > 0 && c.nope > 0 && c.rope > 0 && c.rope % 2 == 0 &&
               c.v_dim > 0 && c.q_lora_rank >= 0,
           "bad attention dimensions");
  KR_CHECK(c.n_expert >= 0 && c.n_expert_used >= 0 && c.n_expert_used <= c.n_expert, "bad expert counts");
  KR_CHECK(c.n_group >= 1 && (c.n_expert == 0 || c.n_expert % c.n_group == 0) && c.topk_group >= 1 &&
               c.topk_group <= c.n_group && c.n_group <= 256,
           "bad expert groups");
  layers_.resize((size_t)n_layer);
  const int64_t T = max_tokens, D = c.n_embd, H = c.n_head, C = c.kv_lora_rank, R = c.rope, N = c.nope,
                V = c.v_dim, E = c.n_expert, K = c.n_expert_used;
  h_.assign((size_t)(T * D), 0.f);
  x_.assign((size_t)(T * D), 0.f);
  y_.assign((size_t)(T * D), 0.f);
  qa_.assign((size_t)(T * std::max<int64_t>(1, c.q_lora_rank)), 0.f);
  q_.assign((size_t)(T * H * (N + R)), 0.f);
  kv_tmp_.assign((size_t)(T * (C + R)), 0.f);
  qh_.assign((size_t)(H * T * N), 0.f);
  qpe_.assign((size_t)(T * H * R), 0.f);
  qlat_.assign((size_t)(H * T * C), 0.f);
  olat_.assign((size_t)(H * T * C), 0.f);
  oh_.assign((size_t)(H * T * V), 0.f);
  o_.assign((size_t)(T * H * V), 0.f);
  logits_.assign((size_t)(T * std::max<int64_t>(1, E)), 0.f);
  route_tmp_.assign((size_t)(3 * std::max<int64_t>(1, E)), 0.f);
  sel_.assign((size_t)(T * std::max<int64_t>(1, K)), -1);
  selw_.assign((size_t)(T * std::max<int64_t>(1, K)), 0.f);
  sel_all_.assign((size_t)(T * (K + 1)), -1);
  selw_all_.assign((size_t)(T * (K + 1)), 0.f);
  ref_tmp_.resize((size_t)E + 1);
  ref_ptrs_.reserve((size_t)E + 1);
}

void StepPlan::set_rope(const float* cos, const float* sin, int64_t rows) {
  KR_CHECK(cos && sin && rows > 0, "bad rope table");
  cos_ = cos;
  sin_ = sin;
  rope_rows_ = rows;
}

void StepPlan::set_kv(const KvRef& kv) {
  KR_CHECK(kv.base != nullptr && kv.n_ctx > 0, "bad KV cache");
  kv_ = kv;
}

LayerPlan& StepPlan::layer(int64_t i) {
  KR_CHECK(i >= 0 && i < n_layer(), "layer " + std::to_string(i) + " out of range");
  return layers_[(size_t)i];
}

void StepPlan::validate(int64_t i) const {
  KR_CHECK(i >= 0 && i < n_layer(), "layer " + std::to_string(i) + " out of range");
  const LayerPlan& L = layers_[(size_t)i];
  const StepConfig& c = cfg_;
  const std::string at = " (layer " + std::to_string(i) + ")";
  const int64_t H = c.n_head, QD = H * (c.nope + c.rope);
  auto shape = [&](const MatRef& m, int64_t rows, int64_t cols, const char* what) {
    KR_CHECK(m.set(), std::string(what) + " is not bound" + at);
    KR_CHECK(m.rows == rows && m.cols == cols, std::string(what) + " has shape [" + std::to_string(m.rows) + ", " +
                                                   std::to_string(m.cols) + "], expected [" + std::to_string(rows) +
                                                   ", " + std::to_string(cols) + "]" + at);
  };
  KR_CHECK(L.attn_norm && L.ffn_norm && L.kv_a_norm, "norm weights not bound" + at);
  if (c.q_lora_rank > 0) {
    shape(L.q_a, c.q_lora_rank, c.n_embd, "q_a");
    shape(L.q_b, QD, c.q_lora_rank, "q_b");
    KR_CHECK(L.q_a_norm, "q_a_norm not bound" + at);
  } else {
    shape(L.q, QD, c.n_embd, "q");
  }
  shape(L.kv_a, c.kv_lora_rank + c.rope, c.n_embd, "kv_a");
  shape(L.k_b, H * c.kv_lora_rank, c.nope, "k_b");
  shape(L.v_b, H * c.v_dim, c.kv_lora_rank, "v_b");
  shape(L.out, c.n_embd, H * c.v_dim, "out");
  if (L.moe) {
    KR_CHECK(L.router_w, "router not bound" + at);
    KR_CHECK((int64_t)L.experts.size() == c.n_expert, "expert table not bound" + at);
  } else {
    KR_CHECK(L.ffn.n_ff > 0, "dense FFN not bound" + at);
  }
  if (L.ffn.n_ff > 0) KR_CHECK(L.ffn.n_embd == c.n_embd, "FFN width mismatch" + at);
}

void StepPlan::linear(const MatRef& m, const float* x, int64_t T, float* out) { linear_rows(m, x, T, out, act_); }

void StepPlan::ffn(int64_t i, int64_t T, const int32_t* slot_experts, const uint64_t* slot_ptrs, int64_t n_slots) {
  KR_CHECK(T > 0 && T <= max_tokens_, "token count out of range");
  LayerPlan& L = layer(i);
  const int64_t D = cfg_.n_embd, K = cfg_.n_expert_used, E = cfg_.n_expert;
  ref_ptrs_.clear();
  if (!L.moe) {
    KR_CHECK(L.ffn.n_ff > 0, "dense FFN not bound");
    ref_ptrs_.push_back(&L.ffn);
    std::fill(sel_all_.begin(), sel_all_.begin() + T, 0);
    std::fill(selw_all_.begin(), selw_all_.begin() + T, 1.f);
    moe_ffn(x_.data(), h_.data(), T, D, ref_ptrs_, sel_all_.data(), selw_all_.data(), 1, true);
    return;
  }
  KR_CHECK((int64_t)L.experts.size() == E, "expert table not bound");
  KR_CHECK(n_slots >= 0 && n_slots <= E, "too many slot overrides");
  for (int64_t e = 0; e < E; ++e) ref_ptrs_.push_back(&L.experts[(size_t)e]);
  for (int64_t j = 0; j < n_slots; ++j) {
    const int32_t e = slot_experts[j];
    KR_CHECK(e >= 0 && e < E, "slot expert id out of range");
    ExpertRef& r = ref_tmp_[(size_t)j];
    r = L.experts[(size_t)e];  // same types and sizes: the slot holds the file's bytes
    for (int p = 0; p < 3; ++p) {
      KR_CHECK(slot_ptrs[3 * j + p] != 0, "null slot pointer");
      r.w[p] = (const uint8_t*)(uintptr_t)slot_ptrs[3 * j + p];
    }
    ref_ptrs_[(size_t)e] = &r;
  }
  const bool shared = L.ffn.n_ff > 0;
  if (shared) ref_ptrs_.push_back(&L.ffn);
  const int64_t KA = K + (shared ? 1 : 0);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < K; ++j) {
      sel_all_[(size_t)(t * KA + j)] = sel_[(size_t)(t * K + j)];
      selw_all_[(size_t)(t * KA + j)] = selw_[(size_t)(t * K + j)];
    }
    if (shared) {
      sel_all_[(size_t)(t * KA + K)] = (int32_t)E;
      selw_all_[(size_t)(t * KA + K)] = 1.f;
    }
  }
  moe_ffn(x_.data(), h_.data(), T, D, ref_ptrs_, sel_all_.data(), selw_all_.data(), KA, true);
}

void StepPlan::layers(int64_t l0, int64_t l1, int64_t T, int64_t start) {
  KR_CHECK(0 <= l0 && l0 <= l1 && l1 <= n_layer(), "layer range out of bounds");
  for (int64_t i = l0; i < l1; ++i) {
    attention(i, T, start);
    ffn(i, T, nullptr, nullptr, 0);
  }
}

}  // namespace kr
