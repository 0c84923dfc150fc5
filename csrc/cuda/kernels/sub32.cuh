// Integer unpacking of one 32-weight sub-block of each GGUF format, for the GPU dot kernels.
// Every format's weights in a sub-block are d * sc[g] * q[j] (- dm * mn[g] for formats with mins),
// g = j / 16, with small integer q and sc: the dot with a q8a32 activation block is then exact
// int32 arithmetic plus a few float products (llama.cpp's mmvq scheme). The bit layouts follow
// decode.h's decoders (the reference for every format); test_cuda_emulated_gemv.py checks each
// against gguf's dequantization through the host emulator.
#pragma once
#include "cpu/act_quant.h"
#include "cuda/kernels/warp.cuh"
#include "quant/decode.h"

namespace kr::gk {

struct Sub32 {
  int8_t q[32];
  int sc[2];      // integer scale per 16-weight half
  int mn[2];      // integer min per half (with dm)
  float d = 0.f;  // float scale of the q*sc terms
  float dm = 0.f; // float scale of the min terms (0: no mins)
};

// The formats the GPU kernels have an integer path for.
KR_HD bool gpu_dot_supported(int32_t t);

KR_HD void set_scales(Sub32& s, int sc0, int sc1, float d) {
  s.sc[0] = sc0;
  s.sc[1] = sc1;
  s.mn[0] = s.mn[1] = 0;
  s.d = d;
  s.dm = 0.f;
}

// Sub-block ib of a row (32 weights each); for 256-weight formats block ib/8, part j = ib%8.
template <int T>
KR_HD void unpack32(const uint8_t* row, int64_t ib, Sub32& s);

template <>
KR_HD void unpack32<(int)GgmlType::Q8_0>(const uint8_t* row, int64_t ib, Sub32& s) {
  const block_q8_0* b = reinterpret_cast<const block_q8_0*>(row) + ib;
  for (int j = 0; j < 32; ++j) s.q[j] = b->qs[j];
  set_scales(s, 1, 1, load_f16(&b->d));
}

template <>
KR_HD void unpack32<(int)GgmlType::Q4_0>(const uint8_t* row, int64_t ib, Sub32& s) {
  const block_q4_0* b = reinterpret_cast<const block_q4_0*>(row) + ib;
  for (int j = 0; j < 16; ++j) {
    s.q[j] = (int8_t)((b->qs[j] & 0xF) - 8);
    s.q[j + 16] = (int8_t)((b->qs[j] >> 4) - 8);
  }
  set_scales(s, 1, 1, load_f16(&b->d));
}

template <>
KR_HD void unpack32<(int)GgmlType::Q2_K>(const uint8_t* row, int64_t ib, Sub32& s) {
  const block_q2_K* b = reinterpret_cast<const block_q2_K*>(row) + ib / 8;
  const int j = (int)(ib % 8), g = j >> 2, sh = 2 * (j & 3);
  for (int l = 0; l < 32; ++l) s.q[l] = (int8_t)((b->qs[g * 32 + l] >> sh) & 3);
  const uint8_t s0 = b->scales[2 * j], s1 = b->scales[2 * j + 1];
  s.sc[0] = s0 & 0xF;
  s.sc[1] = s1 & 0xF;
  s.mn[0] = s0 >> 4;
  s.mn[1] = s1 >> 4;
  s.d = load_f16(&b->d);
  s.dm = load_f16(&b->dmin);
}

template <>
KR_HD void unpack32<(int)GgmlType::Q3_K>(const uint8_t* row, int64_t ib, Sub32& s) {
  const block_q3_K* b = reinterpret_cast<const block_q3_K*>(row) + ib / 8;
  const int j = (int)(ib % 8), g = j >> 2, sh = 2 * (j & 3);
  for (int l = 0; l < 32; ++l) {
    const int lo = (b->qs[g * 32 + l] >> sh) & 3;
    s.q[l] = (int8_t)(lo - (((b->hmask[l] >> j) & 1) ? 0 : 4));
  }
  set_scales(s, q3_K_scale(b->scales, 2 * j), q3_K_scale(b->scales, 2 * j + 1), load_f16(&b->d));
}

template <>
KR_HD void unpack32<(int)GgmlType::Q4_K>(const uint8_t* row, int64_t ib, Sub32& s) {
  const block_q4_K* b = reinterpret_cast<const block_q4_K*>(row) + ib / 8;
  const int j = (int)(ib % 8), sh = 4 * (j & 1);
  const uint8_t* q = b->qs + (j >> 1) * 32;
  for (int l = 0; l < 32; ++l) s.q[l] = (int8_t)((q[l] >> sh) & 0xF);
  int sc, mn;
  k4_scale_min(b->scales, j, &sc, &mn);
  s.sc[0] = s.sc[1] = sc;
  s.mn[0] = s.mn[1] = mn;
  s.d = load_f16(&b->d);
  s.dm = load_f16(&b->dmin);
}

template <>
KR_HD void unpack32<(int)GgmlType::Q5_K>(const uint8_t* row, int64_t ib, Sub32& s) {
  const block_q5_K* b = reinterpret_cast<const block_q5_K*>(row) + ib / 8;
  const int j = (int)(ib % 8), sh = 4 * (j & 1);
  const uint8_t* q = b->qs + (j >> 1) * 32;
  for (int l = 0; l < 32; ++l) s.q[l] = (int8_t)(((q[l] >> sh) & 0xF) | (((b->qh[l] >> j) & 1) << 4));
  int sc, mn;
  k4_scale_min(b->scales, j, &sc, &mn);
  s.sc[0] = s.sc[1] = sc;
  s.mn[0] = s.mn[1] = mn;
  s.d = load_f16(&b->d);
  s.dm = load_f16(&b->dmin);
}

template <>
KR_HD void unpack32<(int)GgmlType::Q6_K>(const uint8_t* row, int64_t ib, Sub32& s) {
  const block_q6_K* b = reinterpret_cast<const block_q6_K*>(row) + ib / 8;
  const int j = (int)(ib % 8);
  for (int l = 0; l < 32; ++l) {
    const int e = 32 * j + l, g = e >> 7, r = e & 127;
    const int lo = (b->ql[g * 64 + (r & 63)] >> (4 * (r >> 6))) & 0xF;
    const int hi = (b->qh[g * 32 + (r & 31)] >> (2 * (r >> 5))) & 3;
    s.q[l] = (int8_t)((lo | (hi << 4)) - 32);
  }
  set_scales(s, b->scales[2 * j], b->scales[2 * j + 1], load_f16(&b->d));
}

template <>
KR_HD void unpack32<(int)GgmlType::IQ2_XXS>(const uint8_t* row, int64_t ib, Sub32& s) {
  const block_iq2_xxs* b = reinterpret_cast<const block_iq2_xxs*>(row) + ib / 8;
  const int j = (int)(ib % 8);
  const uint8_t* raw = reinterpret_cast<const uint8_t*>(b->qs) + 8 * j;
  const uint32_t aux = load_u32(raw + 4);
  for (int l = 0; l < 4; ++l) {
    const uint64_t g = KR_TBL(iq2xxs_grid)[raw[l]];
    const uint8_t signs = KR_TBL(ksigns_iq2xs)[(aux >> (7 * l)) & 127];
    for (int k = 0; k < 8; ++k) {
      const int v = grid_byte(g, k);
      s.q[8 * l + k] = (int8_t)(((signs >> k) & 1) ? -v : v);
    }
  }
  const int sc = 2 * (int)(aux >> 28) + 1;  // (0.5 + s) * 0.25 = (2s + 1) / 8
  set_scales(s, sc, sc, load_f16(&b->d) * 0.125f);
}

template <>
KR_HD void unpack32<(int)GgmlType::IQ2_XS>(const uint8_t* row, int64_t ib, Sub32& s) {
  const block_iq2_xs* b = reinterpret_cast<const block_iq2_xs*>(row) + ib / 8;
  const int j = (int)(ib % 8);
  for (int l = 0; l < 4; ++l) {
    const uint16_t q = load_u16(&b->qs[4 * j + l]);
    const uint64_t g = KR_TBL(iq2xs_grid)[q & 511];
    const uint8_t signs = KR_TBL(ksigns_iq2xs)[q >> 9];
    for (int k = 0; k < 8; ++k) {
      const int v = grid_byte(g, k);
      s.q[8 * l + k] = (int8_t)(((signs >> k) & 1) ? -v : v);
    }
  }
  const uint8_t sc = b->scales[j];
  set_scales(s, 2 * (sc & 0xF) + 1, 2 * (sc >> 4) + 1, load_f16(&b->d) * 0.125f);
}

template <>
KR_HD void unpack32<(int)GgmlType::IQ2_S>(const uint8_t* row, int64_t ib, Sub32& s) {
  const block_iq2_s* b = reinterpret_cast<const block_iq2_s*>(row) + ib / 8;
  const int j = (int)(ib % 8);
  const uint8_t* signs = b->qs + QK_K / 8;
  for (int l = 0; l < 4; ++l) {
    const int i = 4 * j + l;
    const int idx = b->qs[i] | (((b->qh[i >> 2] >> (2 * (i & 3))) & 3) << 8);
    const uint64_t g = KR_TBL(iq2s_grid)[idx];
    for (int k = 0; k < 8; ++k) {
      const int v = grid_byte(g, k);
      s.q[8 * l + k] = (int8_t)(((signs[i] >> k) & 1) ? -v : v);
    }
  }
  const uint8_t sc = b->scales[j];
  set_scales(s, 2 * (sc & 0xF) + 1, 2 * (sc >> 4) + 1, load_f16(&b->d) * 0.125f);
}

template <>
KR_HD void unpack32<(int)GgmlType::IQ3_XXS>(const uint8_t* row, int64_t ib, Sub32& s) {
  const block_iq3_xxs* b = reinterpret_cast<const block_iq3_xxs*>(row) + ib / 8;
  const int j = (int)(ib % 8);
  const uint32_t aux = load_u32(b->qs + QK_K / 4 + 4 * j);
  for (int l = 0; l < 4; ++l) {
    const uint8_t signs = KR_TBL(ksigns_iq2xs)[(aux >> (7 * l)) & 127];
    const uint32_t r0 = KR_TBL(iq3xxs_grid)[b->qs[8 * j + 2 * l]];
    const uint32_t r1 = KR_TBL(iq3xxs_grid)[b->qs[8 * j + 2 * l + 1]];
    for (int k = 0; k < 4; ++k) {
      const int v0 = grid_byte(r0, k), v1 = grid_byte(r1, k);
      s.q[8 * l + k] = (int8_t)(((signs >> k) & 1) ? -v0 : v0);
      s.q[8 * l + 4 + k] = (int8_t)(((signs >> (k + 4)) & 1) ? -v1 : v1);
    }
  }
  const int sc = 2 * (int)(aux >> 28) + 1;  // (0.5 + s) * 0.5 = (2s + 1) / 4
  set_scales(s, sc, sc, load_f16(&b->d) * 0.25f);
}

template <>
KR_HD void unpack32<(int)GgmlType::IQ3_S>(const uint8_t* row, int64_t ib, Sub32& s) {
  const block_iq3_s* b = reinterpret_cast<const block_iq3_s*>(row) + ib / 8;
  const int j = (int)(ib % 8);
  for (int k = 0; k < 8; ++k) {
    const int i = 8 * j + k;
    const int idx = b->qs[i] | (((b->qh[i >> 3] >> (i & 7)) & 1) << 8);
    const uint32_t g = KR_TBL(iq3s_grid)[idx];
    for (int m = 0; m < 4; ++m) {
      const int e = 4 * i + m, v = grid_byte(g, m);
      s.q[4 * k + m] = (int8_t)(((b->signs[e >> 3] >> (e & 7)) & 1) ? -v : v);
    }
  }
  const int sc = 1 + 2 * ((b->scales[j >> 1] >> (4 * (j & 1))) & 0xF);
  set_scales(s, sc, sc, load_f16(&b->d));
}

// IQ1 weights are dl * (g + delta) with delta = +-1/8: q = 8g +- 1 and d carries the 1/8.
template <>
KR_HD void unpack32<(int)GgmlType::IQ1_S>(const uint8_t* row, int64_t ib, Sub32& s) {
  const block_iq1_s* b = reinterpret_cast<const block_iq1_s*>(row) + ib / 8;
  const int j = (int)(ib % 8);
  const uint16_t qh = load_u16(&b->qh[j]);
  const int dl = (qh & 0x8000) ? -1 : 1;
  for (int l = 0; l < 4; ++l) {
    const int idx = b->qs[4 * j + l] | (((qh >> (3 * l)) & 7) << 8);
    const uint64_t g = KR_TBL(iq1s_grid)[idx];
    for (int k = 0; k < 8; ++k) s.q[8 * l + k] = (int8_t)(8 * grid_sbyte(g, k) + dl);
  }
  const int sc = 2 * ((qh >> 12) & 7) + 1;
  set_scales(s, sc, sc, load_f16(&b->d) * 0.125f);
}

template <>
KR_HD void unpack32<(int)GgmlType::IQ1_M>(const uint8_t* row, int64_t ib, Sub32& s) {
  const block_iq1_m* b = reinterpret_cast<const block_iq1_m*>(row) + ib / 8;
  const int j = (int)(ib % 8);
  uint16_t sc[4];
  for (int i = 0; i < 4; ++i) sc[i] = load_u16(b->scales + 2 * i);
  const uint16_t dbits = (uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) |
                                    (sc[3] & 0xF000));
  for (int l = 0; l < 4; ++l) {
    const int m = 4 * j + l;
    const int nib = (b->qh[m >> 1] >> (4 * (m & 1))) & 0xF;
    const int idx = b->qs[m] | ((nib & 7) << 8);
    const int dl = (nib & 8) ? -1 : 1;
    const uint64_t g = KR_TBL(iq1s_grid)[idx];
    for (int k = 0; k < 8; ++k) s.q[8 * l + k] = (int8_t)(8 * grid_sbyte(g, k) + dl);
  }
  const int k0 = 2 * j, k1 = 2 * j + 1;
  const int s0 = (sc[k0 >> 2] >> (3 * (k0 & 3))) & 7, s1 = (sc[k1 >> 2] >> (3 * (k1 & 3))) & 7;
  set_scales(s, 2 * s0 + 1, 2 * s1 + 1, fp16_to_fp32(dbits) * 0.125f);
}

