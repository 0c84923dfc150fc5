// x86 SIMD dot kernels for the grid i-quants with one scale per 32 weights and the ternary formats;
// same compile-twice scheme as vecdot_x86.h (included through vecdot_x86_iq_scaled.h).
#pragma once
#include "cpu/vecdot_x86.h"

namespace kr {
namespace {

// ---- i-quants and ternary formats x block_q8_K

// ksigns_iq2xs expanded to 8 bytes of +1/-1 per 7-bit sign index, for _mm256_sign_epi8.
struct SignTable {
  uint64_t v[128];
  SignTable() {
    for (int i = 0; i < 128; ++i) {
      uint64_t w = 0;
      for (int j = 0; j < 8; ++j) w |= (uint64_t)((tables::ksigns_iq2xs[i] >> j) & 1 ? 0xFF : 0x01) << (8 * j);
      v[i] = w;
    }
  }
};
const SignTable& sign_table() {
  static const SignTable t;
  return t;
}

// Kernels here are multi-row templates (vecdot_x86.h one_row gives the single-row form): the block is
// decoded once for R activation rows and each row's arithmetic and order do not depend on R.
template <int R>
void dotm_iq2_xxs(int64_t n, const void* w, const void* a, size_t as, float* out, int64_t os) {
  const block_iq2_xxs* x = (const block_iq2_xxs*)w;
  const block_q8_K* y[R];
  __m256 acc[R];
  for (int r = 0; r < R; ++r) {
    y[r] = act_row<block_q8_K>(a, as, r);
    acc[r] = _mm256_setzero_ps();
  }
  const uint64_t* signs = sign_table().v;
  const uint64_t* grid = tables::iq2xxs_grid;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const uint8_t* raw = (const uint8_t*)x[b].qs;
    __m256i sumi[R];
    for (int r = 0; r < R; ++r) sumi[r] = _mm256_setzero_si256();
    for (int ib = 0; ib < 8; ++ib) {
      const uint32_t aux = ld32(raw + 8 * ib + 4);
      const uint8_t* idx = raw + 8 * ib;
      const __m256i q = rows4(grid[idx[0]], grid[idx[1]], grid[idx[2]], grid[idx[3]]);
      const __m256i sg = rows4(signs[aux & 127], signs[(aux >> 7) & 127], signs[(aux >> 14) & 127],
                               signs[(aux >> 21) & 127]);
      const __m256i scl = _mm256_set1_epi16((short)(2 * (aux >> 28) + 1));
      for (int r = 0; r < R; ++r) {
        const __m256i p = _mm256_maddubs_epi16(q, _mm256_sign_epi8(load256(y[r][b].qs + 32 * ib), sg));
        sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(p, scl));
      }
    }
    const float xd = f16(x[b].d);
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(0.125f * y[r][b].d * xd), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r * os] = hsum(acc[r]);
}

// iq1s_grid with every byte + 1 (values 0/1/2), so rows feed the unsigned side of maddubs directly.
struct Iq1sGridU {
  uint64_t v[2048];
  Iq1sGridU() {
    for (int i = 0; i < 2048; ++i) {
      uint64_t w = 0;
      for (int j = 0; j < 8; ++j) w |= (uint64_t)(uint8_t)((int8_t)(tables::iq1s_grid[i] >> (8 * j)) + 1) << (8 * j);
      v[i] = w;
    }
  }
};
const Iq1sGridU& iq1s_grid_u() {
  static const Iq1sGridU t;
  return t;
}

