// Host emulator of the CUDA kernels in csrc/cuda/kernels: runs the same per-lane bodies lane by
// lane over the same launch grid (blocks, warps, lanes), with the warp reductions done by the
// xor-butterfly of warp.cuh. What it proves: indexing, decoding, the reduction tree and the
// launch bounds are right; what it cannot: timing, memory coalescing, races between warps.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cpu/act_quant.h"
#include "cuda/kernels/moe.cuh"

namespace kr::emu {

// act_quant launch: x[n_blocks * 32] -> y[n_blocks].
void act_quant(const float* x, int64_t n_blocks, block_q8a32* y);

// One gemv launch (ntok <= kMaxTok) over prepared activations.
void gemv_launch(int32_t type, const gk::GemvArgs& a);

// The full GPU GEMV op: quantize x[n][cols], then launches in chunks of kMaxTok tokens;
// out[n][rows]. Checks type support and sizes (ArgError).
void gemv(int32_t type, const uint8_t* w, size_t w_bytes, int64_t rows, int64_t cols, const float* x, int64_t n,
          float* out);

// The full grouped MoE op as the CUDA launcher runs it (five launches).
void moe(const std::vector<gk::MoeRoute>& routes, int64_t n_tok, int64_t k, int64_t n_embd, int64_t n_ff,
         const float* x, float* out, bool accumulate);

// Dequantize-to-tile launch: rows [r0, r1) of a [rows][cols] tensor to bf16 (out_dtype 2) or f32 (0).
void dequant_tile(int32_t type, const uint8_t* w, int64_t cols, int64_t r0, int64_t r1, int out_dtype, void* out);

}  // namespace kr::emu
