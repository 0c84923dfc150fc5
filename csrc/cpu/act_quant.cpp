// Activation quantizers: one pass over cols floats per call. SSE2 (x86-64 baseline) where present,
// since at decode sizes a scalar rounding loop costs as much as streaming a small weight matrix.
#include "cpu/act_quant.h"

#include <cmath>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace kr {
namespace {

// Quantizes n (a multiple of 16) values with scale 1/id, round-to-nearest-even; writes int8 codes
// and the sum of each 16-value group into sums16 (may be null).
void quantize_block(const float* x, int n, float id, int8_t* q, int* sums16) {
#if defined(__SSE2__)
  const __m128 vid = _mm_set1_ps(id);
  for (int g = 0; g < n / 16; ++g) {
    __m128i i0 = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(x + 16 * g), vid));
    __m128i i1 = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(x + 16 * g + 4), vid));
    __m128i i2 = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(x + 16 * g + 8), vid));
    __m128i i3 = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(x + 16 * g + 12), vid));
    if (sums16) {
      __m128i s = _mm_add_epi32(_mm_add_epi32(i0, i1), _mm_add_epi32(i2, i3));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
      sums16[g] = _mm_cvtsi128_si32(s);
    }
    const __m128i p = _mm_packs_epi16(_mm_packs_epi32(i0, i1), _mm_packs_epi32(i2, i3));
    _mm_storeu_si128((__m128i*)(q + 16 * g), p);
  }
#else
  for (int g = 0; g < n / 16; ++g) {
    int s = 0;
    for (int j = 0; j < 16; ++j) {
      q[16 * g + j] = (int8_t)std::nearbyint(x[16 * g + j] * id);
      s += q[16 * g + j];
    }
    if (sums16) sums16[g] = s;
  }
#endif
}

float block_amax(const float* x, int n) {
#if defined(__SSE2__)
  const __m128 sign = _mm_set1_ps(-0.0f);
  __m128 m0 = _mm_setzero_ps(), m1 = m0;
  for (int j = 0; j < n; j += 8) {
    m0 = _mm_max_ps(m0, _mm_andnot_ps(sign, _mm_loadu_ps(x + j)));
    m1 = _mm_max_ps(m1, _mm_andnot_ps(sign, _mm_loadu_ps(x + j + 4)));
  }
  m0 = _mm_max_ps(m0, m1);
  m0 = _mm_max_ps(m0, _mm_movehl_ps(m0, m0));
  m0 = _mm_max_ss(m0, _mm_shuffle_ps(m0, m0, 1));
  return _mm_cvtss_f32(m0);
#else
  float amax = 0.f;
  for (int j = 0; j < n; ++j) amax = std::fmax(amax, std::fabs(x[j]));
  return amax;
#endif
}

}  // namespace

void quantize_act_q8a32(const float* x, block_q8a32* y, int64_t n) {
  int sums[2];
  for (int64_t b = 0; b < n / 32; ++b, x += 32) {
    const float amax = block_amax(x, 32);
    const float d = amax / 127.f, id = amax > 0.f ? 127.f / amax : 0.f;
    quantize_block(x, 32, id, y[b].qs, sums);
    y[b].d = d;
    y[b].s = d * (float)(sums[0] + sums[1]);
  }
}

void quantize_act_q8K(const float* x, block_q8_K* y, int64_t n) {
  int sums[QK_K / 16];
  for (int64_t b = 0; b < n / QK_K; ++b, x += QK_K) {
    const float amax = block_amax(x, QK_K);
    const float id = amax > 0.f ? 127.f / amax : 0.f;
    quantize_block(x, QK_K, id, y[b].qs, sums);
    for (int g = 0; g < QK_K / 16; ++g) y[b].bsums[g] = (int16_t)sums[g];
    y[b].d = amax / 127.f;
  }
}

void quantize_act(ActKind k, const float* x, void* y, int64_t n) {
  switch (k) {
    case ActKind::F32: std::memcpy(y, x, (size_t)n * sizeof(float)); return;
    case ActKind::Q8A32: quantize_act_q8a32(x, (block_q8a32*)y, n); return;
    case ActKind::Q8K: quantize_act_q8K(x, (block_q8_K*)y, n); return;
  }
}

}  // namespace kr
