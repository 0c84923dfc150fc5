// The decode/prefill step of a DeepSeek-V3 / Kimi K2 decoder in native code. A StepPlan holds, per
// layer, references to the weights (raw GGUF rows, never copied), the expert table, and one scratch
// arena sized once for the micro-batch; a step then runs norm -> MLA (absorbed, over the latent cache)
// -> router -> routed + shared experts -> residual for a batch of tokens without allocating.
// The same plan shape (weight refs + scratch per layer) is what a CUDA backend fills with device
// pointers; only the kernels behind step_* differ.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cpu/moe.h"

namespace kr {

// One matrix [rows, cols] of raw GGUF weight rows (F32 included), checked at bind time.
struct MatRef {
  const uint8_t* w = nullptr;
  int32_t type = 0;
  int64_t rows = 0, cols = 0;
  size_t row_bytes = 0;
  bool set() const { return w != nullptr; }
};
// Throws ArgError unless nbytes holds rows x row_bytes(type, cols) and a kernel exists for type.
MatRef make_mat_ref(const void* w, int32_t type, int64_t rows, int64_t cols, size_t nbytes);

struct StepConfig {
  int64_t n_embd = 0, n_head = 0, q_lora_rank = 0, kv_lora_rank = 0, nope = 0, rope = 0, v_dim = 0;
  int64_t n_expert = 0, n_expert_used = 0, n_group = 1, topk_group = 1;
  float eps = 1e-6f, softmax_scale = 1.f, routed_scale = 1.f;
  bool norm_topk = false, sigmoid = true;
};

struct LayerPlan {
  const float* attn_norm = nullptr;  // [n_embd]
  const float* ffn_norm = nullptr;   // [n_embd]
  const float* q_a_norm = nullptr;   // [q_lora_rank] (with q_a / q_b)
  const float* kv_a_norm = nullptr;  // [kv_lora_rank]
  MatRef q_a, q_b, q;                // q_a [q_lora, D], q_b [H*(N+R), q_lora]; or q [H*(N+R), D]
  MatRef kv_a;                       // [C + R, D]
  MatRef k_b;                        // H slices of [C, N]
  MatRef v_b;                        // H slices of [V, C]
  MatRef out;                        // [D, H*V]
  bool moe = false;
  const float* router_w = nullptr;   // [E, D] float32
  const float* router_b = nullptr;   // [E] correction bias (selection only) or null
  std::vector<ExpertRef> experts;    // routed experts (file rows); empty: the caller runs them
  ExpertRef ffn;                     // the shared expert (MoE) or the dense MLP; n_ff 0 = none
};

// The latent cache: per layer n_ctx rows of (kv_lora_rank latent, rope key), f32 or f16.
struct KvRef {
  uint8_t* base = nullptr;  // [n_layer, n_ctx, C + R]
  bool f16 = false;
  int64_t n_ctx = 0;
};

class StepPlan {
 public:
  StepPlan(const StepConfig& cfg, int64_t n_layer, int64_t max_tokens);

  // The rope table (cos, sin: [rows, R/2], magnitude included) and the cache; both may be rebound
  // between steps (another cache, a longer context) without touching the weights.
  void set_rope(const float* cos, const float* sin, int64_t rows);
  void set_kv(const KvRef& kv);

  const StepConfig& config() const { return cfg_; }
  int64_t n_layer() const { return (int64_t)layers_.size(); }
  int64_t max_tokens() const { return max_tokens_; }
  LayerPlan& layer(int64_t i);
  // Checks the layer's references against the config (shapes, missing pieces); throws ArgError.
  void validate(int64_t i) const;

  // Scratch the caller reads / writes directly (valid for max_tokens rows).
  float* hidden() { return h_.data(); }      // [T, D] residual stream, in and out of every layer
  float* ffn_in() { return x_.data(); }      // [T, D] normed input of the last layer's FFN
  int32_t* route_ids() { return sel_.data(); }     // [T, K] routed expert ids of the last layer
  float* route_weights() { return selw_.data(); }  // [T, K]

  // Attention half of layer i (norm, MLA, residual) then the FFN norm and, for MoE layers, the
  // router; tokens at positions start..start+T-1, written into the cache.
  void attention(int64_t i, int64_t T, int64_t start);
  // FFN half: routed experts (with `slot` overriding the pointers of some experts: slot_experts[j]
  // runs from slot_ptrs[3j..3j+2]) plus the shared expert, or the dense MLP; adds into hidden.
  void ffn(int64_t i, int64_t T, const int32_t* slot_experts, const uint64_t* slot_ptrs, int64_t n_slots);
  // Layers l0..l1-1 in full (routed experts from the plan's tables).
  void layers(int64_t l0, int64_t l1, int64_t T, int64_t start);

 private:
  void linear(const MatRef& m, const float* x, int64_t T, float* out);
  void route(const LayerPlan& L, int64_t T);
  void attend(int64_t layer, int64_t T, int64_t start);

  StepConfig cfg_;
  std::vector<LayerPlan> layers_;
  const float* cos_ = nullptr;
  const float* sin_ = nullptr;
  int64_t rope_rows_ = 0;
  KvRef kv_;
  int64_t max_tokens_;
  // scratch, sized once
  std::vector<float> h_, x_, y_, qa_, q_, kv_tmp_, qh_, qpe_, qlat_, olat_, oh_, o_, logits_, route_tmp_;
  std::vector<int32_t> sel_, sel_all_;
  std::vector<float> selw_, selw_all_;
  std::vector<uint8_t> act_, head_act_;
  std::vector<ExpertRef> ref_tmp_;
  std::vector<const ExpertRef*> ref_ptrs_;
  std::vector<float> attn_tls_;  // per thread: kv chunk, scores, accumulators
  int attn_threads_ = 0;
};

// out[T, rows] = x[T, cols] @ W^T through the row kernels, activations prepared into `act` (grown
// once, reused); row chunks over the pool, tokens in blocks that stay in cache.
void linear_rows(const MatRef& m, const float* x, int64_t T, float* out, std::vector<uint8_t>& act);
// The same for up to 4 matrices sharing the input x (q_a and kv_a): each activation kind is prepared
// once and all row chunks go to the pool as one job.
void linear_multi(const MatRef* const* ms, float* const* outs, int nm, const float* x, int64_t T,
                  std::vector<uint8_t>& act);

// y = w * x / rms(x) per row of n values.
void rms_norm_rows(const float* x, const float* w, int64_t T, int64_t n, int64_t x_stride, float* y,
                   int64_t y_stride, float eps);

}  // namespace kr
