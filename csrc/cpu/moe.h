// Fused MoE FFN on the CPU: sum_e w_e * down_e(silu(gate_e x) * up_e x) for a few tokens in one
// call, reading expert weights in place (mmapped file or cache slots), never copying them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace kr {

// One expert's three projections as raw GGUF rows: gate/up are [n_ff, n_embd], down [n_embd, n_ff].
struct ExpertRef {
  const uint8_t* w[3] = {nullptr, nullptr, nullptr};  // gate, up, down
  int32_t type[3] = {0, 0, 0};
  size_t nbytes[3] = {0, 0, 0};
  int64_t n_ff = 0, n_embd = 0;
};

// Checks types, block multiples and that each buffer holds rows * row_bytes; throws ArgError.
ExpertRef make_expert_ref(const void* gate, const void* up, const void* down, int32_t gate_type, int32_t up_type,
                          int32_t down_type, int64_t n_ff, int64_t n_embd, size_t gate_nbytes, size_t up_nbytes,
                          size_t down_nbytes);

// x, out: [n_tok, n_embd]; sel, w: [n_tok, k] with sel an index into `experts` or -1 (skipped).
// out = (accumulate ? out : 0) + sum_j w[t,j] * FFN_{sel[t,j]}(x[t]). Threads split over
// (expert, row chunk) for gate/up, then for down; each token's x is quantized once per format kind.
void moe_ffn(const float* x, float* out, int64_t n_tok, int64_t n_embd, const std::vector<const ExpertRef*>& experts,
             const int32_t* sel, const float* w, int64_t k, bool accumulate);

}  // namespace kr
