// Multi-row x86 dot kernels: one weight row against R activation rows, each weight block decoded
// once. Per row they keep the single-row kernel's lane layout and accumulation order (vecdot_x86.h),
// so every output is bit-identical to it. Same compile-twice scheme; include via vecdot_x86_iq_scaled.h.
#pragma once
#include "cpu/vecdot_x86.h"

namespace kr {
namespace {

template <int R>
void dotm_q8_0(int64_t n, const void* w, const void* a, size_t as, float* out, int64_t os) {
  const block_q8_0* x = (const block_q8_0*)w;
  const block_q8a32* y[R];
  __m256 acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) {
    y[r] = act_row<block_q8a32>(a, as, r);
    acc0[r] = acc1[r] = _mm256_setzero_ps();
  }
  const int64_t nb = n / 32;
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    const __m256i x0 = load256(x[b].qs), x1 = load256(x[b + 1].qs);
    const __m256i ax0 = _mm256_sign_epi8(x0, x0), ax1 = _mm256_sign_epi8(x1, x1);
    const float d0 = f16(x[b].d), d1 = f16(x[b + 1].d);
    for (int r = 0; r < R; ++r) {
      const __m256i p0 = dpbusd(_mm256_setzero_si256(), ax0, _mm256_sign_epi8(load256(y[r][b].qs), x0));
      const __m256i p1 = dpbusd(_mm256_setzero_si256(), ax1, _mm256_sign_epi8(load256(y[r][b + 1].qs), x1));
      acc0[r] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * y[r][b].d), _mm256_cvtepi32_ps(p0), acc0[r]);
      acc1[r] = _mm256_fmadd_ps(_mm256_set1_ps(d1 * y[r][b + 1].d), _mm256_cvtepi32_ps(p1), acc1[r]);
    }
  }
  for (; b < nb; ++b) {
    const __m256i x0 = load256(x[b].qs), ax0 = _mm256_sign_epi8(x0, x0);
    const float d0 = f16(x[b].d);
    for (int r = 0; r < R; ++r) {
      const __m256i p0 = dpbusd(_mm256_setzero_si256(), ax0, _mm256_sign_epi8(load256(y[r][b].qs), x0));
      acc0[r] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * y[r][b].d), _mm256_cvtepi32_ps(p0), acc0[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r * os] = hsum(_mm256_add_ps(acc0[r], acc1[r]));
}

template <bool Q5, int R>
void dotm_qk_K(int64_t n, const void* w, const void* a, size_t as, float* out, int64_t os) {
  using Blk = std::conditional_t<Q5, block_q5_K, block_q4_K>;
  const Blk* x = (const Blk*)w;
  const block_q8_K* y[R];
  const __m256i m4 = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
  __m256 acc[R];
  __m128 accm[R];
  for (int r = 0; r < R; ++r) {
    y[r] = act_row<block_q8_K>(a, as, r);
    acc[r] = _mm256_setzero_ps();
    accm[r] = _mm_setzero_ps();
  }
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const float xd = f16(x[b].d), xdmin = f16(x[b].dmin);
    const __m256i ms = k4_scales_mins(x[b].scales);
    for (int r = 0; r < R; ++r) accm[r] = k4_min_term(ms, y[r][b], -y[r][b].d * xdmin, accm[r]);
    const __m128i s128 = _mm256_castsi256_si128(ms);
    const __m256i scales = _mm256_set_m128i(s128, s128);
    const uint8_t* q4 = x[b].qs;
    __m256i hbits;
    if constexpr (Q5) hbits = load256(x[b].qh);
    __m256i sumi[R];
    for (int r = 0; r < R; ++r) sumi[r] = _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j, q4 += 32) {
      const __m256i bits = load256(q4);
      __m256i ql = _mm256_and_si256(bits, m4);
      __m256i qh = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
      if constexpr (Q5) {
        ql = _mm256_or_si256(ql, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j), one), 4));
        qh = _mm256_or_si256(qh, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j + 1), one), 4));
      }
      const __m256i sl = _mm256_shuffle_epi8(scales, scale_one_shuffle(2 * j));
      const __m256i sh = _mm256_shuffle_epi8(scales, scale_one_shuffle(2 * j + 1));
      for (int r = 0; r < R; ++r) {
        const int8_t* q8 = y[r][b].qs + 64 * j;
        const __m256i pl = _mm256_madd_epi16(sl, _mm256_maddubs_epi16(ql, load256(q8)));
        const __m256i ph = _mm256_madd_epi16(sh, _mm256_maddubs_epi16(qh, load256(q8 + 32)));
        sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(pl, ph));
      }
    }
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(y[r][b].d * xd), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r * os] = hsum(_mm256_add_ps(acc[r], _mm256_zextps128_ps256(accm[r])));
}

