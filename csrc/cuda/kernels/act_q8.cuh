// Activation quantization for the GPU GEMV / MoE kernels: every 32 values become one block_q8a32
// (f32 d = amax/127, round-to-nearest-even codes, s = d * sum(codes)), bit-identical to the CPU's
// quantize_act_q8a32. One warp per block, lane j owns value j.
#pragma once
#include "cpu/act_quant.h"
#include "cuda/kernels/warp.cuh"

namespace kr::gk {

// Launch geometry shared by the kernel and the emulator: blocks of kActWarps warps, one warp per
// 32-value block of the flattened [rows][cols] activation.
constexpr int kActWarps = 4;
KR_HD int64_t act_block_of(int64_t bx, int tx) { return bx * kActWarps + tx / kWarp; }

// Phase 1: |x| of this lane's value (reduced to the block's amax by warp max).
KR_HD float act_amax_lane(const float* x, int64_t blk, int lane) { return abs_hd(x[blk * 32 + lane]); }

// Phase 2: this lane's code (stored), returned for the warp sum.
KR_HD int act_quant_lane(const float* x, int64_t blk, int lane, float amax, block_q8a32* y) {
  const float id = amax > 0.f ? 127.f / amax : 0.f;
  const int q = round_even(x[blk * 32 + lane] * id);
  y[blk].qs[lane] = (int8_t)q;
  return q;
}

// Phase 3 (lane 0): the block's scales.
KR_HD void act_finish_lane(int64_t blk, int lane, float amax, int sum, block_q8a32* y) {
  if (lane != 0) return;
  const float d = amax / 127.f;
  y[blk].d = d;
  y[blk].s = d * (float)sum;
}

}  // namespace kr::gk
