// Routing as transformers' DeepseekV3TopkRouter (and llama.cpp's build_moe_ffn): the groups kept are
// those with the largest sum of their top-2 biased scores, experts outside them cannot be chosen,
// and the weights are the unbiased scores of the chosen experts.
#include "cpu/router.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common.h"

namespace kr {

void route_token(const RouterArgs& a, const float* logits, int32_t* ids, float* weights, float* scratch) {
  const int64_t E = a.n_expert;
  float* score = scratch;       // gate score
  float* choice = scratch + E;  // score + bias, -inf outside the kept groups
  if (a.sigmoid) {
    for (int64_t e = 0; e < E; ++e) score[e] = 1.f / (1.f + std::exp(-logits[e]));
  } else {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t e = 0; e < E; ++e) m = std::max(m, logits[e]);
    float s = 0.f;
    for (int64_t e = 0; e < E; ++e) s += (score[e] = std::exp(logits[e] - m));
    for (int64_t e = 0; e < E; ++e) score[e] /= s;
  }
  for (int64_t e = 0; e < E; ++e) choice[e] = a.bias ? score[e] + a.bias[e] : score[e];
  const float neg_inf = -std::numeric_limits<float>::infinity();
  if (a.n_group > 1 && a.topk_group < a.n_group) {
    const int64_t G = a.n_group, per = E / G;
    float gs[256];
    KR_CHECK(G <= 256, "too many expert groups");
    for (int64_t g = 0; g < G; ++g) {  // sum of the group's top-2 (top-1 for one-expert groups)
      float b1 = neg_inf, b2 = neg_inf;
      for (int64_t e = g * per; e < (g + 1) * per; ++e) {
        const float v = choice[e];
        if (v > b1) { b2 = b1; b1 = v; } else if (v > b2) { b2 = v; }
      }
      gs[g] = per >= 2 ? b1 + b2 : b1;
    }
    bool keep[256] = {};
    for (int64_t r = 0; r < a.topk_group; ++r) {
      int64_t best = -1;
      for (int64_t g = 0; g < G; ++g)
        if (!keep[g] && (best < 0 || gs[g] > gs[best])) best = g;
      keep[best] = true;
    }
    for (int64_t g = 0; g < G; ++g)
      if (!keep[g]) std::fill(choice + g * per, choice + (g + 1) * per, neg_inf);
  }
  // top-k by repeated selection (k is small); ties go to the lower expert id; taken experts are
  // marked in `taken` so that -inf choices (masked groups) can never repeat one.
  float* taken = scratch + 2 * E;
  std::fill(taken, taken + E, 0.f);
  for (int64_t j = 0; j < a.k; ++j) {
    int64_t best = -1;
    for (int64_t e = 0; e < E; ++e)
      if (taken[e] == 0.f && (best < 0 || choice[e] > choice[best])) best = e;
    ids[j] = (int32_t)best;
    weights[j] = score[best];
    taken[best] = 1.f;
  }
  if (a.norm_topk) {
    float s = 0.f;
    for (int64_t j = 0; j < a.k; ++j) s += weights[j];
    s += 1e-20f;
    for (int64_t j = 0; j < a.k; ++j) weights[j] /= s;
  }
  for (int64_t j = 0; j < a.k; ++j) weights[j] *= a.scale;
}

}  // namespace kr
