// x86 SIMD dot kernels for the grid i-quants with per-16/32 sub-block scales (IQ2_XS, IQ2_S, IQ3_S,
// IQ1_M), plus the table of every x86 kernel; same compile-twice scheme as vecdot_x86.h (include only
// from vecdot_avx2.cpp / vecdot_avx512.cpp).
#pragma once
#include "cpu/vecdot_x86_iq.h"
#include "cpu/vecdot_x86_multi.h"
#include "cpu/vecdot_x86_multi_k.h"

namespace kr {
namespace {

// 32 explicit sign bits (bit e = negate weight e) -> bytes of +1 / -1 for _mm256_sign_epi8.
inline __m256i sign_bits32(uint32_t bits) {
  const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  const __m256i bitmask = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
  const __m256i v = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf), bitmask);
  return _mm256_or_si256(_mm256_cmpeq_epi8(v, bitmask), _mm256_set1_epi8(1));
}

// scale_pair_shuffle(k) as constants in memory: a loop that GCC does not unroll would otherwise build
// the shuffle vector at run time on every iteration.
struct PairShuffles {
  alignas(32) int8_t v[4][32];
  PairShuffles() {
    for (int k = 0; k < 4; ++k)
      for (int j = 0; j < 32; ++j) v[k][j] = (int8_t)(4 * k + 2 * (j / 16) + (j & 1));
  }
};
const PairShuffles kPairShuf;
inline __m256i pair_shuffle(int k) { return _mm256_load_si256((const __m256i*)kPairShuf.v[k]); }

// 16 4-bit scales (two per byte, low nibble first) -> int16 2*s+1, ordered, as two registers holding
// scales 0-7 and 8-15 in both 128-bit halves (for pair_shuffle).
inline void nibble_scales16(const uint8_t* s8, __m256i out[2]) {
  const __m128i b = _mm_loadl_epi64((const __m128i*)s8);
  const __m128i nib = _mm_and_si128(_mm_unpacklo_epi8(b, _mm_srli_epi16(b, 4)), _mm_set1_epi8(15));
  const __m256i s = _mm256_or_si256(_mm256_slli_epi16(_mm256_cvtepu8_epi16(nib), 1), _mm256_set1_epi16(1));
  const __m128i lo = _mm256_castsi256_si128(s), hi = _mm256_extracti128_si256(s, 1);
  out[0] = _mm256_set_m128i(lo, lo);
  out[1] = _mm256_set_m128i(hi, hi);
}

// Grid bytes (non-negative) x activations with the weight signs moved onto y; scaled per 16.
inline __m256i grid_dot(__m256i grid, __m256i sgn, const int8_t* q8, __m256i scale16) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(grid, _mm256_sign_epi8(load256(q8), sgn)), scale16);
}

// Kernels are multi-row templates as in vecdot_x86_iq.h.
template <int R>
void dotm_iq2_xs(int64_t n, const void* w, const void* a, size_t as, float* out, int64_t os) {
  const block_iq2_xs* x = (const block_iq2_xs*)w;
  const block_q8_K* y[R];
  __m256 acc[R];
  for (int r = 0; r < R; ++r) {
    y[r] = act_row<block_q8_K>(a, as, r);
    acc[r] = _mm256_setzero_ps();
  }
  const uint64_t* signs = sign_table().v;
  const uint64_t* grid = tables::iq2xs_grid;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const uint8_t* qs = (const uint8_t*)x[b].qs;
    __m256i sc[2];
    nibble_scales16(x[b].scales, sc);
    __m256i s0[R], s1[R];
    for (int r = 0; r < R; ++r) s0[r] = s1[r] = _mm256_setzero_si256();
    for (int ib = 0; ib < 8; ib += 2) {
      const uint64_t q0 = ld64(qs + 8 * ib), q1 = ld64(qs + 8 * ib + 8);
      const __m256i g0 =
          rows4(grid[q0 & 511], grid[(q0 >> 16) & 511], grid[(q0 >> 32) & 511], grid[(q0 >> 48) & 511]);
      const __m256i g1 =
          rows4(grid[q1 & 511], grid[(q1 >> 16) & 511], grid[(q1 >> 32) & 511], grid[(q1 >> 48) & 511]);
      const __m256i z0 = rows4(signs[(q0 >> 9) & 127], signs[(q0 >> 25) & 127], signs[(q0 >> 41) & 127], signs[q0 >> 57]);
      const __m256i z1 = rows4(signs[(q1 >> 9) & 127], signs[(q1 >> 25) & 127], signs[(q1 >> 41) & 127], signs[q1 >> 57]);
      const __m256i scl0 = _mm256_shuffle_epi8(sc[ib / 4], pair_shuffle(ib % 4));
      const __m256i scl1 = _mm256_shuffle_epi8(sc[ib / 4], pair_shuffle(ib % 4 + 1));
      for (int r = 0; r < R; ++r) {
        const int8_t* q8 = y[r][b].qs + 32 * ib;
        s0[r] = _mm256_add_epi32(s0[r], grid_dot(g0, z0, q8, scl0));
        s1[r] = _mm256_add_epi32(s1[r], grid_dot(g1, z1, q8 + 32, scl1));
      }
    }
    const float xd = f16(x[b].d);
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(0.125f * y[r][b].d * xd), _mm256_cvtepi32_ps(_mm256_add_epi32(s0[r], s1[r])),
                               acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r * os] = hsum(acc[r]);
}

