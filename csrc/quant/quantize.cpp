// Reference quantizers. Compiled without FMA flags: products and sums round exactly as in gguf-py
// (numpy float32) and ggml's scalar C, which is what makes Q8_0 / Q4_0 bit-identical to gguf.
#include "quant/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "common.h"
#include "cpu/threadpool.h"
#include "quant/half.h"

namespace kr {
namespace {

constexpr float kGroupMaxEps = 1e-15f;

// ggml make_qkx2_quants: affine (scale, -min) fit of n values to [0, nmax] by a small search over
// the scale, minimising the weighted error. Returns the scale; *the_min receives -min (>= 0).
float make_qkx2_quants(int n, int nmax, const float* x, const float* w, uint8_t* L, float* the_min,
                       uint8_t* Laux, float rmin, float rdelta, int nstep, bool use_mad) {
  float mn = x[0], mx = x[0];
  float sum_w = w[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (mn > 0) mn = 0;
  if (mx == mn) {
    std::fill(L, L + n, 0);
    *the_min = -mn;
    return 0.f;
  }
  float iscale = nmax / (mx - mn);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    L[i] = (uint8_t)std::max(0, std::min(nmax, nearest_int(iscale * (x[i] - mn))));
    float diff = scale * L[i] + mn - x[i];
    diff = use_mad ? std::fabs(diff) : diff * diff;
    best_error += w[i] * diff;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (mx - mn);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::max(0, std::min(nmax, nearest_int(iscale * (x[i] - mn))));
      Laux[i] = (uint8_t)l;
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * Laux[i] + this_min - x[i];
        diff = use_mad ? std::fabs(diff) : diff * diff;
        cur_error += w[i] * diff;
      }
      if (cur_error < best_error) {
        std::copy(Laux, Laux + n, L);
        best_error = cur_error;
        scale = this_scale;
        mn = this_min;
      }
    }
  }
  *the_min = -mn;
  return scale;
}

// ggml make_qx_quants with rmse_type 1 and no importance weights (w = x^2): symmetric fit of n
// values to [-nmax, nmax-1], searching 19 scales around nmax/max. L receives l + nmax.
float make_qx_quants(int n, int nmax, const float* x, int8_t* L) {
  float mx = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      mx = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    std::fill(L, L + n, 0);
    return 0.f;
  }
  auto clampq = [nmax](int l) { return std::max(-nmax, std::min(nmax - 1, l)); };
  float iscale = -nmax / mx;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = clampq(nearest_int(iscale * x[i]));
    L[i] = (int8_t)(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / mx;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = clampq(nearest_int(iscale * x[i]));
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) L[i] = (int8_t)(nmax + clampq(nearest_int(iscale * x[i])));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

}  // namespace

void quantize_row_q8_0(const float* x, block_q8_0* y, int64_t n) {
  for (int64_t i = 0; i < n / QK8_0; ++i, x += QK8_0) {
    float amax = 0;
    for (int j = 0; j < QK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    // Half away from zero, as ggml's roundf and gguf's np_roundf.
    for (int j = 0; j < QK8_0; ++j) y[i].qs[j] = (int8_t)std::round(x[j] * id);
  }
}

void quantize_row_q4_0(const float* x, block_q4_0* y, int64_t n) {
  for (int64_t i = 0; i < n / QK4_0; ++i, x += QK4_0) {
    float amax = 0, mx = 0;  // first element of largest magnitude, sign kept
    for (int j = 0; j < QK4_0; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        mx = x[j];
      }
    }
    const float d = mx / -8;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
      const float a = x[j] * id, b = x[j + QK4_0 / 2] * id;
      const int q0 = std::min(15, (int)(a + 8.5f)), q1 = std::min(15, (int)(b + 8.5f));
      y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
    }
  }
}