template <>
KR_HD void unpack32<(int)GgmlType::IQ4_XS>(const uint8_t* row, int64_t ib, Sub32& s) {
  const block_iq4_xs* b = reinterpret_cast<const block_iq4_xs*>(row) + ib / 8;
  const int j = (int)(ib % 8);
  const uint8_t* q = b->qs + 16 * j;
  for (int l = 0; l < 16; ++l) {
    s.q[l] = KR_TBL(kvalues_iq4nl)[q[l] & 0xF];
    s.q[16 + l] = KR_TBL(kvalues_iq4nl)[q[l] >> 4];
  }
  const int lo = (b->scales_l[j >> 1] >> (4 * (j & 1))) & 0xF;
  const int hi = (load_u16(&b->scales_h) >> (2 * j)) & 3;
  const int sc = (lo | (hi << 4)) - 32;
  set_scales(s, sc, sc, load_f16(&b->d));
}

template <>
KR_HD void unpack32<(int)GgmlType::TQ1_0>(const uint8_t* row, int64_t ib, Sub32& s) {
  const block_tq1_0* b = reinterpret_cast<const block_tq1_0*>(row) + ib / 8;
  const int j = (int)(ib % 8);
  const int pow3[5] = {1, 3, 9, 27, 81};
  for (int l = 0; l < 32; ++l) {
    const int e = 32 * j + l;
    int t;
    if (e < 160) t = tq1_trit(b->qs[e & 31], pow3[e >> 5]);
    else if (e < 240) t = tq1_trit(b->qs[32 + ((e - 160) & 15)], pow3[(e - 160) >> 4]);
    else t = tq1_trit(b->qh[(e - 240) & 3], pow3[(e - 240) >> 2]);
    s.q[l] = (int8_t)t;
  }
  set_scales(s, 1, 1, load_f16(&b->d));
}