template <int R>
void dotm_iq2_s(int64_t n, const void* w, const void* a, size_t as, float* out, int64_t os) {
  const block_iq2_s* x = (const block_iq2_s*)w;
  const block_q8_K* y[R];
  __m256 acc[R];
  for (int r = 0; r < R; ++r) {
    y[r] = act_row<block_q8_K>(a, as, r);
    acc[r] = _mm256_setzero_ps();
  }
  const uint64_t* grid = tables::iq2s_grid;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const uint8_t* qs = x[b].qs;
    const uint8_t* qh = x[b].qh;
    const uint8_t* sg = x[b].qs + QK_K / 8;
    __m256i sc[2];
    nibble_scales16(x[b].scales, sc);
    __m256i s0[R], s1[R];
    for (int r = 0; r < R; ++r) s0[r] = s1[r] = _mm256_setzero_si256();
    for (int ib = 0; ib < 8; ib += 2, qs += 8) {
      const uint32_t h0 = (uint32_t)qh[ib] << 8, h1 = (uint32_t)qh[ib + 1] << 8;
      const __m256i g0 = rows4(grid[qs[0] | (h0 & 0x300)], grid[qs[1] | ((h0 >> 2) & 0x300)],
                               grid[qs[2] | ((h0 >> 4) & 0x300)], grid[qs[3] | ((h0 >> 6) & 0x300)]);
      const __m256i g1 = rows4(grid[qs[4] | (h1 & 0x300)], grid[qs[5] | ((h1 >> 2) & 0x300)],
                               grid[qs[6] | ((h1 >> 4) & 0x300)], grid[qs[7] | ((h1 >> 6) & 0x300)]);
      const __m256i z0 = sign_bits32(ld32(sg + 4 * ib)), z1 = sign_bits32(ld32(sg + 4 * ib + 4));
      const __m256i scl0 = _mm256_shuffle_epi8(sc[ib / 4], pair_shuffle(ib % 4));
      const __m256i scl1 = _mm256_shuffle_epi8(sc[ib / 4], pair_shuffle(ib % 4 + 1));
      for (int r = 0; r < R; ++r) {
        const int8_t* q8 = y[r][b].qs + 32 * ib;
        s0[r] = _mm256_add_epi32(s0[r], grid_dot(g0, z0, q8, scl0));
        s1[r] = _mm256_add_epi32(s1[r], grid_dot(g1, z1, q8 + 32, scl1));
      }
    }
    const float xd = f16(x[b].d);
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(0.125f * y[r][b].d * xd), _mm256_cvtepi32_ps(_mm256_add_epi32(s0[r], s1[r])),
                               acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r * os] = hsum(acc[r]);
}