template <int R>
void dotm_q6_K(int64_t n, const void* w, const void* a, size_t as, float* out, int64_t os) {
  const block_q6_K* x = (const block_q6_K*)w;
  const block_q8_K* y[R];
  const __m256i m32 = _mm256_set1_epi8(32);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) {
    y[r] = act_row<block_q8_K>(a, as, r);
    acc[r] = _mm256_setzero_ps();
  }
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const float xd = f16(x[b].d);
    const __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)x[b].scales));
    const __m128i scl = _mm256_castsi256_si128(sc), sch = _mm256_extracti128_si256(sc, 1);
    const __m256i scales[2] = {_mm256_set_m128i(scl, scl), _mm256_set_m128i(sch, sch)};
    const uint8_t* ql = x[b].ql;
    const uint8_t* qh = x[b].qh;
    __m256i sumi[R];
    for (int r = 0; r < R; ++r) sumi[r] = _mm256_setzero_si256();
    for (int j = 0; j < 2; ++j, ql += 64, qh += 32) {
      const __m256i b1 = load256(ql), b2 = load256(ql + 32), bh = load256(qh);
      __m256i q[4], s[4];
      unpack_q6_K(b1, b2, bh, q);
      for (int k = 0; k < 4; ++k) s[k] = _mm256_shuffle_epi8(scales[j], scale_pair_shuffle(k));
      for (int r = 0; r < R; ++r) {
        const int8_t* q8 = y[r][b].qs + 128 * j;
        for (int k = 0; k < 4; ++k) {
          const __m256i yv = load256(q8 + 32 * k);
          const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q[k], yv), _mm256_maddubs_epi16(m32, yv));
          sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(s[k], p));
        }
      }
    }
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(y[r][b].d * xd), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r * os] = hsum(acc[r]);
}

#if KR_VNNI
// Q2_K: the scaled codes (vecdot_x86.h q2k_decode) are built once per block; each row then costs
// four vpdpbusd plus its min term, in the single-row kernel's order.
template <int R>
void dotm_q2_K(int64_t n, const void* w, const void* a, size_t as, float* out, int64_t os) {
  const block_q2_K* x = (const block_q2_K*)w;
  const block_q8_K* y[R];
  __m512 acc[R];
  __m256 accm[R];
  for (int r = 0; r < R; ++r) {
    y[r] = act_row<block_q8_K>(a, as, r);
    acc[r] = _mm512_setzero_ps();
    accm[r] = _mm256_setzero_ps();
  }
  for (int64_t b = 0; b < n / QK_K; ++b) {
    __m512i q[4];
    q2k_decode(x[b], q);
    for (int r = 0; r < R; ++r) {
      const __m128 dd = q2k_d_dmin(x[b], y[r][b].d);
      accm[r] = q2k_min_term(x[b], y[r][b], _mm256_broadcastss_ps(_mm_movehdup_ps(dd)), accm[r]);
      acc[r] = _mm512_fmadd_ps(_mm512_broadcastss_ps(dd), _mm512_cvtepi32_ps(q2k_block_sum(q, y[r][b].qs)), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r * os] = q2k_finish(acc[r], accm[r]);
}
#endif

}  // namespace
}  // namespace kr