void quantize_row_q4_K(const float* x, block_q4_K* y, int64_t n) {
  uint8_t L[QK_K], Laux[32];
  float weights[32], mins[QK_K / 32], scales[QK_K / 32];
  for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; ++j) {
      float sum_x2 = 0;
      for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
      const float av_x = std::sqrt(sum_x2 / 32);
      for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
      scales[j] = make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20,
                                   false);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    uint8_t* s = y[i].scales;
    for (int j = 0; j < QK_K / 32; ++j) {
      const uint8_t ls = (uint8_t)std::min(63, nearest_int(inv_scale * scales[j]));
      const uint8_t lm = (uint8_t)std::min(63, nearest_int(inv_min * mins[j]));
      if (j < 4) {
        s[j] = ls;
        s[j + 4] = lm;
      } else {  // low nibbles in bytes 8..11, top two bits in bits 6-7 of bytes 0..7
        s[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
        s[j - 4] |= (uint8_t)((ls >> 4) << 6);
        s[j] |= (uint8_t)((lm >> 4) << 6);
      }
    }
    y[i].d = fp32_to_fp16(max_scale / 63.f);
    y[i].dmin = fp32_to_fp16(max_min / 63.f);
    const float d = fp16_to_fp32(y[i].d), dmin = fp16_to_fp32(y[i].dmin);
    for (int j = 0; j < QK_K / 32; ++j) {
      int sc, mn;
      if (j < 4) {
        sc = s[j] & 63;
        mn = s[j + 4] & 63;
      } else {
        sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
      }
      const float dl = d * sc;
      if (!dl) continue;
      const float dm = dmin * mn;
      for (int l = 0; l < 32; ++l)
        L[32 * j + l] = (uint8_t)std::max(0, std::min(15, nearest_int((x[32 * j + l] + dm) / dl)));
    }
    uint8_t* q = y[i].qs;
    for (int j = 0; j < QK_K; j += 64, q += 32)
      for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
  }
}

void quantize_row_q6_K(const float* x, block_q6_K* y, int64_t n) {
  int8_t L[QK_K];
  float scales[QK_K / 16];
  for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
      scales[ib] = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
      if (std::fabs(scales[ib]) > max_abs_scale) {
        max_abs_scale = std::fabs(scales[ib]);
        max_scale = scales[ib];
      }
    }
    if (max_abs_scale < kGroupMaxEps) {
      std::memset(&y[i], 0, sizeof(block_q6_K));
      continue;
    }
    const float iscale = -128.f / max_scale;
    y[i].d = fp32_to_fp16(1 / iscale);
    for (int ib = 0; ib < QK_K / 16; ++ib)
      y[i].scales[ib] = (int8_t)std::min(127, nearest_int(iscale * scales[ib]));
    const float d16 = fp16_to_fp32(y[i].d);
    for (int j = 0; j < QK_K / 16; ++j) {
      const float d = d16 * y[i].scales[j];
      if (!d) continue;
      for (int l = 0; l < 16; ++l)
        L[16 * j + l] = (int8_t)(std::max(-32, std::min(31, nearest_int(x[16 * j + l] / d))) + 32);
    }
    uint8_t* ql = y[i].ql;
    uint8_t* qh = y[i].qh;
    for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
      for (int l = 0; l < 32; ++l) {
        const int q1 = L[j + l], q2 = L[j + l + 32], q3 = L[j + l + 64], q4 = L[j + l + 96];
        ql[l] = (uint8_t)((q1 & 0xF) | ((q3 & 0xF) << 4));
        ql[l + 32] = (uint8_t)((q2 & 0xF) | ((q4 & 0xF) << 4));
        qh[l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
      }
    }
  }
}

void quantize_row_q8_K(const float* x, block_q8_K* y, int64_t n) {
  for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
    float amax = 0, mx = 0;
    for (int j = 0; j < QK_K; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        mx = x[j];
      }
    }
    if (!amax) {
      std::memset(&y[i], 0, sizeof(block_q8_K));
      continue;
    }
    // -127 (not -128) keeps every q in [-127, 127], as ggml requires for its IQ dot products.
    const float iscale = -127.f / mx;
    for (int j = 0; j < QK_K; ++j) y[i].qs[j] = (int8_t)std::min(127, nearest_int(iscale * x[j]));
    for (int j = 0; j < QK_K / 16; ++j) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += y[i].qs[16 * j + l];
      y[i].bsums[j] = (int16_t)sum;
    }
    y[i].d = 1 / iscale;
  }
}