template <int R>
void dotm_iq3_s(int64_t n, const void* w, const void* a, size_t as, float* out, int64_t os) {
  const block_iq3_s* x = (const block_iq3_s*)w;
  const block_q8_K* y[R];
  __m256 acc[R];
  for (int r = 0; r < R; ++r) {
    y[r] = act_row<block_q8_K>(a, as, r);
    acc[r] = _mm256_setzero_ps();
  }
  const uint32_t* grid = tables::iq3s_grid;
  const __m256i hshift = _mm256_setr_epi32(8, 7, 6, 5, 4, 3, 2, 1);
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const uint8_t* qs = x[b].qs;
    const uint8_t* sg = x[b].signs;
    __m256i s0[R], s1[R];
    for (int r = 0; r < R; ++r) s0[r] = s1[r] = _mm256_setzero_si256();
    for (int ib = 0; ib < 8; ib += 2) {
      __m256i g[2];
      for (int k = 0; k < 2; ++k) {
        // 9-bit indices: code byte | bit j of qh at bit 8, gathered 8 rows at a time.
        const __m256i lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(qs + 8 * (ib + k))));
        const __m256i hb = _mm256_and_si256(_mm256_sllv_epi32(_mm256_set1_epi32(x[b].qh[ib + k]), hshift),
                                            _mm256_set1_epi32(256));
        g[k] = _mm256_i32gather_epi32((const int*)grid, _mm256_or_si256(lo, hb), 4);
      }
      const uint8_t sb = x[b].scales[ib / 2];
      const __m256i ls0 = _mm256_set1_epi16((short)(2 * (sb & 15) + 1));
      const __m256i ls1 = _mm256_set1_epi16((short)(2 * (sb >> 4) + 1));
      const __m256i z0 = sign_bits32(ld32(sg + 4 * ib)), z1 = sign_bits32(ld32(sg + 4 * ib + 4));
      for (int r = 0; r < R; ++r) {
        const int8_t* q8 = y[r][b].qs + 32 * ib;
        s0[r] = _mm256_add_epi32(s0[r], grid_dot(g[0], z0, q8, ls0));
        s1[r] = _mm256_add_epi32(s1[r], grid_dot(g[1], z1, q8 + 32, ls1));
      }
    }
    const float xd = f16(x[b].d);
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(y[r][b].d * xd), _mm256_cvtepi32_ps(_mm256_add_epi32(s0[r], s1[r])),
                               acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r * os] = hsum(acc[r]);
}

// IQ1_M: each weight becomes the int8 8*g + 8*delta (g in {-1,0,1}, 8*delta = +-1 per 8 weights),
// dotted with y through the sign trick, then scaled by 2*s+1 per 16 weights; units of 1/8.
template <int R>
void dotm_iq1_m(int64_t n, const void* w, const void* a, size_t as, float* out, int64_t os) {
  const block_iq1_m* x = (const block_iq1_m*)w;
  const block_q8_K* y[R];
  __m256 acc[R];
  for (int r = 0; r < R; ++r) {
    y[r] = act_row<block_q8_K>(a, as, r);
    acc[r] = _mm256_setzero_ps();
  }
  const uint64_t* grid = tables::iq1s_grid;
  const __m256i eight = _mm256_set1_epi8(8), one = _mm256_set1_epi8(1);
  // Delta sign bits: group k of 8 (k = 0..3 in 32 weights) is bit 3 (k even) / 7 (k odd) of qh byte k/2.
  const __m256i dshuf = _mm256_set_epi64x(0x0101010101010101, 0x0101010101010101, 0, 0);
  const __m256i dmask = _mm256_set_epi64x((long long)0x8080808080808080ULL, 0x0808080808080808,
                                          (long long)0x8080808080808080ULL, 0x0808080808080808);
  // Scale words duplicated (w0 w0 w1 w1 ...) so that 32-bit lane j holds word j/2; its scales 2j, 2j+1
  // sit at bit 6*(j%2) and 3 above.
  const __m128i wshuf = _mm_setr_epi8(0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7);
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const uint8_t* s8 = x[b].scales;
    const uint16_t sc[4] = {ld16(s8), ld16(s8 + 2), ld16(s8 + 4), ld16(s8 + 6)};
    const uint16_t dbits = (uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) |
                                      (sc[3] & 0xF000));
    // int16 lanes 0..15 = 2*s_g+1 for the 16 groups of 16 weights.
    const __m128i w4 = _mm_loadl_epi64((const __m128i*)x[b].scales);
    __m256i v = _mm256_cvtepu16_epi32(_mm_shuffle_epi8(w4, wshuf));
    v = _mm256_srlv_epi32(v, _mm256_setr_epi32(0, 6, 0, 6, 0, 6, 0, 6));
    v = _mm256_or_si256(_mm256_and_si256(v, _mm256_set1_epi32(7)),
                        _mm256_and_si256(_mm256_slli_epi32(v, 13), _mm256_set1_epi32(7 << 16)));
    v = _mm256_or_si256(_mm256_slli_epi16(v, 1), _mm256_set1_epi16(1));
    const __m128i vlo = _mm256_castsi256_si128(v), vhi = _mm256_extracti128_si256(v, 1);
    const __m256i scs[2] = {_mm256_set_m128i(vlo, vlo), _mm256_set_m128i(vhi, vhi)};
    const uint8_t* qs = x[b].qs;
    const uint8_t* qh = x[b].qh;
    __m256i s0[R], s1[R];
    for (int r = 0; r < R; ++r) s0[r] = s1[r] = _mm256_setzero_si256();
    // Grid rows through a stack buffer, as in dotm_iq1_s (faster than lane inserts there).
    alignas(32) uint64_t rows[32];
    for (int ib = 0; ib < 8; ++ib) {
      const uint32_t h = (uint32_t)qh[2 * ib] | ((uint32_t)qh[2 * ib + 1] << 16);  // nibbles at bits 0, 4, 16, 20
      rows[4 * ib + 0] = grid[qs[4 * ib + 0] | ((h << 8) & 0x700)];
      rows[4 * ib + 1] = grid[qs[4 * ib + 1] | ((h << 4) & 0x700)];
      rows[4 * ib + 2] = grid[qs[4 * ib + 2] | ((h >> 8) & 0x700)];
      rows[4 * ib + 3] = grid[qs[4 * ib + 3] | ((h >> 12) & 0x700)];
    }
    for (int ib = 0; ib < 8; ++ib, qh += 2) {
      const __m256i g = load256(rows + 4 * ib);
      const uint16_t hh = ld16(qh);
      const __m256i dm = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi16((short)hh), dshuf), dmask);
      const __m256i delta = _mm256_or_si256(_mm256_cmpeq_epi8(dm, dmask), one);
      const __m256i wq = _mm256_add_epi8(_mm256_sign_epi8(eight, g), delta);
      const __m256i aw = _mm256_sign_epi8(wq, wq);
      const __m256i scl = _mm256_shuffle_epi8(scs[ib / 4], pair_shuffle(ib % 4));
      for (int r = 0; r < R; ++r) {
        const __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(load256(y[r][b].qs + 32 * ib), wq));
        if (ib & 1) s1[r] = _mm256_add_epi32(s1[r], _mm256_madd_epi16(p, scl));
        else s0[r] = _mm256_add_epi32(s0[r], _mm256_madd_epi16(p, scl));
      }
    }
    const float xd = _cvtsh_ss(dbits);
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(0.125f * y[r][b].d * xd), _mm256_cvtepi32_ps(_mm256_add_epi32(s0[r], s1[r])),
                               acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r * os] = hsum(acc[r]);
}

