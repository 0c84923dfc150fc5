// Fused MoE FFN: group tokens by expert, gate/up dot products for all of an expert's tokens per
// weight row (each row read once), silu*up, re-quantize, down, then a fixed-order weighted sum.
#include "cpu/moe.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "common.h"
#include "cpu/gemv.h"
#include "cpu/threadpool.h"

namespace kr {
namespace {

constexpr int64_t kRowChunk = 32;

struct Group {
  int e = 0;                   // index into experts
  std::vector<int64_t> toks;   // token of each row of this group (a token may repeat)
  std::vector<uint8_t> act_g, act_u, act_d;  // prepared activations, one row per entry of toks
  std::vector<float> g, u, y;  // [rows, n_ff] gate / up (then silu*up in g), [rows, n_embd] down
};

void gather_rows(const std::vector<uint8_t>& all, size_t arb, const std::vector<int64_t>& toks, std::vector<uint8_t>& dst) {
  dst.resize(arb * toks.size());
  for (size_t i = 0; i < toks.size(); ++i) std::copy_n(all.data() + arb * (size_t)toks[i], arb, dst.data() + arb * i);
}

}  // namespace

ExpertRef make_expert_ref(const void* gate, const void* up, const void* down, int32_t gate_type, int32_t up_type,
                          int32_t down_type, int64_t n_ff, int64_t n_embd, size_t gate_nbytes, size_t up_nbytes,
                          size_t down_nbytes) {
  KR_CHECK(n_ff > 0 && n_embd > 0, "n_ff and n_embd must be positive");
  KR_CHECK(gate && up && down, "expert weight pointers must not be null");
  ExpertRef r;
  r.w[0] = (const uint8_t*)gate;
  r.w[1] = (const uint8_t*)up;
  r.w[2] = (const uint8_t*)down;
  r.type[0] = gate_type;
  r.type[1] = up_type;
  r.type[2] = down_type;
  r.nbytes[0] = gate_nbytes;
  r.nbytes[1] = up_nbytes;
  r.nbytes[2] = down_nbytes;
  r.n_ff = n_ff;
  r.n_embd = n_embd;
  const char* names[3] = {"gate", "up", "down"};
  for (int p = 0; p < 3; ++p) {
    const int64_t rows = p < 2 ? n_ff : n_embd, cols = p < 2 ? n_embd : n_ff;
    const size_t rb = weight_row_bytes(r.type[p], cols);
    (void)row_kernel(r.type[p]);  // rejects types without a kernel now, not mid-call
    KR_CHECK(r.nbytes[p] / rb >= (size_t)rows, std::string(names[p]) + " buffer too short: need " +
                                                   std::to_string(rb * (size_t)rows) + " bytes, got " +
                                                   std::to_string(r.nbytes[p]));
  }
  return r;
}

void moe_ffn(const float* x, float* out, int64_t n_tok, int64_t n_embd, const std::vector<const ExpertRef*>& experts,
             const int32_t* sel, const float* w, int64_t k, bool accumulate) {
  KR_CHECK(n_tok >= 0 && k >= 0, "bad n_tok / k");
  for (const ExpertRef* e : experts) {
    KR_CHECK(e != nullptr, "null expert");
    KR_CHECK(e->n_embd == n_embd, "expert n_embd " + std::to_string(e->n_embd) + " != x width " + std::to_string(n_embd));
  }
  const int64_t n_exp = (int64_t)experts.size();
  for (int64_t i = 0; i < n_tok * k; ++i)
    KR_CHECK(sel[i] >= -1 && sel[i] < n_exp, "expert index " + std::to_string(sel[i]) + " out of range");

  // Group (token, slot) pairs by expert; where[t*k+j] = (group, row) for the final sum.
  std::vector<Group> groups;
  std::vector<int> group_of(n_exp, -1);
  std::vector<std::pair<int, int>> where(n_tok * k, {-1, -1});
  for (int64_t t = 0; t < n_tok; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int e = sel[t * k + j];
      if (e < 0) continue;
      if (group_of[e] < 0) {
        group_of[e] = (int)groups.size();
        groups.emplace_back();
        groups.back().e = e;
      }
      Group& g = groups[group_of[e]];
      where[t * k + j] = {group_of[e], (int)g.toks.size()};
      g.toks.push_back(t);
    }

  // Quantize every token's x once per activation kind in use, then gather each group's rows.
  std::vector<uint8_t> xq[3];
  bool have[3] = {false, false, false};
  for (Group& g : groups) {
    const ExpertRef& er = *experts[g.e];
    for (int p = 0; p < 2; ++p) {
      const RowKernel rk = row_kernel(er.type[p]);
      const int kind = (int)rk.act;
      if (!have[kind]) {
        xq[kind] = prepare_act(rk, x, n_tok, n_embd);
        have[kind] = true;
      }
      gather_rows(xq[kind], act_row_bytes(rk.act, n_embd), g.toks, p == 0 ? g.act_g : g.act_u);
    }
    g.g.assign(g.toks.size() * (size_t)er.n_ff, 0.f);
    g.u.assign(g.toks.size() * (size_t)er.n_ff, 0.f);
    g.y.assign(g.toks.size() * (size_t)n_embd, 0.f);
  }

  // Tasks = (group, row chunk); chunk_start[gi] is the first task of group gi.
  auto run_phase = [&](bool down) {
    std::vector<int64_t> first(groups.size() + 1, 0);
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      const int64_t rows = down ? n_embd : experts[groups[gi].e]->n_ff;
      first[gi + 1] = first[gi] + (rows + kRowChunk - 1) / kRowChunk;
    }
    parallel_for((size_t)first.back(), [&](size_t task, int) {
      const size_t gi = (size_t)(std::upper_bound(first.begin(), first.end(), (int64_t)task) - first.begin() - 1);
      Group& g = groups[gi];
      const ExpertRef& er = *experts[g.e];
      const int64_t n = (int64_t)g.toks.size();
      const int64_t r0 = ((int64_t)task - first[gi]) * kRowChunk;
      if (!down) {
        const int64_t r1 = std::min(er.n_ff, r0 + kRowChunk);
        const RowKernel kg = row_kernel(er.type[0]), ku = row_kernel(er.type[1]);
        dot_rows(kg, er.w[0], weight_row_bytes(er.type[0], n_embd), r0, r1, n_embd, g.act_g.data(),
                 act_row_bytes(kg.act, n_embd), n, g.g.data(), er.n_ff);
        dot_rows(ku, er.w[1], weight_row_bytes(er.type[1], n_embd), r0, r1, n_embd, g.act_u.data(),
                 act_row_bytes(ku.act, n_embd), n, g.u.data(), er.n_ff);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t r = r0; r < r1; ++r) {
            const float gv = g.g[i * er.n_ff + r];
            g.g[i * er.n_ff + r] = gv / (1.f + std::exp(-gv)) * g.u[i * er.n_ff + r];
          }
      } else {
        const int64_t r1 = std::min(n_embd, r0 + kRowChunk);
        const RowKernel kd = row_kernel(er.type[2]);
        dot_rows(kd, er.w[2], weight_row_bytes(er.type[2], er.n_ff), r0, r1, er.n_ff, g.act_d.data(),
                 act_row_bytes(kd.act, er.n_ff), n, g.y.data(), n_embd);
      }
    });
  };

  run_phase(false);
  // The intermediate activation is re-quantized for down (small: rows x n_ff per group).
  for (Group& g : groups) {
    const ExpertRef& er = *experts[g.e];
    g.act_d = prepare_act(row_kernel(er.type[2]), g.g.data(), (int64_t)g.toks.size(), er.n_ff);
  }
  run_phase(true);

  // Fixed slot order, so results do not depend on thread timing.
  for (int64_t t = 0; t < n_tok; ++t) {
    float* o = out + t * n_embd;
    if (!accumulate) std::fill(o, o + n_embd, 0.f);
    for (int64_t j = 0; j < k; ++j) {
      const auto [gi, row] = where[t * k + j];
      if (gi < 0) continue;
      const float wt = w[t * k + j];
      const float* y = groups[gi].y.data() + (size_t)row * n_embd;
      for (int64_t c = 0; c < n_embd; ++c) o[c] += wt * y[c];
    }
  }
}

}  // namespace kr
