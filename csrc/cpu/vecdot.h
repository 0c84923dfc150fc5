// Per-ISA tables of row dot kernels: dot(n, weight row, prepared activation row) -> float.
// Each ISA file fills the formats it accelerates; gemv.cpp falls back to the next lower ISA.
#pragma once
#include <cstddef>
#include <cstdint>

#include "cpu/act_quant.h"

namespace kr {

// n weights (a multiple of the type's block size); w: n/QK raw blocks; a: activation row prepared
// as act_kind(type) wants (float, block_q8a32 or block_q8_K).
using VecDotFn = float (*)(int64_t n, const void* w, const void* a);

// Multi-row form for prefill: out[i*out_stride] = dot(w, a + i*a_stride) for i < nr (1..kMultiRows),
// decoding each weight block once; bit-identical per row to the same table's VecDotFn.
using VecDotMultiFn = void (*)(int64_t n, const void* w, const void* a, size_t a_stride, int nr, float* out,
                               int64_t out_stride);
constexpr int kMultiRows = 4;

constexpr int kMaxType = 40;
struct VecDotTable {
  VecDotFn fn[kMaxType] = {};
  VecDotMultiFn multi[kMaxType] = {};  // optional; null = use fn row by row
};

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

// Activation format a weight type is dotted with; F32 for float formats and for formats that go
// through the generic dequantize-then-float-dot path.
ActKind act_kind(int32_t type);

const VecDotTable& vecdot_table_scalar();
const VecDotTable& vecdot_table_avx2();    // only call when cpu_features().has_avx2()
const VecDotTable& vecdot_table_avx512();  // only call when cpu_features().has_avx512() && vnni

}  // namespace kr
