// x86 SIMD dot kernels (float, 32-block and K-quant formats), written once and compiled twice: by
// vecdot_avx2.cpp (maddubs+madd) and by vecdot_avx512.cpp with KR_VNNI=1 (vpdpbusd on 256-bit
// lanes; Q2_K alone uses 512-bit registers there). Everything sits in an anonymous namespace so
// the two ISA builds never merge under the ODR. Include only through vecdot_x86_iq.h from those two.
#pragma once
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "cpu/vecdot.h"
#include "quant/iq_tables.h"

#ifndef KR_VNNI
#define KR_VNNI 0
#endif

namespace kr {
namespace {

inline float f16(uint16_t h) { return _cvtsh_ss(h); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// acc + sum over groups of 4 of u8 * s8 (unsigned ax must be <= 128 when not VNNI, so the 16-bit
// pair sums of maddubs cannot saturate against |y| <= 127).
inline __m256i dpbusd(__m256i acc, __m256i ax, __m256i sy) {
#if KR_VNNI
  return _mm256_dpbusd_epi32(acc, ax, sy);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1)));
#endif
}

// Signed x signed: move x's sign onto y so the unsigned-by-signed instruction applies.
inline __m256i dps8(__m256i acc, __m256i x, __m256i y) {
  return dpbusd(acc, _mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

inline __m256i load256(const void* p) { return _mm256_loadu_si256((const __m256i*)p); }

// Unaligned little-endian loads straight from the block: copying a block field into a local array
// first makes the compiler store it with one wide vector store that later narrow loads cannot
// forward from.
inline uint16_t ld16(const void* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t ld32(const void* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline uint64_t ld64(const void* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

inline __m256i rows4(uint64_t r0, uint64_t r1, uint64_t r2, uint64_t r3) {
  return _mm256_set_epi64x((long long)r3, (long long)r2, (long long)r1, (long long)r0);
}

template <class Y>
inline const Y* act_row(const void* a, size_t stride, int r) {
  return (const Y*)((const uint8_t*)a + stride * (size_t)r);
}

// The single-row form of a multi-row template kernel K<1>.
template <void (*K)(int64_t, const void*, const void*, size_t, float*, int64_t)>
float one_row(int64_t n, const void* w, const void* a) {
  float out;
  K(n, w, a, 0, &out, 1);
  return out;
}

// 16 packed bytes -> 32 nibbles (elem j = lo nibble of byte j, j+16 = hi nibble), as u8.
// Q6_K: 128 weights of one half-block as four vectors of unsigned 6-bit codes (0..63), from 64
// low-nibble bytes (b1, b2) and 32 bytes of high 2-bit pairs (bh). Shared by the one- and multi-row kernels.
inline void unpack_q6_K(__m256i b1, __m256i b2, __m256i bh, __m256i q[4]) {
  const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3);
  q[0] = _mm256_or_si256(_mm256_and_si256(b1, m4), _mm256_slli_epi16(_mm256_and_si256(bh, m2), 4));
  q[1] = _mm256_or_si256(_mm256_and_si256(b2, m4),
                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(bh, 2), m2), 4));
  q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m4),
                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(bh, 4), m2), 4));
  q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m4),
                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(bh, 6), m2), 4));
}

inline __m256i nibbles32(const uint8_t* p) {
  const __m128i t = _mm_loadu_si128((const __m128i*)p);
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(15));
}

// Q5 high bits: 32 bits -> bytes 0x10 where set.
inline __m256i bits32_x16(const uint8_t* p) {
  uint32_t x32;
  std::memcpy(&x32, p, 4);
  const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x32), shuf);
  b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  return _mm256_and_si256(_mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1)), _mm256_set1_epi8(0x10));
}

// ---- float formats

float dot_f32(int64_t n, const void* w, const void* a) {
  const float* x = (const float*)w;
  const float* y = (const float*)a;
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), s0);
  float s = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; ++i) s += x[i] * y[i];
  return s;
}