template <>
KR_HD void unpack32<(int)GgmlType::TQ2_0>(const uint8_t* row, int64_t ib, Sub32& s) {
  const block_tq2_0* b = reinterpret_cast<const block_tq2_0*>(row) + ib / 8;
  const int j = (int)(ib % 8), g = j >> 2, sh = 2 * (j & 3);
  for (int l = 0; l < 32; ++l) s.q[l] = (int8_t)(((b->qs[g * 32 + l] >> sh) & 3) - 1);
  set_scales(s, 1, 1, load_f16(&b->d));
}

// Four int8 products summed onto c (the device's dp4a; exact integer arithmetic on both sides).
KR_HD int dot4(int a, int b, int c) {
#if defined(__CUDA_ARCH__)
  return __dp4a(a, b, c);
#else
  for (int k = 0; k < 4; ++k) c += (int)(int8_t)(a >> (8 * k)) * (int)(int8_t)(b >> (8 * k));
  return c;
#endif
}

KR_HD int pack4(const int8_t* q) {
  return (int)((uint32_t)(uint8_t)q[0] | ((uint32_t)(uint8_t)q[1] << 8) | ((uint32_t)(uint8_t)q[2] << 16) |
               ((uint32_t)(uint8_t)q[3] << 24));
}

// The activation block's codes as 8 words (qs sits 4-byte aligned at offset 8 of the 40-byte block).
KR_HD int act_word(const block_q8a32& a, int i) {
#if defined(__CUDA_ARCH__)
  return reinterpret_cast<const int*>(a.qs)[i];
#else
  return (int)load_u32(a.qs + 4 * i);
#endif
}

