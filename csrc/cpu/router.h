// DeepSeek-V3 / Kimi K2 routing on the CPU: gate scores (sigmoid or softmax) of the router logits,
// correction bias for the choice only, group-limited top-k, normalised, scaled.
#pragma once
#include <cstdint>

namespace kr {

struct RouterArgs {
  int64_t n_expert = 0, k = 0, n_group = 1, topk_group = 1;
  bool sigmoid = true, norm_topk = false;
  float scale = 1.f;
  const float* bias = nullptr;  // [n_expert] or null
};

// logits [n_expert] of one token -> ids [k], weights [k]; scratch: 3 * n_expert floats.
void route_token(const RouterArgs& a, const float* logits, int32_t* ids, float* weights, float* scratch);

}  // namespace kr
