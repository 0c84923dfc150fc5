// Fused dequant-dot ops on quantized GGUF weight rows: argument checks, ISA dispatch and the
// row-chunked threading shared by gemv/gemm and the fused MoE FFN (moe.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cpu/vecdot.h"

namespace kr {

// Bytes of one weight row of `cols` values; throws ArgError for an unknown/unsupported type or a
// cols that is not a positive multiple of the block size.
size_t weight_row_bytes(int32_t type, int64_t cols);

// The kernel chosen for a type under the current ISA setting.
struct RowKernel {
  int32_t type = 0;
  VecDotFn fn = nullptr;       // dots one weight row with one prepared activation row
  VecDotFn f32 = nullptr;      // float dot, used after dequantizing when `generic`
  ActKind act = ActKind::F32;  // how activations are prepared for fn
  bool generic = false;        // no integer/float kernel: dequantize the row, then f32 dot
  Isa isa = Isa::Scalar;       // ISA of fn
  VecDotMultiFn multi = nullptr;  // same-ISA multi-row form of fn, if any (dot_rows uses it for n >= 2)
};
RowKernel row_kernel(int32_t type);
const char* kernel_path_name(int32_t type);  // e.g. "avx512/int8", "avx2/float", "scalar/dequant+f32"

// ISA override for tests and benchmarks: -1 = best available (default), else an Isa value; asking
// for an ISA the CPU lacks throws ArgError.
void set_isa(int isa);
Isa active_isa();
Isa best_isa();

// Activation rows x[n][cols] prepared for kernel k (quantized once; the result is reused by all rows).
std::vector<uint8_t> prepare_act(const RowKernel& k, const float* x, int64_t n, int64_t cols);

// out[i*out_stride + r] = dot(W row r, act row i) for r in [r0, r1), i < n. Single-threaded; each
// weight row is read from memory once and applied to all n activation rows while it is in L1.
void dot_rows(const RowKernel& k, const uint8_t* w, size_t row_bytes, int64_t r0, int64_t r1, int64_t cols,
              const uint8_t* act, size_t act_row_bytes, int64_t n, float* out, int64_t out_stride);

// out[n][rows] = x[n][cols] @ W[rows][cols]^T for raw GGUF weights W (w_nbytes checked first).
// Threads split the rows in chunks through kr::parallel_for.
void gemm(int32_t type, const void* w, size_t w_nbytes, int64_t rows, int64_t cols, const float* x, int64_t n,
          float* out);

// Streaming read of nbytes (allocated and touched once), best of `repeat` passes, all pool threads:
// returns GB/s. Used by the benchmark as the roofline.
double membw_read_gbs(size_t nbytes, int repeat);

}  // namespace kr