inline __m256 load_f16x8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
inline __m256 load_bf16x8(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}

template <__m256 (*Load)(const uint16_t*), float (*Cvt)(uint16_t)>
float dot_half(int64_t n, const void* w, const void* a) {
  const uint16_t* x = (const uint16_t*)w;
  const float* y = (const float*)a;
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(Load(x + i), _mm256_loadu_ps(y + i), s0);
    s1 = _mm256_fmadd_ps(Load(x + i + 8), _mm256_loadu_ps(y + i + 8), s1);
    s2 = _mm256_fmadd_ps(Load(x + i + 16), _mm256_loadu_ps(y + i + 16), s2);
    s3 = _mm256_fmadd_ps(Load(x + i + 24), _mm256_loadu_ps(y + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(Load(x + i), _mm256_loadu_ps(y + i), s0);
  float s = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; ++i) s += Cvt(x[i]) * y[i];
  return s;
}
float cvt_f16(uint16_t h) { return _cvtsh_ss(h); }
float cvt_bf16(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- 32-weight formats x block_q8a32. Two blocks per iteration keep two FMA chains in flight.

float dot_q8_0(int64_t n, const void* w, const void* a) {
  const block_q8_0* x = (const block_q8_0*)w;
  const block_q8a32* y = (const block_q8a32*)a;
  const int64_t nb = n / 32;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    const __m256i p0 = dps8(_mm256_setzero_si256(), load256(x[b].qs), load256(y[b].qs));
    const __m256i p1 = dps8(_mm256_setzero_si256(), load256(x[b + 1].qs), load256(y[b + 1].qs));
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(x[b].d) * y[b].d), _mm256_cvtepi32_ps(p0), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_set1_ps(f16(x[b + 1].d) * y[b + 1].d), _mm256_cvtepi32_ps(p1), acc1);
  }
  for (; b < nb; ++b) {
    const __m256i p0 = dps8(_mm256_setzero_si256(), load256(x[b].qs), load256(y[b].qs));
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(x[b].d) * y[b].d), _mm256_cvtepi32_ps(p0), acc0);
  }
  return hsum(_mm256_add_ps(acc0, acc1));
}

// Unsigned 4/5-bit codes q with an offset: w = d*(q - off) or d*q + m; the offset/min part is a
// multiple of sum(y), which the activation block carries as s.
template <class Blk, int Off, bool HasMin, bool Q5>
float dot_qx(int64_t n, const void* w, const void* a) {
  const Blk* x = (const Blk*)w;
  const block_q8a32* y = (const block_q8a32*)a;
  __m256 acc = _mm256_setzero_ps();
  float tail = 0.f;
  for (int64_t b = 0; b < n / 32; ++b) {
    __m256i q = nibbles32(x[b].qs);
    if constexpr (Q5) q = _mm256_or_si256(q, bits32_x16(x[b].qh));
    const __m256i p = dpbusd(_mm256_setzero_si256(), q, load256(y[b].qs));
    const float d = f16(x[b].d);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y[b].d), _mm256_cvtepi32_ps(p), acc);
    if constexpr (HasMin) tail += f16(x[b].m) * y[b].s;
    else tail -= d * (float)Off * y[b].s;
  }
  return hsum(acc) + tail;
}

// Codebook formats: 4-bit index -> int8 value through a 16-entry pshufb table.
template <class Blk>
inline __m256i lut_codes(const Blk& blk, __m256i table) {
  return _mm256_shuffle_epi8(table, nibbles32(blk.qs));
}

float dot_iq4_nl(int64_t n, const void* w, const void* a) {
  const block_iq4_nl* x = (const block_iq4_nl*)w;
  const block_q8a32* y = (const block_q8a32*)a;
  const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)tables::kvalues_iq4nl));
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / 32; ++b) {
    const __m256i p = dps8(_mm256_setzero_si256(), lut_codes(x[b], table), load256(y[b].qs));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(x[b].d) * y[b].d), _mm256_cvtepi32_ps(p), acc);
  }
  return hsum(acc);
}

