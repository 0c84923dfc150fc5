// Grouped MoE FFN for a few tokens (mul_mat_id-like): a route table holds, per (token, k), the
// device pointers of the selected expert's gate/up/down rows (cache slots or resident weights) and
// its gate weight. Five launches for the whole layer: quantize x; gate+up+SiLU for every route;
// quantize h; down for every route; weighted sum over k in fixed order (no atomics, deterministic).
#pragma once
#include "cuda/kernels/gemv.cuh"

namespace kr::gk {

struct MoeRoute {
  const uint8_t* w[3] = {nullptr, nullptr, nullptr};  // gate, up, down; gate null = skipped slot
  int32_t type[3] = {0, 0, 0};
  int32_t tok = 0;
  float weight = 0.f;
};

struct MoeArgs {
  const MoeRoute* routes = nullptr;  // [n_tok * k], route i belongs to token i / k
  int64_t n_routes = 0, k = 0, n_tok = 0;
  int64_t n_embd = 0, n_ff = 0;
  const float* x = nullptr;         // [n_tok][n_embd]
  const block_q8a32* xq = nullptr;  // [n_tok][n_embd / 32]
  float* h = nullptr;               // [n_routes][n_ff]
  const block_q8a32* hq = nullptr;  // [n_routes][n_ff / 32]
  float* y = nullptr;               // [n_routes][n_embd]
  float* out = nullptr;             // [n_tok][n_embd]
  bool accumulate = false;
};

// Gate/up phase: grid (gemv_grid(n_ff), n_routes); lane partials of gate and up row r.
KR_HD void moe_gate_up_lane(const MoeArgs& a, int64_t route, int64_t r, int lane, float* g, float* u) {
  const MoeRoute& R = a.routes[route];
  *g = *u = 0.f;
  if (R.w[0] == nullptr) return;
  const int64_t nsub = a.n_embd / 32;
  const size_t rb0 = (size_t)(a.n_embd / type_traits(R.type[0]).block_size) * type_traits(R.type[0]).type_size;
  const size_t rb1 = (size_t)(a.n_embd / type_traits(R.type[1]).block_size) * type_traits(R.type[1]).type_size;
  float acc[kMaxTok];
  GemvLane fg{R.w[0] + r * rb0, nsub, a.xq + R.tok * nsub, nsub, 1, lane, acc};
  dispatch_type(R.type[0], fg);
  *g = acc[0];
  GemvLane fu{R.w[1] + r * rb1, nsub, a.xq + R.tok * nsub, nsub, 1, lane, acc};
  dispatch_type(R.type[1], fu);
  *u = acc[0];
}

KR_HD void moe_gate_up_store(const MoeArgs& a, int64_t route, int64_t r, int lane, float g, float u) {
  if (lane == 0) a.h[route * a.n_ff + r] = a.routes[route].w[0] ? silu_hd(g) * u : 0.f;
}

// Down phase: grid (gemv_grid(n_embd), n_routes).
KR_HD float moe_down_lane(const MoeArgs& a, int64_t route, int64_t r, int lane) {
  const MoeRoute& R = a.routes[route];
  if (R.w[0] == nullptr) return 0.f;
  const int64_t nsub = a.n_ff / 32;
  const size_t rb = (size_t)(a.n_ff / type_traits(R.type[2]).block_size) * type_traits(R.type[2]).type_size;
  float acc[kMaxTok];
  GemvLane f{R.w[2] + r * rb, nsub, a.hq + route * nsub, nsub, 1, lane, acc};
  dispatch_type(R.type[2], f);
  return acc[0];
}

KR_HD void moe_down_store(const MoeArgs& a, int64_t route, int64_t r, int lane, float v) {
  if (lane == 0) a.y[route * a.n_embd + r] = v;
}

// Combine: one thread per output element i of [n_tok][n_embd].
KR_HD void moe_combine(const MoeArgs& a, int64_t i) {
  if (i >= a.n_tok * a.n_embd) return;
  const int64_t t = i / a.n_embd, c = i % a.n_embd;
  float s = a.accumulate ? a.out[i] : 0.f;
  for (int64_t j = 0; j < a.k; ++j) {
    const MoeRoute& R = a.routes[t * a.k + j];
    if (R.w[0] != nullptr) s += R.weight * a.y[(t * a.k + j) * a.n_embd + c];
  }
  a.out[i] = s;
}

}  // namespace kr::gk