// nr in [1, kMultiRows] rows through the fixed-R instantiations.
template <template <int> class K>
void dotm_dispatch(int64_t n, const void* w, const void* a, size_t as, int nr, float* out, int64_t os) {
  switch (nr) {
    case 4: K<4>::run(n, w, a, as, out, os); return;
    case 3: K<3>::run(n, w, a, as, out, os); return;
    case 2: K<2>::run(n, w, a, as, out, os); return;
    default: K<1>::run(n, w, a, as, out, os); return;
  }
}
template <int R> struct MQ8_0 { static constexpr auto run = dotm_q8_0<R>; };
template <int R> struct MQ4_K { static constexpr auto run = dotm_qk_K<false, R>; };
template <int R> struct MQ5_K { static constexpr auto run = dotm_qk_K<true, R>; };
template <int R> struct MQ6_K { static constexpr auto run = dotm_q6_K<R>; };
template <int R> struct MQ2_K { static constexpr auto run = dotm_q2_K<R>; };
template <int R> struct MQ3_K { static constexpr auto run = dotm_q3_K<R>; };
template <int R> struct MIQ4_XS { static constexpr auto run = dotm_iq4_xs<R>; };
template <int R> struct MIQ2_XXS { static constexpr auto run = dotm_iq2_xxs<R>; };
template <int R> struct MIQ2_XS { static constexpr auto run = dotm_iq2_xs<R>; };
template <int R> struct MIQ2_S { static constexpr auto run = dotm_iq2_s<R>; };
template <int R> struct MIQ3_XXS { static constexpr auto run = dotm_iq3_xxs<R>; };
template <int R> struct MIQ3_S { static constexpr auto run = dotm_iq3_s<R>; };
template <int R> struct MIQ1_S { static constexpr auto run = dotm_iq1_s<R>; };
template <int R> struct MIQ1_M { static constexpr auto run = dotm_iq1_m<R>; };
template <int R> struct MTQ1_0 { static constexpr auto run = dotm_tq1_0<R>; };
template <int R> struct MTQ2_0 { static constexpr auto run = dotm_tq2_0<R>; };

