// Portable reference kernels: each weight block is decoded to small integers plus integer scales
// and dotted exactly with the 8-bit activation; only the per-block scaling is floating point.
#include <cmath>
#include <cstring>

#include "cpu/vecdot.h"
#include "quant/half.h"
#include "quant/iq_tables.h"

namespace kr {
namespace {

using tables::kvalues_iq4nl;
using tables::kvalues_mxfp4;

inline int dot_i8(const int8_t* q, const int8_t* a, int n) {
  int s = 0;
  for (int j = 0; j < n; ++j) s += (int)q[j] * (int)a[j];
  return s;
}

// ---- float formats (activation kept in f32)

float dot_f32(int64_t n, const void* w, const void* a) {
  const float* x = (const float*)w;
  const float* y = (const float*)a;
  float s[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) s[k] += x[i + k] * y[i + k];
  for (; i < n; ++i) s[0] += x[i] * y[i];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

template <float (*Cvt)(uint16_t)>
float dot_half(int64_t n, const void* w, const void* a) {
  const uint16_t* x = (const uint16_t*)w;
  const float* y = (const float*)a;
  float s[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) s[k] += Cvt(x[i + k]) * y[i + k];
  for (; i < n; ++i) s[0] += Cvt(x[i]) * y[i];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}
float f16_cvt(uint16_t h) { return fp16_to_fp32(h); }
float bf16_cvt(uint16_t h) { return bf16_to_fp32(h); }

// ---- 32-weight formats x block_q8a32

float dot_q8_0(int64_t n, const void* w, const void* a) {
  const block_q8_0* x = (const block_q8_0*)w;
  const block_q8a32* y = (const block_q8a32*)a;
  float s = 0.f;
  for (int64_t b = 0; b < n / 32; ++b) s += fp16_to_fp32(x[b].d) * y[b].d * (float)dot_i8(x[b].qs, y[b].qs, 32);
  return s;
}

// Unpacks the nibble layout shared by Q4_0/Q4_1/IQ4_NL/MXFP4 (elem j = lo of byte j, j+16 = hi).
inline void unpack_nibbles(const uint8_t* qs, int8_t* q) {
  for (int j = 0; j < 16; ++j) {
    q[j] = (int8_t)(qs[j] & 15);
    q[j + 16] = (int8_t)(qs[j] >> 4);
  }
}

inline void add_q5_high(const uint8_t* qh4, int8_t* q) {
  uint32_t qh;
  std::memcpy(&qh, qh4, 4);
  for (int j = 0; j < 32; ++j) q[j] |= (int8_t)(((qh >> j) & 1) << 4);
}

float dot_q4_0(int64_t n, const void* w, const void* a) {
  const block_q4_0* x = (const block_q4_0*)w;
  const block_q8a32* y = (const block_q8a32*)a;
  float s = 0.f;
  int8_t q[32];
  for (int64_t b = 0; b < n / 32; ++b) {
    unpack_nibbles(x[b].qs, q);
    for (int j = 0; j < 32; ++j) q[j] -= 8;
    s += fp16_to_fp32(x[b].d) * y[b].d * (float)dot_i8(q, y[b].qs, 32);
  }
  return s;
}

float dot_q4_1(int64_t n, const void* w, const void* a) {
  const block_q4_1* x = (const block_q4_1*)w;
  const block_q8a32* y = (const block_q8a32*)a;
  float s = 0.f;
  int8_t q[32];
  for (int64_t b = 0; b < n / 32; ++b) {
    unpack_nibbles(x[b].qs, q);
    s += fp16_to_fp32(x[b].d) * y[b].d * (float)dot_i8(q, y[b].qs, 32) + fp16_to_fp32(x[b].m) * y[b].s;
  }
  return s;
}

float dot_q5_0(int64_t n, const void* w, const void* a) {
  const block_q5_0* x = (const block_q5_0*)w;
  const block_q8a32* y = (const block_q8a32*)a;
  float s = 0.f;
  int8_t q[32];
  for (int64_t b = 0; b < n / 32; ++b) {
    unpack_nibbles(x[b].qs, q);
    add_q5_high(x[b].qh, q);
    for (int j = 0; j < 32; ++j) q[j] -= 16;
    s += fp16_to_fp32(x[b].d) * y[b].d * (float)dot_i8(q, y[b].qs, 32);
  }
  return s;
}

float dot_q5_1(int64_t n, const void* w, const void* a) {
  const block_q5_1* x = (const block_q5_1*)w;
  const block_q8a32* y = (const block_q8a32*)a;
  float s = 0.f;
  int8_t q[32];
  for (int64_t b = 0; b < n / 32; ++b) {
    unpack_nibbles(x[b].qs, q);
    add_q5_high(x[b].qh, q);
    s += fp16_to_fp32(x[b].d) * y[b].d * (float)dot_i8(q, y[b].qs, 32) + fp16_to_fp32(x[b].m) * y[b].s;
  }
  return s;
}

float dot_iq4_nl(int64_t n, const void* w, const void* a) {
  const block_iq4_nl* x = (const block_iq4_nl*)w;
  const block_q8a32* y = (const block_q8a32*)a;
  float s = 0.f;
  int8_t q[32];
  for (int64_t b = 0; b < n / 32; ++b) {
    unpack_nibbles(x[b].qs, q);
    for (int j = 0; j < 32; ++j) q[j] = kvalues_iq4nl[(int)q[j]];
    s += fp16_to_fp32(x[b].d) * y[b].d * (float)dot_i8(q, y[b].qs, 32);
  }
  return s;
}

float dot_mxfp4(int64_t n, const void* w, const void* a) {
  const block_mxfp4* x = (const block_mxfp4*)w;
  const block_q8a32* y = (const block_q8a32*)a;
  float s = 0.f;
  int8_t q[32];
  for (int64_t b = 0; b < n / 32; ++b) {
    unpack_nibbles(x[b].qs, q);
    for (int j = 0; j < 32; ++j) q[j] = kvalues_mxfp4[(int)q[j]];
    s += std::ldexp(1.0f, (int)x[b].e - 128) * y[b].d * (float)dot_i8(q, y[b].qs, 32);
  }
  return s;
}

// ---- 256-weight formats x block_q8_K

// Sum over 16-weight groups of scale[g] * dot(q, a) for one block, exact in int32.
inline int dot_groups16(const int8_t* q, const int8_t* a, const int* sc) {
  int s = 0;
  for (int g = 0; g < 16; ++g) s += sc[g] * dot_i8(q + 16 * g, a + 16 * g, 16);
  return s;
}

float dot_q2_K(int64_t n, const void* w, const void* a) {
  const block_q2_K* x = (const block_q2_K*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  float s = 0.f;
  int8_t q[256];
  int sc[16];
  for (int64_t b = 0; b < n / QK_K; ++b) {
    for (int i = 0; i < 256; ++i) q[i] = (int8_t)((x[b].qs[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3);
    int summ = 0;
    for (int g = 0; g < 16; ++g) {
      sc[g] = x[b].scales[g] & 15;
      summ += (x[b].scales[g] >> 4) * y[b].bsums[g];
    }
    s += y[b].d * (fp16_to_fp32(x[b].d) * (float)dot_groups16(q, y[b].qs, sc) - fp16_to_fp32(x[b].dmin) * (float)summ);
  }
  return s;
}

float dot_q3_K(int64_t n, const void* w, const void* a) {
  const block_q3_K* x = (const block_q3_K*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  float s = 0.f;
  int8_t q[256];
  int sc[16];
  for (int64_t b = 0; b < n / QK_K; ++b) {
    for (int i = 0; i < 256; ++i) {
      const int half = i / 128, j = (i % 128) / 32, l = i % 32;
      const int lo = (x[b].qs[32 * half + l] >> (2 * j)) & 3;
      const int hi = (x[b].hmask[l] >> (4 * half + j)) & 1;
      q[i] = (int8_t)(lo - (hi ? 0 : 4));
    }
    const uint8_t* r = x[b].scales;
    for (int g = 0; g < 16; ++g) {
      const int low = g < 8 ? (r[g] & 15) : (r[g - 8] >> 4);
      const int high = (r[8 + g % 4] >> (2 * (g / 4))) & 3;
      sc[g] = (low | (high << 4)) - 32;
    }
    s += y[b].d * fp16_to_fp32(x[b].d) * (float)dot_groups16(q, y[b].qs, sc);
  }
  return s;
}

// 6-bit scale and min j (0..7) of the 12-byte K-quant scale field (Q4_K, Q5_K).
inline void scale_min_k4(int j, const uint8_t* q, int* d, int* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Shared tail of Q4_K / Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins.
inline float finish_k4(const uint8_t* scales, const int8_t* q, const block_q8_K& y, float d, float dmin) {
  int sumi = 0, summ = 0;
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    scale_min_k4(j, scales, &sc, &m);
    sumi += sc * dot_i8(q + 32 * j, y.qs + 32 * j, 32);
    summ += m * (y.bsums[2 * j] + y.bsums[2 * j + 1]);
  }
  return y.d * (d * (float)sumi - dmin * (float)summ);
}

float dot_q4_K(int64_t n, const void* w, const void* a) {
  const block_q4_K* x = (const block_q4_K*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  float s = 0.f;
  int8_t q[256];
  for (int64_t b = 0; b < n / QK_K; ++b) {
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) {
        q[64 * c + l] = (int8_t)(x[b].qs[32 * c + l] & 15);
        q[64 * c + 32 + l] = (int8_t)(x[b].qs[32 * c + l] >> 4);
      }
    s += finish_k4(x[b].scales, q, y[b], fp16_to_fp32(x[b].d), fp16_to_fp32(x[b].dmin));
  }
  return s;
}

float dot_q5_K(int64_t n, const void* w, const void* a) {
  const block_q5_K* x = (const block_q5_K*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  float s = 0.f;
  int8_t q[256];
  for (int64_t b = 0; b < n / QK_K; ++b) {
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) {
        q[64 * c + l] = (int8_t)((x[b].qs[32 * c + l] & 15) | (((x[b].qh[l] >> (2 * c)) & 1) << 4));
        q[64 * c + 32 + l] = (int8_t)((x[b].qs[32 * c + l] >> 4) | (((x[b].qh[l] >> (2 * c + 1)) & 1) << 4));
      }
    s += finish_k4(x[b].scales, q, y[b], fp16_to_fp32(x[b].d), fp16_to_fp32(x[b].dmin));
  }
  return s;
}

float dot_q6_K(int64_t n, const void* w, const void* a) {
  const block_q6_K* x = (const block_q6_K*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  float s = 0.f;
  int8_t q[256];
  int sc[16];
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const uint8_t* ql = x[b].ql;
    const uint8_t* qh = x[b].qh;
    for (int h = 0; h < 2; ++h, ql += 64, qh += 32)
      for (int l = 0; l < 32; ++l) {
        int8_t* o = q + 128 * h + l;
        o[0] = (int8_t)(((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32);
        o[32] = (int8_t)(((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32);
        o[64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
        o[96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
      }
    for (int g = 0; g < 16; ++g) sc[g] = x[b].scales[g];
    s += y[b].d * fp16_to_fp32(x[b].d) * (float)dot_groups16(q, y[b].qs, sc);
  }
  return s;
}

float dot_iq4_xs(int64_t n, const void* w, const void* a) {
  const block_iq4_xs* x = (const block_iq4_xs*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  float s = 0.f;
  int8_t q[32];
  for (int64_t b = 0; b < n / QK_K; ++b) {
    int sumi = 0;
    for (int ib = 0; ib < 8; ++ib) {
      const int ls = ((x[b].scales_l[ib / 2] >> (4 * (ib % 2))) & 15) | (((x[b].scales_h >> (2 * ib)) & 3) << 4);
      unpack_nibbles(x[b].qs + 16 * ib, q);
      for (int j = 0; j < 32; ++j) q[j] = kvalues_iq4nl[(int)q[j]];
      sumi += (ls - 32) * dot_i8(q, y[b].qs + 32 * ib, 32);
    }
    s += y[b].d * fp16_to_fp32(x[b].d) * (float)sumi;
  }
  return s;
}

float dot_tq2_0(int64_t n, const void* w, const void* a) {
  const block_tq2_0* x = (const block_tq2_0*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  float s = 0.f;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    int sumi = 0;
    for (int i = 0; i < 256; ++i) {
      const int q = ((x[b].qs[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3) - 1;
      sumi += q * y[b].qs[i];
    }
    s += y[b].d * fp16_to_fp32(x[b].d) * (float)sumi;
  }
  return s;
}

// Trit j of a base-3 byte stored as a fixed-point fraction (TQ1_0's packing).
inline int trit(uint8_t byte, int j) {
  static constexpr uint8_t pow3[5] = {1, 3, 9, 27, 81};
  const uint8_t q = (uint8_t)(byte * pow3[j]);
  return (int)(((uint16_t)q * 3) >> 8);
}

float dot_tq1_0(int64_t n, const void* w, const void* a) {
  const block_tq1_0* x = (const block_tq1_0*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  float s = 0.f;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const int8_t* yq = y[b].qs;
    int sumi = 0;
    for (int t = 0; t < 5; ++t)
      for (int m = 0; m < 32; ++m) sumi += (trit(x[b].qs[m], t) - 1) * yq[32 * t + m];
    for (int t = 0; t < 5; ++t)
      for (int m = 0; m < 16; ++m) sumi += (trit(x[b].qs[32 + m], t) - 1) * yq[160 + 16 * t + m];
    for (int t = 0; t < 4; ++t)
      for (int m = 0; m < 4; ++m) sumi += (trit(x[b].qh[m], t) - 1) * yq[240 + 4 * t + m];
    s += y[b].d * fp16_to_fp32(x[b].d) * (float)sumi;
  }
  return s;
}

float dot_iq2_xxs(int64_t n, const void* w, const void* a) {
  const block_iq2_xxs* x = (const block_iq2_xxs*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  float s = 0.f;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const uint8_t* raw = (const uint8_t*)x[b].qs;
    const int8_t* yq = y[b].qs;
    int sumi = 0;
    for (int ib = 0; ib < 8; ++ib) {
      uint32_t aux;
      std::memcpy(&aux, raw + 8 * ib + 4, 4);
      int si = 0;
      for (int l = 0; l < 4; ++l) {
        const uint64_t row = tables::iq2xxs_grid[raw[8 * ib + l]];
        const uint8_t signs = tables::ksigns_iq2xs[(aux >> (7 * l)) & 127];
        for (int j = 0; j < 8; ++j) {
          const int g = (int)((row >> (8 * j)) & 0xFF);
          si += ((signs >> j) & 1 ? -g : g) * yq[32 * ib + 8 * l + j];
        }
      }
      sumi += (2 * (int)(aux >> 28) + 1) * si;
    }
    s += 0.125f * y[b].d * fp16_to_fp32(x[b].d) * (float)sumi;
  }
  return s;
}

// IQ1_S: grid values in {-1,0,1} plus a +-1/8 shift per 32 weights, taken through the bsums.
float dot_iq1_s(int64_t n, const void* w, const void* a) {
  const block_iq1_s* x = (const block_iq1_s*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  float s = 0.f;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const int8_t* yq = y[b].qs;
    int sumi = 0, sumd = 0;
    for (int ib = 0; ib < 8; ++ib) {
      uint16_t qh;
      std::memcpy(&qh, &x[b].qh[ib], 2);
      const int ls = 2 * ((qh >> 12) & 7) + 1;
      int si = 0;
      for (int l = 0; l < 4; ++l) {
        const uint64_t row = tables::iq1s_grid[x[b].qs[4 * ib + l] | (((qh >> (3 * l)) & 7) << 8)];
        for (int j = 0; j < 8; ++j) si += (int)(int8_t)((row >> (8 * j)) & 0xFF) * yq[32 * ib + 8 * l + j];
      }
      sumi += ls * si;
      sumd += ls * (qh & 0x8000 ? -1 : 1) * (y[b].bsums[2 * ib] + y[b].bsums[2 * ib + 1]);
    }
    s += y[b].d * fp16_to_fp32(x[b].d) * ((float)sumi + 0.125f * (float)sumd);
  }
  return s;
}

float dot_iq3_xxs(int64_t n, const void* w, const void* a) {
  const block_iq3_xxs* x = (const block_iq3_xxs*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  float s = 0.f;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const uint8_t* qs = x[b].qs;
    const int8_t* yq = y[b].qs;
    int sumi = 0;
    for (int ib = 0; ib < 8; ++ib) {
      uint32_t aux;
      std::memcpy(&aux, qs + QK_K / 4 + 4 * ib, 4);
      int si = 0;
      for (int l = 0; l < 4; ++l) {
        const uint8_t signs = tables::ksigns_iq2xs[(aux >> (7 * l)) & 127];
        const uint64_t row = (uint64_t)tables::iq3xxs_grid[qs[8 * ib + 2 * l]] |
                             ((uint64_t)tables::iq3xxs_grid[qs[8 * ib + 2 * l + 1]] << 32);
        for (int j = 0; j < 8; ++j) {
          const int g = (int)((row >> (8 * j)) & 0xFF);
          si += ((signs >> j) & 1 ? -g : g) * yq[32 * ib + 8 * l + j];
        }
      }
      sumi += (2 * (int)(aux >> 28) + 1) * si;
    }
    s += 0.25f * y[b].d * fp16_to_fp32(x[b].d) * (float)sumi;
  }
  return s;
}

// Signed grid row (8 weights) x activation, with a sign byte (bit j set = negate weight j).
inline int grid8_dot(uint64_t row, uint8_t signs, const int8_t* y) {
  int s = 0;
  for (int j = 0; j < 8; ++j) {
    const int g = (int)((row >> (8 * j)) & 0xFF);
    s += ((signs >> j) & 1 ? -g : g) * y[j];
  }
  return s;
}

// IQ2_XS / IQ2_S: per 16 weights a 4-bit scale ls, w = d*(2*ls+1)/8 * grid; sums stay in int.
float dot_iq2_xs(int64_t n, const void* w, const void* a) {
  const block_iq2_xs* x = (const block_iq2_xs*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  float s = 0.f;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    uint16_t qs[32];
    std::memcpy(qs, x[b].qs, 64);
    int sumi = 0;
    for (int g = 0; g < 16; ++g) {  // 16-weight scale groups: two grid rows each
      const int ls = 2 * ((x[b].scales[g / 2] >> (4 * (g % 2))) & 15) + 1;
      int si = 0;
      for (int l = 0; l < 2; ++l) {
        const uint16_t q = qs[2 * g + l];
        si += grid8_dot(tables::iq2xs_grid[q & 511], tables::ksigns_iq2xs[q >> 9], y[b].qs + 16 * g + 8 * l);
      }
      sumi += ls * si;
    }
    s += 0.125f * y[b].d * fp16_to_fp32(x[b].d) * (float)sumi;
  }
  return s;
}

float dot_iq2_s(int64_t n, const void* w, const void* a) {
  const block_iq2_s* x = (const block_iq2_s*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  float s = 0.f;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const uint8_t* signs = x[b].qs + QK_K / 8;
    int sumi = 0;
    for (int g = 0; g < 16; ++g) {
      const int ls = 2 * ((x[b].scales[g / 2] >> (4 * (g % 2))) & 15) + 1;
      int si = 0;
      for (int l = 0; l < 2; ++l) {
        const int i = 2 * g + l;
        const int idx = x[b].qs[i] | (((x[b].qh[i / 4] >> (2 * (i % 4))) & 3) << 8);
        si += grid8_dot(tables::iq2s_grid[idx], signs[i], y[b].qs + 8 * i);
      }
      sumi += ls * si;
    }
    s += 0.125f * y[b].d * fp16_to_fp32(x[b].d) * (float)sumi;
  }
  return s;
}

// IQ3_S: 4-weight grid rows, explicit sign bits, (2*sc+1) per 32 weights.
float dot_iq3_s(int64_t n, const void* w, const void* a) {
  const block_iq3_s* x = (const block_iq3_s*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  float s = 0.f;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    int sumi = 0;
    for (int ib = 0; ib < 8; ++ib) {
      const int ls = 2 * ((x[b].scales[ib / 2] >> (4 * (ib % 2))) & 15) + 1;
      int si = 0;
      for (int l = 0; l < 4; ++l) {
        const int i0 = 8 * ib + 2 * l;
        const int h0 = (x[b].qh[ib] >> (2 * l)) & 1, h1 = (x[b].qh[ib] >> (2 * l + 1)) & 1;
        const uint64_t row = (uint64_t)tables::iq3s_grid[x[b].qs[i0] | (h0 << 8)] |
                             ((uint64_t)tables::iq3s_grid[x[b].qs[i0 + 1] | (h1 << 8)] << 32);
        si += grid8_dot(row, x[b].signs[4 * ib + l], y[b].qs + 32 * ib + 8 * l);
      }
      sumi += ls * si;
    }
    s += y[b].d * fp16_to_fp32(x[b].d) * (float)sumi;
  }
  return s;
}

// IQ1_M: w = d*(2*s+1)*(g + delta), g in {-1,0,1}, s per 16 weights, delta = +-1/8 per 8 weights;
// summed exactly in units of 1/8 as (8*g + 8*delta) * y.
float dot_iq1_m(int64_t n, const void* w, const void* a) {
  const block_iq1_m* x = (const block_iq1_m*)w;
  const block_q8_K* y = (const block_q8_K*)a;
  float s = 0.f;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    uint16_t sc[4];
    std::memcpy(sc, x[b].scales, 8);
    const uint16_t dbits = (uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) |
                                      (sc[3] & 0xF000));
    const int8_t* yq = y[b].qs;
    int sumi = 0;
    for (int g = 0; g < 16; ++g) {
      const int ls = 2 * ((sc[g / 4] >> (3 * (g % 4))) & 7) + 1;
      int si = 0;
      for (int l = 0; l < 2; ++l) {
        const int m = 2 * g + l;
        const int nib = (x[b].qh[m / 2] >> (4 * (m % 2))) & 15;
        const uint64_t row = tables::iq1s_grid[x[b].qs[m] | ((nib & 7) << 8)];
        int gy = 0, ys = 0;
        for (int j = 0; j < 8; ++j) {
          gy += (int)(int8_t)((row >> (8 * j)) & 0xFF) * yq[8 * m + j];
          ys += yq[8 * m + j];
        }
        si += 8 * gy + (nib & 8 ? -ys : ys);
      }
      sumi += ls * si;
    }
    s += 0.125f * y[b].d * fp16_to_fp32(dbits) * (float)sumi;
  }
  return s;
}

VecDotTable make_table() {
  VecDotTable t;
  auto set = [&](GgmlType ty, VecDotFn f) { t.fn[(int)ty] = f; };
  set(GgmlType::F32, dot_f32);
  set(GgmlType::F16, dot_half<f16_cvt>);
  set(GgmlType::BF16, dot_half<bf16_cvt>);
  set(GgmlType::Q8_0, dot_q8_0);
  set(GgmlType::Q4_0, dot_q4_0);
  set(GgmlType::Q4_1, dot_q4_1);
  set(GgmlType::Q5_0, dot_q5_0);
  set(GgmlType::Q5_1, dot_q5_1);
  set(GgmlType::IQ4_NL, dot_iq4_nl);
  set(GgmlType::MXFP4, dot_mxfp4);
  set(GgmlType::Q2_K, dot_q2_K);
  set(GgmlType::Q3_K, dot_q3_K);
  set(GgmlType::Q4_K, dot_q4_K);
  set(GgmlType::Q5_K, dot_q5_K);
  set(GgmlType::Q6_K, dot_q6_K);
  set(GgmlType::IQ4_XS, dot_iq4_xs);
  set(GgmlType::TQ1_0, dot_tq1_0);
  set(GgmlType::TQ2_0, dot_tq2_0);
  set(GgmlType::IQ2_XXS, dot_iq2_xxs);
  set(GgmlType::IQ1_S, dot_iq1_s);
  set(GgmlType::IQ3_XXS, dot_iq3_xxs);
  set(GgmlType::IQ2_XS, dot_iq2_xs);
  set(GgmlType::IQ2_S, dot_iq2_s);
  set(GgmlType::IQ3_S, dot_iq3_s);
  set(GgmlType::IQ1_M, dot_iq1_m);
  return t;
}

}  // namespace

ActKind act_kind(int32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::Q8_0: case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0:
    case GgmlType::Q5_1: case GgmlType::IQ4_NL: case GgmlType::MXFP4:
      return ActKind::Q8A32;
    case GgmlType::Q2_K: case GgmlType::Q3_K: case GgmlType::Q4_K: case GgmlType::Q5_K:
    case GgmlType::Q6_K: case GgmlType::IQ4_XS: case GgmlType::TQ1_0: case GgmlType::TQ2_0:
    case GgmlType::IQ2_XXS: case GgmlType::IQ1_S: case GgmlType::IQ3_XXS: case GgmlType::IQ2_XS:
    case GgmlType::IQ2_S: case GgmlType::IQ3_S: case GgmlType::IQ1_M:
      return ActKind::Q8K;
    default:
      return ActKind::F32;
  }
}

const VecDotTable& vecdot_table_scalar() {
  static const VecDotTable t = make_table();
  return t;
}

}  // namespace kr
