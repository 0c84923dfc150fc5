// Multi-row templates (R activation rows per weight-block decode; R = 1 is the single-row kernel)
// for Q3_K, IQ4_XS and the 256-bit Q2_K; same compile-twice scheme as vecdot_x86.h. Each row's float
// operations and their order do not depend on R, so batched rows are bit-identical to one-row calls.
#pragma once
#include "cpu/vecdot_x86.h"

namespace kr {
namespace {

template <int R>
void dotm_q3_K(int64_t n, const void* w, const void* a, size_t as, float* out, int64_t os) {
  const block_q3_K* x = (const block_q3_K*)w;
  const block_q8_K* y[R];
  __m256 acc[R];
  for (int r = 0; r < R; ++r) {
    y[r] = act_row<block_q8_K>(a, as, r);
    acc[r] = _mm256_setzero_ps();
  }
  const __m256i m3 = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4);
  const uint32_t km2 = 0x0f0f0f0f, km1 = 0x03030303;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    uint32_t aux[3];
    std::memcpy(aux, x[b].scales, 12);
    __m128i s128 = _mm_set_epi32((int)(((aux[1] >> 4) & km2) | (((aux[2] >> 6) & km1) << 4)),
                                 (int)(((aux[0] >> 4) & km2) | (((aux[2] >> 4) & km1) << 4)),
                                 (int)((aux[1] & km2) | (((aux[2] >> 2) & km1) << 4)),
                                 (int)((aux[0] & km2) | (((aux[2] >> 0) & km1) << 4)));
    s128 = _mm_sub_epi8(s128, _mm_set1_epi8(32));
    const __m256i sc = _mm256_cvtepi8_epi16(s128);
    const __m128i sl = _mm256_castsi256_si128(sc), sh = _mm256_extracti128_si256(sc, 1);
    const __m256i scales[2] = {_mm256_set_m128i(sl, sl), _mm256_set_m128i(sh, sh)};
    // Codes as unsigned q = lo | 4*hbit (0..7); the true value is q - 4, whose -4 part is
    // -4 * sum_g scale_g * bsum_g, taken once per block from the bsums.
    __m256i sumi[R];
    for (int r = 0; r < R; ++r)
      sumi[r] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(sc, load256(y[r][b].bsums)), 2));
    const __m256i hbits = load256(x[b].hmask);
    for (int j = 0; j < 2; ++j) {
      const __m256i bits = load256(x[b].qs + 32 * j);
      const __m256i h4[4] = {
          _mm256_and_si256(j ? _mm256_srli_epi16(hbits, 2) : _mm256_slli_epi16(hbits, 2), four),  // bit 4j+k -> 4
          _mm256_and_si256(j ? _mm256_srli_epi16(hbits, 3) : _mm256_slli_epi16(hbits, 1), four),
          _mm256_and_si256(j ? _mm256_srli_epi16(hbits, 4) : hbits, four),
          _mm256_and_si256(_mm256_srli_epi16(hbits, j ? 5 : 1), four)};
      for (int k = 0; k < 4; ++k) {
        const __m256i code = _mm256_or_si256(_mm256_and_si256(k ? _mm256_srli_epi16(bits, 2 * k) : bits, m3), h4[k]);
        const __m256i scl = _mm256_shuffle_epi8(scales[j], scale_pair_shuffle(k));
        for (int r = 0; r < R; ++r) {
          const __m256i p = _mm256_maddubs_epi16(code, load256(y[r][b].qs + 128 * j + 32 * k));
          sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(scl, p));
        }
      }
    }
    const float xd = f16(x[b].d);
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(y[r][b].d * xd), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r * os] = hsum(acc[r]);
}