bool has_quantizer(int32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q8_0:
    case GgmlType::Q4_0: case GgmlType::Q4_K: case GgmlType::Q6_K: case GgmlType::Q8_K:
      return true;
    default:
      return false;
  }
}

void quantize_row(int32_t type, const float* x, void* dst, int64_t n) {
  const TypeTraits tt = type_traits(type);
  KR_CHECK(has_quantizer(type), std::string("no quantizer for ggml type ") +
                                    (tt.name ? tt.name : std::to_string(type).c_str()));
  KR_CHECK(n >= 0 && n % tt.block_size == 0, "row length " + std::to_string(n) +
                                                 " is not a multiple of the block size " +
                                                 std::to_string(tt.block_size));
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32: std::memcpy(dst, x, (size_t)n * 4); return;
    case GgmlType::F16:
      for (int64_t j = 0; j < n; ++j) static_cast<uint16_t*>(dst)[j] = fp32_to_fp16(x[j]);
      return;
    case GgmlType::BF16:
      for (int64_t j = 0; j < n; ++j) static_cast<uint16_t*>(dst)[j] = fp32_to_bf16(x[j]);
      return;
    case GgmlType::Q8_0: quantize_row_q8_0(x, static_cast<block_q8_0*>(dst), n); return;
    case GgmlType::Q4_0: quantize_row_q4_0(x, static_cast<block_q4_0*>(dst), n); return;
    case GgmlType::Q4_K: quantize_row_q4_K(x, static_cast<block_q4_K*>(dst), n); return;
    case GgmlType::Q6_K: quantize_row_q6_K(x, static_cast<block_q6_K*>(dst), n); return;
    case GgmlType::Q8_K: quantize_row_q8_K(x, static_cast<block_q8_K*>(dst), n); return;
    default: fail("no quantizer for ggml type " + std::to_string(type));
  }
}

void quantize_tensor(const float* src, size_t src_len, int32_t type, int64_t n_rows, int64_t n_cols,
                     uint8_t* dst, size_t dst_len) {
  const TypeTraits tt = type_traits(type);
  KR_CHECK(tt.name != nullptr, "unknown ggml type " + std::to_string(type));
  KR_CHECK(has_quantizer(type), std::string("no quantizer for ggml type ") + tt.name);
  KR_CHECK(n_rows >= 0 && n_cols >= 0, "negative shape");
  KR_CHECK(n_cols % tt.block_size == 0, "row length " + std::to_string(n_cols) +
                                            " is not a multiple of the " + tt.name + " block size " +
                                            std::to_string(tt.block_size));
  KR_CHECK(n_cols == 0 || n_rows <= (int64_t)(SIZE_MAX / 4) / n_cols, "tensor too large");
  KR_CHECK((uint64_t)(n_rows * n_cols) * 4 == src_len, "input holds " + std::to_string(src_len / 4) +
                                                           " floats but the shape needs " +
                                                           std::to_string(n_rows * n_cols));
  const int64_t rb = n_cols / tt.block_size * tt.type_size;
  KR_CHECK((uint64_t)(n_rows * rb) == dst_len, "output buffer has the wrong size");
  if (n_rows == 0 || n_cols == 0) return;
  // Chunks of whole blocks over the flat tensor (rows are contiguous on both sides).
  const int64_t n_blocks = n_rows * n_cols / tt.block_size;
  const int64_t per_task = std::max<int64_t>(1, 8192 / tt.block_size);
  const int64_t n_tasks = (n_blocks + per_task - 1) / per_task;
  parallel_for((size_t)n_tasks, [&](size_t task, int) {
    const int64_t b0 = (int64_t)task * per_task, nb = std::min(per_task, n_blocks - b0);
    quantize_row(type, src + b0 * tt.block_size, dst + b0 * tt.type_size, nb * tt.block_size);
  });
}

}  // namespace kr
