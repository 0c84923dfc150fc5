// gemv/gemm ops: validate, pick the kernel for the active ISA (falling back to lower ISAs per
// format), quantize the activation once, then split weight rows across the thread pool.
#include "cpu/gemv.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>

#include "common.h"
#include "cpu/cpu_features.h"
#include "cpu/threadpool.h"
#include "quant/dequant.h"

namespace kr {
namespace {

std::atomic<int> g_forced_isa{-1};

const VecDotTable* table_for(Isa isa) {
  switch (isa) {
#if defined(__x86_64__)
    case Isa::Avx512: return &vecdot_table_avx512();
    case Isa::Avx2: return &vecdot_table_avx2();
#endif
    default: return &vecdot_table_scalar();
  }
}

bool dequantizable(int32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::IQ2_XXS: case GgmlType::IQ2_XS: case GgmlType::IQ2_S: case GgmlType::IQ3_XXS:
    case GgmlType::IQ3_S: case GgmlType::IQ1_S: case GgmlType::IQ1_M:
      return true;
    default:
      return false;
  }
}

// KR_MULTIROW=0 turns the multi-row kernels off (A/B runs); read once.
bool multirow_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("KR_MULTIROW");
    return !(v && v[0] == '0');
  }();
  return on;
}

}  // namespace

Isa best_isa() {
#if defined(__x86_64__)
  const auto& f = cpu_features();
  if (f.has_avx512() && f.avx512vnni) return Isa::Avx512;
  if (f.has_avx2()) return Isa::Avx2;
#endif
  return Isa::Scalar;
}

void set_isa(int isa) {
  KR_CHECK(isa >= -1 && isa <= (int)Isa::Avx512, "unknown ISA id " + std::to_string(isa));
  KR_CHECK(isa <= (int)best_isa(), "this CPU does not support the requested ISA");
  g_forced_isa.store(isa);
}

Isa active_isa() {
  const int f = g_forced_isa.load();
  return f < 0 ? best_isa() : static_cast<Isa>(f);
}

size_t weight_row_bytes(int32_t type, int64_t cols) {
  const TypeTraits tt = type_traits(type);
  KR_CHECK(tt.name != nullptr && type != (int32_t)GgmlType::Q8_1 && type != (int32_t)GgmlType::Q8_K,
           "unsupported weight type " + std::to_string(type));
  KR_CHECK(cols > 0 && cols % tt.block_size == 0,
           std::string("cols must be a positive multiple of ") + std::to_string(tt.block_size) + " for " + tt.name);
  return (size_t)(cols / tt.block_size) * (size_t)tt.type_size;
}

RowKernel row_kernel(int32_t type) {
  KR_CHECK(type >= 0 && type < kMaxType && type_traits(type).name != nullptr,
           "unsupported weight type " + std::to_string(type));
  RowKernel k;
  k.type = type;
  for (int i = (int)active_isa(); i >= 0; --i) {
    const VecDotTable* t = table_for(static_cast<Isa>(i));
    if (!k.f32) k.f32 = t->fn[(int)GgmlType::F32];
    if (!k.fn && t->fn[type]) {
      k.fn = t->fn[type];
      k.isa = static_cast<Isa>(i);
    }
  }
  if (k.fn) {
    // Multi-row only from the ISA that supplied fn, so both give identical results.
    if (multirow_enabled()) k.multi = table_for(k.isa)->multi[type];
    k.act = act_kind(type);
    return k;
  }
  KR_CHECK(dequantizable(type), "no dot kernel for weight type " + std::to_string(type));
  k.generic = true;
  k.act = ActKind::F32;
  k.isa = active_isa();
  return k;
}

const char* kernel_path_name(int32_t type) {
  static const char* names[3][4] = {
      {"scalar/float", "scalar/int8", "scalar/int8", "scalar/dequant+f32"},
      {"avx2/float", "avx2/int8", "avx2/int8", "avx2/dequant+f32"},
      {"avx512/float", "avx512/int8", "avx512/int8", "avx512/dequant+f32"}};
  const RowKernel k = row_kernel(type);
  return names[(int)k.isa][k.generic ? 3 : (int)k.act];
}

std::vector<uint8_t> prepare_act(const RowKernel& k, const float* x, int64_t n, int64_t cols) {
  const size_t arb = act_row_bytes(k.act, cols);
  std::vector<uint8_t> buf(arb * (size_t)n);
  for (int64_t i = 0; i < n; ++i) quantize_act(k.act, x + i * cols, buf.data() + arb * (size_t)i, cols);
  return buf;
}

void dot_rows(const RowKernel& k, const uint8_t* w, size_t row_bytes, int64_t r0, int64_t r1, int64_t cols,
              const uint8_t* act, size_t act_row_bytes, int64_t n, float* out, int64_t out_stride) {
  if (k.generic) {
    thread_local std::vector<float> row;
    row.resize((size_t)cols);
    for (int64_t r = r0; r < r1; ++r) {
      dequantize_row(k.type, w + (size_t)r * row_bytes, row.data(), cols);
      for (int64_t i = 0; i < n; ++i)
        out[i * out_stride + r] = k.f32(cols, row.data(), act + act_row_bytes * (size_t)i);
    }
    return;
  }
  if (k.multi && n >= 2) {
    // Each weight block is decoded once per kMultiRows activation rows.
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* wr = w + (size_t)r * row_bytes;
      for (int64_t i = 0; i < n; i += kMultiRows)
        k.multi(cols, wr, act + act_row_bytes * (size_t)i, act_row_bytes, (int)std::min<int64_t>(kMultiRows, n - i),
                out + i * out_stride + r, out_stride);
    }
    return;
  }
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = w + (size_t)r * row_bytes;
    for (int64_t i = 0; i < n; ++i) out[i * out_stride + r] = k.fn(cols, wr, act + act_row_bytes * (size_t)i);
  }
}

void gemm(int32_t type, const void* w, size_t w_nbytes, int64_t rows, int64_t cols, const float* x, int64_t n,
          float* out) {
  KR_CHECK(rows > 0, "rows must be positive");
  KR_CHECK(n > 0, "x must have at least one row");
  const size_t rb = weight_row_bytes(type, cols);
  KR_CHECK(w_nbytes / rb >= (size_t)rows, "weight buffer too short: need " + std::to_string(rb * (size_t)rows) +
                                              " bytes, got " + std::to_string(w_nbytes));
  const RowKernel k = row_kernel(type);
  const std::vector<uint8_t> act = prepare_act(k, x, n, cols);
  const size_t arb = act_row_bytes(k.act, cols);
  const uint8_t* wb = (const uint8_t*)w;
  // Chunks small enough to balance dynamically, large enough that the hand-out cost vanishes;
  // tiny matrices stay on the calling thread.
  const int nt = num_threads();
  const size_t work = rb * (size_t)rows * (size_t)n;
  int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(64, (rows + 4 * nt - 1) / (4 * nt)));
  if (work < (64u << 10)) chunk = rows;
  const int64_t n_chunks = (rows + chunk - 1) / chunk;
  parallel_for((size_t)n_chunks, [&](size_t c, int) {
    const int64_t r0 = (int64_t)c * chunk, r1 = std::min(rows, r0 + chunk);
    dot_rows(k, wb, rb, r0, r1, cols, act.data(), arb, n, out, rows);
  });
}

}  // namespace kr