// The sub-block's dot with one activation block: exact int32 dots (dp4a), then three float products.
KR_HD float sub_dot(const Sub32& s, const block_q8a32& a) {
  int d0 = 0, d1 = 0, a0 = 0, a1 = 0;
  const bool mins = s.dm != 0.f;
  for (int i = 0; i < 4; ++i) {
    const int w0 = act_word(a, i), w1 = act_word(a, 4 + i);
    d0 = dot4(pack4(s.q + 4 * i), w0, d0);
    d1 = dot4(pack4(s.q + 16 + 4 * i), w1, d1);
    if (mins) {
      a0 = dot4(0x01010101, w0, a0);
      a1 = dot4(0x01010101, w1, a1);
    }
  }
  // (d_a * d_w) * isum: the CPU kernels' association for the formats without mins.
  float r = (a.d * s.d) * (float)(s.sc[0] * d0 + s.sc[1] * d1);
  if (mins) r -= (a.d * s.dm) * (float)(s.mn[0] * a0 + s.mn[1] * a1);
  return r;
}

// The formats with an integer GPU path, as an X-macro so host-only launchers can switch on them too.
#define KR_GPU_FORMATS(X) \
  X(Q4_0) X(Q8_0) X(Q2_K) X(Q3_K) X(Q4_K) X(Q5_K) X(Q6_K) X(IQ2_XXS) X(IQ2_XS) X(IQ2_S) X(IQ3_XXS) X(IQ3_S) \
  X(IQ1_S) X(IQ1_M) X(IQ4_XS) X(TQ1_0) X(TQ2_0)

// Calls f.template run<T>() for the format; false for a type without an integer GPU path.
template <class F>
KR_HD bool dispatch_type(int32_t t, F& f) {
  switch (static_cast<GgmlType>(t)) {
#define KR_CASE(name) case GgmlType::name: f.template run<(int)GgmlType::name>(); return true;
    KR_GPU_FORMATS(KR_CASE)
#undef KR_CASE
    default: return false;
  }
}

KR_HD bool gpu_dot_supported(int32_t t) {
  switch (static_cast<GgmlType>(t)) {
#define KR_CASE(name) case GgmlType::name: return true;
    KR_GPU_FORMATS(KR_CASE)
#undef KR_CASE
    default: return false;
  }
}

}  // namespace kr::gk