template <int R>
void dotm_iq4_xs(int64_t n, const void* w, const void* a, size_t as, float* out, int64_t os) {
  const block_iq4_xs* x = (const block_iq4_xs*)w;
  const block_q8_K* y[R];
  __m256 acc[R];
  for (int r = 0; r < R; ++r) {
    y[r] = act_row<block_q8_K>(a, as, r);
    acc[r] = _mm256_setzero_ps();
  }
  const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)tables::kvalues_iq4nl));
  for (int64_t b = 0; b < n / QK_K; ++b) {
    __m256i sumi[R];
    for (int r = 0; r < R; ++r) sumi[r] = _mm256_setzero_si256();
    const uint32_t sh = x[b].scales_h;
    for (int ib = 0; ib < 8; ++ib) {
      const int ls = ((x[b].scales_l[ib / 2] >> (4 * (ib % 2))) & 15) | (((sh >> (2 * ib)) & 3) << 4);
      const __m256i q = _mm256_shuffle_epi8(table, nibbles32(x[b].qs + 16 * ib));
      // |q| <= 127 and |y| <= 127, so maddubs' pair sums (<= 32258) never saturate and the scale
      // joins in madd: exact, and cheaper than a 32-bit multiply per 32 weights.
      const __m256i aq = _mm256_sign_epi8(q, q), scl = _mm256_set1_epi16((short)(ls - 32));
      for (int r = 0; r < R; ++r) {
        const __m256i p = _mm256_maddubs_epi16(aq, _mm256_sign_epi8(load256(y[r][b].qs + 32 * ib), q));
        sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(p, scl));
      }
    }
    const float xd = f16(x[b].d);
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(y[r][b].d * xd), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r * os] = hsum(acc[r]);
}

#if !KR_VNNI
// Q2_K on 256-bit registers (the AVX-512 build has the 512-bit form in vecdot_x86.h).
template <int R>
void dotm_q2_K(int64_t n, const void* w, const void* a, size_t as, float* out, int64_t os) {
  const block_q2_K* x = (const block_q2_K*)w;
  const block_q8_K* y[R];
  __m256 acc[R];
  for (int r = 0; r < R; ++r) {
    y[r] = act_row<block_q8_K>(a, as, r);
    acc[r] = _mm256_setzero_ps();
  }
  const __m256i m3 = _mm256_set1_epi8(3);
  const __m128i m4 = _mm_set1_epi8(15);
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const float xd = f16(x[b].d), xdmin = f16(x[b].dmin);
    const __m128i ms = _mm_loadu_si128((const __m128i*)x[b].scales);
    const __m256i mins = _mm256_cvtepi8_epi16(_mm_and_si128(_mm_srli_epi16(ms, 4), m4));
    for (int r = 0; r < R; ++r) {
      const __m256i prod = _mm256_madd_epi16(mins, load256(y[r][b].bsums));
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(-y[r][b].d * xdmin), _mm256_cvtepi32_ps(prod), acc[r]);
    }
    const __m256i sc = _mm256_cvtepi8_epi16(_mm_and_si128(ms, m4));
    const __m128i sl = _mm256_castsi256_si128(sc), sh = _mm256_extracti128_si256(sc, 1);
    const __m256i scales[2] = {_mm256_set_m128i(sl, sl), _mm256_set_m128i(sh, sh)};
    __m256i sumi[R];
    for (int r = 0; r < R; ++r) sumi[r] = _mm256_setzero_si256();
    for (int j = 0; j < 2; ++j) {
      const __m256i bits = load256(x[b].qs + 32 * j);
      for (int k = 0; k < 4; ++k) {
        const __m256i code = _mm256_and_si256(k ? _mm256_srli_epi16(bits, 2 * k) : bits, m3);
        const __m256i scl = _mm256_shuffle_epi8(scales[j], scale_pair_shuffle(k));
        for (int r = 0; r < R; ++r) {
          const __m256i p = _mm256_maddubs_epi16(code, load256(y[r][b].qs + 128 * j + 32 * k));
          sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(scl, p));
        }
      }
    }
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(y[r][b].d * xd), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r * os] = hsum(acc[r]);
}
float dot_q2_K(int64_t n, const void* w, const void* a) { return one_row<dotm_q2_K<1>>(n, w, a); }
#endif

}  // namespace
}  // namespace kr