// IQ1_S: w = d*ls*(g + delta) with g in {-1,0,1}, delta = +-1/8. With u = g + 1 the dot is
// ls*(sum u*y + (delta - 1)*sum y); 8*(delta - 1) is -7 or -9 and sum y comes from the bsums, so
// everything stays integer in units of 1/8.
template <int R>
void dotm_iq1_s(int64_t n, const void* w, const void* a, size_t as, float* out, int64_t os) {
  const block_iq1_s* x = (const block_iq1_s*)w;
  const block_q8_K* y[R];
  __m256 acc[R];
  for (int r = 0; r < R; ++r) {
    y[r] = act_row<block_q8_K>(a, as, r);
    acc[r] = _mm256_setzero_ps();
  }
  const uint64_t* grid = iq1s_grid_u().v;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const uint8_t* qs = x[b].qs;
    uint16_t qhs[8];
    std::memcpy(qhs, x[b].qh, 16);
    // Gather the 32 grid rows through memory first: cheaper than building vectors lane by lane.
    // Also measured slower (bench_vecdot_l2.py): hardware gathers, SIMD-built indices, and double-
    // buffering the rows across blocks; GCC's code for this loop is fragile, so keep it simple.
    alignas(32) uint64_t rows[32];
    for (int ib = 0; ib < 8; ++ib) {
      const uint32_t qh = qhs[ib];
      rows[4 * ib + 0] = grid[qs[4 * ib + 0] | ((qh << 8) & 0x700)];
      rows[4 * ib + 1] = grid[qs[4 * ib + 1] | ((qh << 5) & 0x700)];
      rows[4 * ib + 2] = grid[qs[4 * ib + 2] | ((qh << 2) & 0x700)];
      rows[4 * ib + 3] = grid[qs[4 * ib + 3] | ((qh >> 1) & 0x700)];
    }
    __m256i sumi[R];
    for (int r = 0; r < R; ++r) sumi[r] = _mm256_setzero_si256();
    for (int ib = 0; ib < 8; ++ib) {
      const __m256i g = load256(rows + 4 * ib);
      const __m256i scl = _mm256_set1_epi16((short)(((qhs[ib] >> 11) & 0xE) | 1));
      for (int r = 0; r < R; ++r) {
        const __m256i p = _mm256_maddubs_epi16(g, load256(y[r][b].qs + 32 * ib));
        sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(p, scl));
      }
    }
    const __m128i qh8 = _mm_loadu_si128((const __m128i*)x[b].qh);
    const __m128i ls = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(qh8, 11), _mm_set1_epi16(0xE)), _mm_set1_epi16(1));
    const __m128i f = _mm_blendv_epi8(_mm_set1_epi16(-7), _mm_set1_epi16(-9), _mm_srai_epi16(qh8, 15));
    const __m128i lsf = _mm_mullo_epi16(ls, f);
    const float xd = f16(x[b].d);
    for (int r = 0; r < R; ++r) {
      const __m256i bs = load256(y[r][b].bsums);
      const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
      const __m128i corr = _mm_madd_epi16(lsf, pairs);
      const __m256i total = _mm256_add_epi32(_mm256_slli_epi32(sumi[r], 3), _mm256_zextsi128_si256(corr));
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(0.125f * y[r][b].d * xd), _mm256_cvtepi32_ps(total), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r * os] = hsum(acc[r]);
}

// TQ1_0 trits: byte * 3^j (mod 256) by shifts and adds, then the trit is (q * 3) >> 8, computed
// per byte as ((q-1) avg ((q-1) avg 0)) >> 6 (saturating q-1; exact for all 256 byte values, checked
// exhaustively), ggml's halving-add form.
struct Trits {
  static __m256i times3(__m256i v) { return _mm256_add_epi8(v, _mm256_add_epi8(v, v)); }
  static __m256i times9(__m256i v) {
    return _mm256_add_epi8(_mm256_and_si256(_mm256_slli_epi16(v, 3), _mm256_set1_epi8((char)0xF8)), v);
  }
  static __m256i top(__m256i q) {
    const __m256i qm = _mm256_subs_epu8(q, _mm256_set1_epi8(1));
    const __m256i r = _mm256_avg_epu8(qm, _mm256_avg_epu8(qm, _mm256_setzero_si256()));
    return _mm256_and_si256(_mm256_srli_epi16(r, 6), _mm256_set1_epi8(3));
  }
};

template <int R>
void dotm_tq1_0(int64_t n, const void* w, const void* a, size_t as, float* out, int64_t os) {
  const block_tq1_0* x = (const block_tq1_0*)w;
  const block_q8_K* y[R];
  __m256 acc[R];
  for (int r = 0; r < R; ++r) {
    y[r] = act_row<block_q8_K>(a, as, r);
    acc[r] = _mm256_setzero_ps();
  }
  using Tr = Trits;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    // 32 bytes x 5 trits -> y[0..160); 16 bytes x 5 trits -> y[160..240) (two trits per 256-bit
    // vector: the 16 bytes are duplicated into both halves and multiplied by 3^t and 3^(t+1)).
    __m256i t[8];
    const __m256i v0 = load256(x[b].qs);
    const __m256i m2 = Tr::times9(v0);
    t[0] = Tr::top(v0);
    t[1] = Tr::top(Tr::times3(v0));
    t[2] = Tr::top(m2);
    t[3] = Tr::top(Tr::times3(m2));
    t[4] = Tr::top(Tr::times9(m2));
    const __m128i h = _mm_loadu_si128((const __m128i*)(x[b].qs + 32));
    const __m256i hh = _mm256_set_m128i(h, h);
    t[5] = Tr::top(_mm256_blend_epi32(hh, Tr::times3(hh), 0xF0));                               // 3^0 | 3^1
    t[6] = Tr::top(_mm256_blend_epi32(Tr::times9(hh), Tr::times9(Tr::times3(hh)), 0xF0));      // 3^2 | 3^3
    // Last 32 values: the 16 bytes' 5th trit (low half, 3^4) and the 4 qh bytes x 4 trits (high half,
    // dword t = qh * 3^t) against y[224..256).
    const __m256i q = _mm256_set1_epi32((int)ld32(x[b].qh));
    const __m256i q9 = Tr::times9(q);
    const __m256i qmix = _mm256_blend_epi32(_mm256_blend_epi32(q, Tr::times3(q), 0x22),
                                            _mm256_blend_epi32(q9, Tr::times3(q9), 0x88), 0xCC);
    t[7] = Tr::top(_mm256_blend_epi32(Tr::times9(Tr::times9(hh)), qmix, 0xF0));
    const float xd = f16(x[b].d);
    for (int r = 0; r < R; ++r) {
      const int8_t* q8 = y[r][b].qs;
      __m256i sumi = _mm256_setzero_si256();
      for (int k = 0; k < 8; ++k) sumi = dpbusd(sumi, t[k], load256(q8 + 32 * k));
      // The -1 offset of every trit: subtract sum(y), from the bsums.
      sumi = _mm256_sub_epi32(sumi, _mm256_madd_epi16(load256(y[r][b].bsums), _mm256_set1_epi16(1)));
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(y[r][b].d * xd), _mm256_cvtepi32_ps(sumi), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r * os] = hsum(acc[r]);
}