float dot_mxfp4(int64_t n, const void* w, const void* a) {
  const block_mxfp4* x = (const block_mxfp4*)w;
  const block_q8a32* y = (const block_q8a32*)a;
  const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)tables::kvalues_mxfp4));
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / 32; ++b) {
    const __m256i p = dps8(_mm256_setzero_si256(), lut_codes(x[b], table), load256(y[b].qs));
    // 2^(e-128) built from its bit pattern; e < 2 gives the two subnormal powers.
    const uint32_t e = x[b].e;
    const uint32_t bits = e < 2 ? (0x00200000u << e) : ((e - 1) << 23);
    float scale;
    std::memcpy(&scale, &bits, 4);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(scale * y[b].d), _mm256_cvtepi32_ps(p), acc);
  }
  return hsum(acc);
}

// ---- 256-weight formats x block_q8_K

// 16-bit scale pairs: for chunk k of 32 weights, lanes 0-7 take scale 2k, lanes 8-15 scale 2k+1
// (from a register holding 8 int16 scales in both 128-bit halves).
inline __m256i scale_pair_shuffle(int k) {
  const char lo = (char)(4 * k), hi = (char)(4 * k + 2);
  return _mm256_setr_epi8(lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo,
                          lo + 1, hi, hi + 1, hi, hi + 1, hi, hi + 1, hi, hi + 1, hi, hi + 1, hi, hi + 1, hi,
                          hi + 1, hi, hi + 1);
}
// One int16 scale k broadcast to all lanes.
inline __m256i scale_one_shuffle(int k) {
  const char lo = (char)(2 * k);
  return _mm256_setr_epi8(lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo,
                          lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo,
                          lo + 1, lo, lo + 1);
}

#if KR_VNNI
// Q2_K on 512-bit registers: a register holds 64 consecutive weights (chunk k = weights 64k..64k+63),
// so 128-bit lane t is exactly the 16-weight group 4k+t. Per block a pshufb table T turns (code | 4k)
// into code * scale of the byte's group (<= 45 as u8), which makes the whole block one vpdpbusd
// chain. On Zen 4 (512-bit ops double-pumped) a row runs at the speed of the 256-bit maddubs kernel;
// the gain is the multi-row form, where only the four vpdpbusd repeat per activation row.

// T lane t, byte 4k+m = m * scale(4k+t), from the low nibbles of the 16 scale bytes.
inline __m512i q2k_table(const uint8_t* scales) {
  const __m512i raw = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)scales));
  // dword k of lane t: byte 4k+t repeated
  const __m512i ctrl = _mm512_setr_epi32(0x00000000, 0x04040404, 0x08080808, 0x0c0c0c0c, 0x01010101, 0x05050505,
                                         0x09090909, 0x0d0d0d0d, 0x02020202, 0x06060606, 0x0a0a0a0a, 0x0e0e0e0e,
                                         0x03030303, 0x07070707, 0x0b0b0b0b, 0x0f0f0f0f);
  const __m512i s = _mm512_shuffle_epi8(raw, ctrl);
  // m * s = (m & 1 ? s : 0) + (m & 2 ? 2s : 0); 2*raw & 0x1e == 2 * (raw & 15).
  return _mm512_add_epi8(_mm512_and_si512(s, _mm512_set1_epi32(0x0f000f00)),
                         _mm512_and_si512(_mm512_add_epi8(s, s), _mm512_set1_epi32(0x1e1e0000)));
}

