// Absorbed multi-head latent attention over the latent KV cache, in chunks of cached positions with
// an online softmax: memory stays bounded at any context length, and every (token block, head block)
// is one pool task, so prompts and decode both use all threads.
#pragma once
#include <cstddef>
#include <cstdint>

namespace kr {

struct MlaArgs {
  const float* q_lat = nullptr;  // [H, T, C] query folded through k_b
  const float* q_pe = nullptr;   // [T, H, R] roped query
  const uint8_t* kv = nullptr;   // this layer's cache rows [n_ctx, C + R], f32 or f16
  bool f16 = false;
  int64_t T = 0, H = 0, C = 0, R = 0;
  int64_t start = 0;  // position of token 0; token t attends positions 0..start+t
  float scale = 1.f;
  float* o_lat = nullptr;  // [H, T, C] softmax-weighted latent
};

// Floats of per-thread scratch mla_attend needs (chunk rows, scores, running max/sum, accumulators).
size_t mla_scratch_floats(int64_t C, int64_t R);

// tls: num_threads() x mla_scratch_floats(C, R) floats.
void mla_attend(const MlaArgs& a, float* tls);

// Row kernels behind mla_attend, per ISA (attention_avx2.cpp / attention_avx512.cpp after the
// run-time CPU check, following the kernels' ISA choice).
struct AttnOps {
  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float a, const float* x, float* y, int64_t n);  // y += a x
  void (*f16_row)(const uint16_t* src, float* dst, int64_t n);
};
const AttnOps& attn_ops_scalar();
const AttnOps& attn_ops_avx2();
const AttnOps& attn_ops_avx512();

}  // namespace kr