void fill_multi(VecDotTable& t) {
  static_assert(kMultiRows == 4, "dotm_dispatch covers 1..4 rows");
  t.multi[(int)GgmlType::Q8_0] = dotm_dispatch<MQ8_0>;
  t.multi[(int)GgmlType::Q4_K] = dotm_dispatch<MQ4_K>;
  t.multi[(int)GgmlType::Q5_K] = dotm_dispatch<MQ5_K>;
  t.multi[(int)GgmlType::Q6_K] = dotm_dispatch<MQ6_K>;
  t.multi[(int)GgmlType::Q2_K] = dotm_dispatch<MQ2_K>;
  t.multi[(int)GgmlType::Q3_K] = dotm_dispatch<MQ3_K>;
  t.multi[(int)GgmlType::IQ4_XS] = dotm_dispatch<MIQ4_XS>;
  t.multi[(int)GgmlType::IQ2_XXS] = dotm_dispatch<MIQ2_XXS>;
  t.multi[(int)GgmlType::IQ2_XS] = dotm_dispatch<MIQ2_XS>;
  t.multi[(int)GgmlType::IQ2_S] = dotm_dispatch<MIQ2_S>;
  t.multi[(int)GgmlType::IQ3_XXS] = dotm_dispatch<MIQ3_XXS>;
  t.multi[(int)GgmlType::IQ3_S] = dotm_dispatch<MIQ3_S>;
  t.multi[(int)GgmlType::IQ1_S] = dotm_dispatch<MIQ1_S>;
  t.multi[(int)GgmlType::IQ1_M] = dotm_dispatch<MIQ1_M>;
  t.multi[(int)GgmlType::TQ1_0] = dotm_dispatch<MTQ1_0>;
  t.multi[(int)GgmlType::TQ2_0] = dotm_dispatch<MTQ2_0>;
}

VecDotTable make_x86_table() {
  VecDotTable t;
  auto set = [&](GgmlType ty, VecDotFn f) { t.fn[(int)ty] = f; };
  set(GgmlType::F32, dot_f32);
  set(GgmlType::F16, dot_half<load_f16x8, cvt_f16>);
  set(GgmlType::BF16, dot_half<load_bf16x8, cvt_bf16>);
  set(GgmlType::Q8_0, dot_q8_0);
  set(GgmlType::Q4_0, dot_qx<block_q4_0, 8, false, false>);
  set(GgmlType::Q4_1, dot_qx<block_q4_1, 0, true, false>);
  set(GgmlType::Q5_0, dot_qx<block_q5_0, 16, false, true>);
  set(GgmlType::Q5_1, dot_qx<block_q5_1, 0, true, true>);
  set(GgmlType::IQ4_NL, dot_iq4_nl);
  set(GgmlType::MXFP4, dot_mxfp4);
  set(GgmlType::Q2_K, dot_q2_K);
  set(GgmlType::Q3_K, one_row<dotm_q3_K<1>>);
  set(GgmlType::Q4_K, dot_qk_K<false>);
  set(GgmlType::Q5_K, dot_qk_K<true>);
  set(GgmlType::Q6_K, dot_q6_K);
  set(GgmlType::IQ4_XS, one_row<dotm_iq4_xs<1>>);
  set(GgmlType::IQ2_XXS, one_row<dotm_iq2_xxs<1>>);
  set(GgmlType::IQ1_S, one_row<dotm_iq1_s<1>>);
  set(GgmlType::TQ1_0, one_row<dotm_tq1_0<1>>);
  set(GgmlType::TQ2_0, one_row<dotm_tq2_0<1>>);
  set(GgmlType::IQ3_XXS, one_row<dotm_iq3_xxs<1>>);
  set(GgmlType::IQ2_XS, one_row<dotm_iq2_xs<1>>);
  set(GgmlType::IQ2_S, one_row<dotm_iq2_s<1>>);
  set(GgmlType::IQ3_S, one_row<dotm_iq3_s<1>>);
  set(GgmlType::IQ1_M, one_row<dotm_iq1_m<1>>);
  fill_multi(t);
  return t;
}

}  // namespace
}  // namespace kr