// The four scaled-code registers of a block (chunk k pairs codes j = 2(k%2), 2(k%2)+1 of half k/2).
inline void q2k_decode(const block_q2_K& x, __m512i q[4]) {
  const __m512i t = q2k_table(x.scales);
  const __m512i m3 = _mm512_set1_epi8(3);
  const __m512i cnt_lo = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
  const __m512i cnt_hi = _mm512_add_epi16(cnt_lo, _mm512_set1_epi16(4));
  for (int h = 0; h < 2; ++h) {
    const __m512i bq = _mm512_broadcast_i64x4(load256(x.qs + 32 * h));
    // (bits >> 2j) & 3 | 4k in one ternlog: (A & B) | C = 0xEA.
    const __m512i k0 = _mm512_set1_epi8((char)(8 * h)), k1 = _mm512_set1_epi8((char)(8 * h + 4));
    const __m512i i0 = _mm512_ternarylogic_epi32(_mm512_srlv_epi16(bq, cnt_lo), m3, k0, 0xEA);
    const __m512i i1 = _mm512_ternarylogic_epi32(_mm512_srlv_epi16(bq, cnt_hi), m3, k1, 0xEA);
    q[2 * h] = _mm512_shuffle_epi8(t, i0);
    q[2 * h + 1] = _mm512_shuffle_epi8(t, i1);
  }
}

// (y.d * d, -y.d * dmin) in lanes 0, 1: both f16 fields converted from one 4-byte load.
inline __m128 q2k_d_dmin(const block_q2_K& x, float yd) {
  const __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128((int)ld32(&x.d)));
  return _mm_mul_ps(dd, _mm_setr_ps(yd, -yd, 0.f, 0.f));
}

// dmin * sum_g min_g * bsum_g (dmin already carries -y.d).
inline __m256 q2k_min_term(const block_q2_K& x, const block_q8_K& y, __m256 dmin, __m256 acc) {
  const __m128i ms = _mm_loadu_si128((const __m128i*)x.scales);
  const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(ms, 4), _mm_set1_epi8(15)));
  const __m256i prod = _mm256_madd_epi16(mins, load256(y.bsums));
  return _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(prod), acc);
}

// sum_j code_j * scale_j * y_j over the block, exact in int32 (16 products of <= 45 * 128 per lane).
inline __m512i q2k_block_sum(const __m512i q[4], const int8_t* q8) {
  __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[0], _mm512_loadu_si512(q8));
  s = _mm512_dpbusd_epi32(s, q[1], _mm512_loadu_si512(q8 + 64));
  s = _mm512_dpbusd_epi32(s, q[2], _mm512_loadu_si512(q8 + 128));
  return _mm512_dpbusd_epi32(s, q[3], _mm512_loadu_si512(q8 + 192));
}

inline float q2k_finish(__m512 acc, __m256 accm) {
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1));
  const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(acc), hi);
  return hsum(_mm256_add_ps(a, accm));
}

float dot_q2_K(int64_t n, const void* w, const void* a) {
  const block_q2_K* x = (const block_q2_K*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  __m512 acc = _mm512_setzero_ps();
  __m256 accm = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const __m128 dd = q2k_d_dmin(x[b], y[b].d);
    accm = q2k_min_term(x[b], y[b], _mm256_broadcastss_ps(_mm_movehdup_ps(dd)), accm);
    __m512i q[4];
    q2k_decode(x[b], q);
    acc = _mm512_fmadd_ps(_mm512_broadcastss_ps(dd), _mm512_cvtepi32_ps(q2k_block_sum(q, y[b].qs)), acc);
  }
  return q2k_finish(acc, accm);
}
#endif

// Q4_K / Q5_K scale field -> 8 scales then 8 mins as bytes (ggml's utmp shuffle).
inline __m256i k4_scales_mins(const uint8_t* s12) {
  const uint32_t km1 = 0x3f3f3f3f, km2 = 0x0f0f0f0f, km3 = 0x03030303;
  uint32_t u[4];
  std::memcpy(u, s12, 12);
  u[3] = ((u[2] >> 4) & km2) | (((u[1] >> 6) & km3) << 4);
  const uint32_t uaux = u[1] & km1;
  u[1] = (u[2] & km2) | (((u[0] >> 6) & km3) << 4);
  u[2] = uaux;
  u[0] &= km1;
  return _mm256_cvtepu8_epi16(_mm_set_epi32((int)u[3], (int)u[2], (int)u[1], (int)u[0]));
}