template <int R>
void dotm_iq3_xxs(int64_t n, const void* w, const void* a, size_t as, float* out, int64_t os) {
  const block_iq3_xxs* x = (const block_iq3_xxs*)w;
  const block_q8_K* y[R];
  __m256 acc[R];
  for (int r = 0; r < R; ++r) {
    y[r] = act_row<block_q8_K>(a, as, r);
    acc[r] = _mm256_setzero_ps();
  }
  const uint64_t* signs = sign_table().v;
  const uint32_t* grid = tables::iq3xxs_grid;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const uint8_t* qs = x[b].qs;
    __m256i sumi[R];
    for (int r = 0; r < R; ++r) sumi[r] = _mm256_setzero_si256();
    for (int ib = 0; ib < 8; ++ib, qs += 8) {
      const uint32_t aux = ld32(x[b].qs + QK_K / 4 + 4 * ib);
      const __m256i q = _mm256_set_epi32((int)grid[qs[7]], (int)grid[qs[6]], (int)grid[qs[5]], (int)grid[qs[4]],
                                         (int)grid[qs[3]], (int)grid[qs[2]], (int)grid[qs[1]], (int)grid[qs[0]]);
      const __m256i sg = rows4(signs[aux & 127], signs[(aux >> 7) & 127], signs[(aux >> 14) & 127],
                               signs[(aux >> 21) & 127]);
      const __m256i scl = _mm256_set1_epi16((short)(2 * (aux >> 28) + 1));
      for (int r = 0; r < R; ++r) {
        const __m256i p = _mm256_maddubs_epi16(q, _mm256_sign_epi8(load256(y[r][b].qs + 32 * ib), sg));
        sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(p, scl));
      }
    }
    const float xd = f16(x[b].d);
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(0.25f * y[r][b].d * xd), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r * os] = hsum(acc[r]);
}

// TQ2_0: Q2_K's code layout without scales; w = d*(q - 1), the -1 taken through the bsums.
template <int R>
void dotm_tq2_0(int64_t n, const void* w, const void* a, size_t as, float* out, int64_t os) {
  const block_tq2_0* x = (const block_tq2_0*)w;
  const block_q8_K* y[R];
  __m256 acc[R];
  for (int r = 0; r < R; ++r) {
    y[r] = act_row<block_q8_K>(a, as, r);
    acc[r] = _mm256_setzero_ps();
  }
  const __m256i m3 = _mm256_set1_epi8(3);
  for (int64_t b = 0; b < n / QK_K; ++b) {
    __m256i s0[R], s1[R];
    for (int r = 0; r < R; ++r) s0[r] = s1[r] = _mm256_setzero_si256();
    for (int j = 0; j < 2; ++j) {
      const __m256i bits = load256(x[b].qs + 32 * j);
      const __m256i c0 = _mm256_and_si256(bits, m3), c1 = _mm256_and_si256(_mm256_srli_epi16(bits, 2), m3),
                    c2 = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m3),
                    c3 = _mm256_and_si256(_mm256_srli_epi16(bits, 6), m3);
      for (int r = 0; r < R; ++r) {
        const int8_t* q8 = y[r][b].qs + 128 * j;
        s0[r] = dpbusd(s0[r], c0, load256(q8));
        s1[r] = dpbusd(s1[r], c1, load256(q8 + 32));
        s0[r] = dpbusd(s0[r], c2, load256(q8 + 64));
        s1[r] = dpbusd(s1[r], c3, load256(q8 + 96));
      }
    }
    const float xd = f16(x[b].d);
    for (int r = 0; r < R; ++r) {
      // sum(y) = sum of the 16 bsums, subtracted in int32 before scaling.
      const __m256i ys = _mm256_madd_epi16(load256(y[r][b].bsums), _mm256_set1_epi16(1));
      const __m256i sumi = _mm256_sub_epi32(_mm256_add_epi32(s0[r], s1[r]), ys);
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(y[r][b].d * xd), _mm256_cvtepi32_ps(sumi), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r * os] = hsum(acc[r]);
}

}  // namespace
}  // namespace kr