// The min term of Q4_K / Q5_K: dmin * sum_j m_j * (bsum pair j).
inline __m128 k4_min_term(__m256i ms, const block_q8_K& y, float dmin, __m128 acc) {
  const __m256i bs = load256(y.bsums);
  const __m128i pair = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
  const __m128i prod = _mm_madd_epi16(_mm256_extracti128_si256(ms, 1), pair);
  return _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc);
}

template <bool Q5>
float dot_qk_K(int64_t n, const void* w, const void* a) {
  using Blk = std::conditional_t<Q5, block_q5_K, block_q4_K>;
  const Blk* x = (const Blk*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  const __m256i m4 = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
  __m256 acc = _mm256_setzero_ps();
  __m128 accm = _mm_setzero_ps();
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const float d = y[b].d * f16(x[b].d), dmin = -y[b].d * f16(x[b].dmin);
    const __m256i ms = k4_scales_mins(x[b].scales);
    accm = k4_min_term(ms, y[b], dmin, accm);
    const __m128i s128 = _mm256_castsi256_si128(ms);
    const __m256i scales = _mm256_set_m128i(s128, s128);
    const uint8_t* q4 = x[b].qs;
    const int8_t* q8 = y[b].qs;
    __m256i hbits;
    if constexpr (Q5) hbits = load256(x[b].qh);
    __m256i sumi = _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j, q4 += 32, q8 += 64) {
      const __m256i bits = load256(q4);
      __m256i ql = _mm256_and_si256(bits, m4);
      __m256i qh = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
      if constexpr (Q5) {
        ql = _mm256_or_si256(ql, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j), one), 4));
        qh = _mm256_or_si256(qh, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j + 1), one), 4));
      }
      const __m256i pl = _mm256_madd_epi16(_mm256_shuffle_epi8(scales, scale_one_shuffle(2 * j)),
                                           _mm256_maddubs_epi16(ql, load256(q8)));
      const __m256i ph = _mm256_madd_epi16(_mm256_shuffle_epi8(scales, scale_one_shuffle(2 * j + 1)),
                                           _mm256_maddubs_epi16(qh, load256(q8 + 32)));
      sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
  }
  return hsum(_mm256_add_ps(acc, _mm256_zextps128_ps256(accm)));
}

float dot_q6_K(int64_t n, const void* w, const void* a) {
  const block_q6_K* x = (const block_q6_K*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  const __m256i m32 = _mm256_set1_epi8(32);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const float d = y[b].d * f16(x[b].d);
    // Scales as int16, both halves: groups 8j..8j+7 of half j.
    const __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)x[b].scales));
    const __m128i sl = _mm256_castsi256_si128(sc), sh = _mm256_extracti128_si256(sc, 1);
    const __m256i scales[2] = {_mm256_set_m128i(sl, sl), _mm256_set_m128i(sh, sh)};
    const uint8_t* ql = x[b].ql;
    const uint8_t* qh = x[b].qh;
    const int8_t* q8 = y[b].qs;
    __m256i sumi = _mm256_setzero_si256();
    for (int j = 0; j < 2; ++j, ql += 64, qh += 32, q8 += 128) {
      const __m256i b1 = load256(ql), b2 = load256(ql + 32), bh = load256(qh);
      __m256i q[4];
      unpack_q6_K(b1, b2, bh, q);
      for (int k = 0; k < 4; ++k) {
        const __m256i yv = load256(q8 + 32 * k);
        __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q[k], yv), _mm256_maddubs_epi16(m32, yv));
        p = _mm256_madd_epi16(_mm256_shuffle_epi8(scales[j], scale_pair_shuffle(k)), p);
        sumi = _mm256_add_epi32(sumi, p);
      }
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
  }
  return hsum(acc);
}

}  // namespace
}  // namespace kr
