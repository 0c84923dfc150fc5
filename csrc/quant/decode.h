// Per-format block decoders shared by CPU and CUDA code: decode_<fmt>(block, y) writes the block's
// QK floats with the same float32 operation order as gguf-py's dequantize_blocks (ggml semantics),
// so results are bit-identical to gguf.quants.dequantize on every path.
#pragma once
#include <cstdint>
#include <cstring>

#include "common.h"
#include "quant/blocks.h"
#include "quant/half.h"
#include "quant/iq_tables.h"

namespace kr {

// The product in gguf's d*q + m (Q4_1, Q5_1) and dl*q - dmin*m (Q2_K, Q4_K, Q5_K). Every such
// product is exact in float32 (an f16 scale has 11 significant bits, times at most 6+5 bits of
// integers), so a fused multiply-add rounds to the same float as gguf's separate multiply and add:
// host builds with -mfma (the _avx2/_avx512 files) and nvcc's default contraction stay bit-exact.
// Device code still asks for a separately rounded product, so this holds even if a format changes.
KR_HOST_DEVICE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// Unaligned little-endian loads (blocks are packed, so u16/u32 fields may be misaligned).
KR_HOST_DEVICE uint16_t load_u16(const void* p) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  return (uint16_t)(b[0] | (b[1] << 8));
}
KR_HOST_DEVICE uint32_t load_u32(const void* p) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
}
KR_HOST_DEVICE float load_f16(const void* p) { return fp16_to_fp32(load_u16(p)); }

// Byte j of a packed grid row.
KR_HOST_DEVICE int grid_byte(uint64_t row, int j) { return (int)((row >> (8 * j)) & 0xFF); }
KR_HOST_DEVICE int grid_sbyte(uint64_t row, int j) { return (int)(int8_t)((row >> (8 * j)) & 0xFF); }

// ---- plain and legacy 32-weight formats

KR_HOST_DEVICE void decode_f32(const float* b, float* y) { y[0] = bits_to_f32(load_u32(b)); }
KR_HOST_DEVICE void decode_f16(const f16_bits* b, float* y) { y[0] = load_f16(b); }
KR_HOST_DEVICE void decode_bf16(const uint16_t* b, float* y) { y[0] = bf16_to_fp32(load_u16(b)); }

KR_HOST_DEVICE void decode_q4_0(const block_q4_0* b, float* y) {
  const float d = load_f16(&b->d);
  for (int j = 0; j < QK4_0 / 2; ++j) {
    y[j] = d * (float)((b->qs[j] & 0xF) - 8);
    y[j + QK4_0 / 2] = d * (float)((b->qs[j] >> 4) - 8);
  }
}

KR_HOST_DEVICE void decode_q4_1(const block_q4_1* b, float* y) {
  const float d = load_f16(&b->d), m = load_f16(&b->m);
  for (int j = 0; j < QK4_1 / 2; ++j) {
    y[j] = mul_rn(d, (float)(b->qs[j] & 0xF)) + m;
    y[j + QK4_1 / 2] = mul_rn(d, (float)(b->qs[j] >> 4)) + m;
  }
}

KR_HOST_DEVICE void decode_q5_0(const block_q5_0* b, float* y) {
  const float d = load_f16(&b->d);
  const uint32_t qh = load_u32(b->qh);
  for (int j = 0; j < QK5_0 / 2; ++j) {
    const int lo = (b->qs[j] & 0xF) | (int)(((qh >> j) & 1u) << 4);
    const int hi = (b->qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
    y[j] = d * (float)(lo - 16);
    y[j + QK5_0 / 2] = d * (float)(hi - 16);
  }
}

KR_HOST_DEVICE void decode_q5_1(const block_q5_1* b, float* y) {
  const float d = load_f16(&b->d), m = load_f16(&b->m);
  const uint32_t qh = load_u32(b->qh);
  for (int j = 0; j < QK5_1 / 2; ++j) {
    const int lo = (b->qs[j] & 0xF) | (int)(((qh >> j) & 1u) << 4);
    const int hi = (b->qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
    y[j] = mul_rn(d, (float)lo) + m;
    y[j + QK5_1 / 2] = mul_rn(d, (float)hi) + m;
  }
}

KR_HOST_DEVICE void decode_q8_0(const block_q8_0* b, float* y) {
  const float d = load_f16(&b->d);
  for (int j = 0; j < QK8_0; ++j) y[j] = (float)b->qs[j] * d;
}

// ---- k-quants (256-weight super-blocks)

KR_HOST_DEVICE void decode_q2_K(const block_q2_K* b, float* y) {
  const float d = load_f16(&b->d), dmin = load_f16(&b->dmin);
  for (int k = 0; k < QK_K / 16; ++k) {  // weight e = 16k + i: half g, 2-bit plane s, lane l
    const int g = k >> 3, s = (k >> 1) & 3, l0 = (k & 1) * 16;
    const uint8_t sc = b->scales[k];
    const float dl = d * (float)(sc & 0xF), ml = mul_rn(dmin, (float)(sc >> 4));
    const uint8_t* q = b->qs + g * 32 + l0;
    for (int i = 0; i < 16; ++i) y[16 * k + i] = mul_rn(dl, (float)((q[i] >> (2 * s)) & 3)) - ml;
  }
}

// 6-bit scale k of Q3_K: low 4 bits from bytes 0..7, high 2 bits from bytes 8..11.
KR_HOST_DEVICE int q3_K_scale(const uint8_t* sc, int k) {
  const int lo = (sc[k & 7] >> (4 * (k >> 3))) & 0xF;
  const int hi = (sc[8 + (k & 3)] >> (2 * (k >> 2))) & 3;
  return (lo | (hi << 4)) - 32;
}

KR_HOST_DEVICE void decode_q3_K(const block_q3_K* b, float* y) {
  const float d = load_f16(&b->d);
  for (int k = 0; k < QK_K / 16; ++k) {
    const float dl = d * (float)q3_K_scale(b->scales, k);
    const int g = k >> 3, s = (k >> 1) & 3, l0 = (k & 1) * 16, hshift = k >> 1;
    const uint8_t* q = b->qs + g * 32 + l0;
    const uint8_t* hm = b->hmask + l0;
    for (int i = 0; i < 16; ++i) {
      const int lo = (q[i] >> (2 * s)) & 3;
      y[16 * k + i] = dl * (float)(lo - (((hm[i] >> hshift) & 1) ? 0 : 4));
    }
  }
}

// 6-bit scale and min of sub-block j (0..7) of Q4_K / Q5_K.
KR_HOST_DEVICE void k4_scale_min(const uint8_t* s, int j, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 2) & 0x30);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30);
  }
}

KR_HOST_DEVICE void decode_q4_K(const block_q4_K* b, float* y) {
  const float d = load_f16(&b->d), dmin = load_f16(&b->dmin);
  for (int sb = 0; sb < 8; ++sb) {
    int sc, mn;
    k4_scale_min(b->scales, sb, &sc, &mn);
    const float dl = d * (float)sc, ml = mul_rn(dmin, (float)mn);
    const uint8_t* q = b->qs + (sb >> 1) * 32;
    const int shift = 4 * (sb & 1);
    for (int l = 0; l < 32; ++l) y[sb * 32 + l] = mul_rn(dl, (float)((q[l] >> shift) & 0xF)) - ml;
  }
}

KR_HOST_DEVICE void decode_q5_K(const block_q5_K* b, float* y) {
  const float d = load_f16(&b->d), dmin = load_f16(&b->dmin);
  for (int sb = 0; sb < 8; ++sb) {
    int sc, mn;
    k4_scale_min(b->scales, sb, &sc, &mn);
    const float dl = d * (float)sc, ml = mul_rn(dmin, (float)mn);
    const uint8_t* q = b->qs + (sb >> 1) * 32;
    const int shift = 4 * (sb & 1);
    for (int l = 0; l < 32; ++l) {
      const int v = ((q[l] >> shift) & 0xF) | (((b->qh[l] >> sb) & 1) << 4);
      y[sb * 32 + l] = mul_rn(dl, (float)v) - ml;
    }
  }
}

KR_HOST_DEVICE void decode_q6_K(const block_q6_K* b, float* y) {
  const float d = load_f16(&b->d);
  for (int k = 0; k < QK_K / 16; ++k) {
    const float dl = d * (float)b->scales[k];
    const int g = k >> 3, r0 = (k & 7) * 16;  // weight e = 128g + r, r = r0 + i
    const uint8_t* ql = b->ql + g * 64 + (r0 & 63);
    const uint8_t* qh = b->qh + g * 32 + (r0 & 31);
    const int lshift = 4 * (r0 >> 6), hshift = 2 * (r0 >> 5);
    for (int i = 0; i < 16; ++i) {
      const int v = ((ql[i] >> lshift) & 0xF) | (((qh[i] >> hshift) & 3) << 4);
      y[16 * k + i] = dl * (float)(v - 32);
    }
  }
}

KR_HOST_DEVICE void decode_q8_K(const block_q8_K* b, float* y) {
  const float d = bits_to_f32(load_u32(&b->d));
  for (int j = 0; j < QK_K; ++j) y[j] = d * (float)b->qs[j];
}

// ---- i-quants

// +1 or -1 from sign bit j, computed without a branch (random sign bits defeat branch prediction).
KR_HOST_DEVICE float sign_of(uint8_t signs, int j) { return 1.0f - 2.0f * (float)((signs >> j) & 1); }

KR_HOST_DEVICE void decode_iq2_xxs(const block_iq2_xxs* b, float* y) {
  const float d = load_f16(&b->d);
  const uint8_t* raw = reinterpret_cast<const uint8_t*>(b->qs);
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    const uint8_t* idx = raw + 8 * ib;  // four grid indices
    const uint32_t aux = load_u32(raw + 8 * ib + 4);
    const float db = d * (0.5f + (float)(aux >> 28)) * 0.25f;
    for (int l = 0; l < 4; ++l) {
      const uint64_t row = KR_TBL(iq2xxs_grid)[idx[l]];
      const uint8_t signs = KR_TBL(ksigns_iq2xs)[(aux >> (7 * l)) & 127];
      for (int j = 0; j < 8; ++j) y[ib * 32 + l * 8 + j] = db * (float)grid_byte(row, j) * sign_of(signs, j);
    }
  }
}

KR_HOST_DEVICE void decode_iq2_xs(const block_iq2_xs* b, float* y) {
  const float d = load_f16(&b->d);
  for (int i = 0; i < QK_K / 8; ++i) {
    const uint16_t q = load_u16(&b->qs[i]);
    const int sc = (b->scales[i >> 2] >> (4 * ((i >> 1) & 1))) & 0xF;
    const float db = d * (0.5f + (float)sc) * 0.25f;
    const uint64_t row = KR_TBL(iq2xs_grid)[q & 511];
    const uint8_t signs = KR_TBL(ksigns_iq2xs)[q >> 9];
    for (int j = 0; j < 8; ++j) y[i * 8 + j] = db * (float)grid_byte(row, j) * sign_of(signs, j);
  }
}

KR_HOST_DEVICE void decode_iq2_s(const block_iq2_s* b, float* y) {
  const float d = load_f16(&b->d);
  const uint8_t* signs = b->qs + QK_K / 8;
  for (int i = 0; i < QK_K / 8; ++i) {
    const int sc = (b->scales[i >> 2] >> (4 * ((i >> 1) & 1))) & 0xF;
    const float db = d * (0.5f + (float)sc) * 0.25f;
    const int idx = b->qs[i] | (((b->qh[i >> 2] >> (2 * (i & 3))) & 3) << 8);
    const uint64_t row = KR_TBL(iq2s_grid)[idx];
    for (int j = 0; j < 8; ++j) y[i * 8 + j] = db * (float)grid_byte(row, j) * sign_of(signs[i], j);
  }
}

KR_HOST_DEVICE void decode_iq3_xxs(const block_iq3_xxs* b, float* y) {
  const float d = load_f16(&b->d);
  const uint8_t* sas = b->qs + QK_K / 4;  // 8 x u32: 4 sign indices + 4-bit scale
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    const uint32_t aux = load_u32(sas + 4 * ib);
    const float db = d * (0.5f + (float)(aux >> 28)) * 0.5f;
    for (int l = 0; l < 4; ++l) {
      const uint8_t signs = KR_TBL(ksigns_iq2xs)[(aux >> (7 * l)) & 127];
      const uint32_t r0 = KR_TBL(iq3xxs_grid)[b->qs[8 * ib + 2 * l]];
      const uint32_t r1 = KR_TBL(iq3xxs_grid)[b->qs[8 * ib + 2 * l + 1]];
      for (int j = 0; j < 4; ++j) {
        y[ib * 32 + l * 8 + j] = db * (float)grid_byte(r0, j) * sign_of(signs, j);
        y[ib * 32 + l * 8 + 4 + j] = db * (float)grid_byte(r1, j) * sign_of(signs, j + 4);
      }
    }
  }
}

KR_HOST_DEVICE void decode_iq3_s(const block_iq3_s* b, float* y) {
  const float d = load_f16(&b->d);
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    const int sc = (b->scales[ib >> 1] >> (4 * (ib & 1))) & 0xF;
    const float db = d * (float)(1 + 2 * sc);
    for (int k = 0; k < 8; ++k) {  // eight 4-weight grid rows per 32 weights
      const int i = ib * 8 + k;
      const int idx = b->qs[i] | (((b->qh[i >> 3] >> (i & 7)) & 1) << 8);
      const uint32_t row = KR_TBL(iq3s_grid)[idx];
      for (int j = 0; j < 4; ++j) {
        const int e = i * 4 + j;
        y[e] = db * (float)grid_byte(row, j) * sign_of(b->signs[e >> 3], e & 7);
      }
    }
  }
}

KR_HOST_DEVICE void decode_iq1_s(const block_iq1_s* b, float* y) {
  const float d = load_f16(&b->d);
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    const uint16_t qh = load_u16(&b->qh[ib]);
    const float dl = d * (float)(2 * ((qh >> 12) & 7) + 1);
    const float delta = (qh & 0x8000) ? -0.125f : 0.125f;
    for (int l = 0; l < 4; ++l) {
      const int idx = b->qs[4 * ib + l] | (((qh >> (3 * l)) & 7) << 8);
      const uint64_t row = KR_TBL(iq1s_grid)[idx];
      for (int j = 0; j < 8; ++j) y[ib * 32 + l * 8 + j] = dl * ((float)grid_sbyte(row, j) + delta);
    }
  }
}

KR_HOST_DEVICE void decode_iq1_m(const block_iq1_m* b, float* y) {
  uint16_t sc[4];
  for (int i = 0; i < 4; ++i) sc[i] = load_u16(b->scales + 2 * i);
  // The f16 super-block scale is spread over the top nibbles of the four scale words.
  const uint16_t dbits = (uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) |
                                    (sc[3] & 0xF000));
  const float d = fp16_to_fp32(dbits);
  for (int m = 0; m < QK_K / 8; ++m) {  // 8-weight groups
    const int k = m >> 1;                // 16-weight scale group
    const int s = (sc[k >> 2] >> (3 * (k & 3))) & 7;
    const float dl = d * (float)(2 * s + 1);
    const int nib = (b->qh[m >> 1] >> (4 * (m & 1))) & 0xF;
    const int idx = b->qs[m] | ((nib & 7) << 8);
    const float delta = (nib & 8) ? -0.125f : 0.125f;
    const uint64_t row = KR_TBL(iq1s_grid)[idx];
    for (int j = 0; j < 8; ++j) y[m * 8 + j] = dl * ((float)grid_sbyte(row, j) + delta);
  }
}

KR_HOST_DEVICE void decode_iq4_nl(const block_iq4_nl* b, float* y) {
  const float d = load_f16(&b->d);
  for (int j = 0; j < QK4_NL / 2; ++j) {
    y[j] = d * (float)KR_TBL(kvalues_iq4nl)[b->qs[j] & 0xF];
    y[j + QK4_NL / 2] = d * (float)KR_TBL(kvalues_iq4nl)[b->qs[j] >> 4];
  }
}

KR_HOST_DEVICE void decode_iq4_xs(const block_iq4_xs* b, float* y) {
  const float d = load_f16(&b->d);
  const uint16_t sh = load_u16(&b->scales_h);
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    const int lo = (b->scales_l[ib >> 1] >> (4 * (ib & 1))) & 0xF;
    const int hi = (sh >> (2 * ib)) & 3;
    const float dl = d * (float)((lo | (hi << 4)) - 32);
    const uint8_t* q = b->qs + 16 * ib;
    for (int l = 0; l < 16; ++l) {
      y[ib * 32 + l] = dl * (float)KR_TBL(kvalues_iq4nl)[q[l] & 0xF];
      y[ib * 32 + 16 + l] = dl * (float)KR_TBL(kvalues_iq4nl)[q[l] >> 4];
    }
  }
}

// ---- ternary and microscaling formats

// Trit p of a base-3 packed byte: multiplying by 3^p (mod 256) rotates trit p to the top.
KR_HOST_DEVICE int tq1_trit(uint8_t byte, int pow3) {
  const uint8_t q = (uint8_t)(byte * pow3);
  return (int)(((uint16_t)q * 3) >> 8) - 1;
}

KR_HOST_DEVICE void decode_tq1_0(const block_tq1_0* b, float* y) {
  const float d = load_f16(&b->d);
  const int pow3[5] = {1, 3, 9, 27, 81};
  for (int p = 0; p < 5; ++p)
    for (int l = 0; l < 32; ++l) y[p * 32 + l] = d * (float)tq1_trit(b->qs[l], pow3[p]);
  for (int p = 0; p < 5; ++p)
    for (int l = 0; l < 16; ++l) y[160 + p * 16 + l] = d * (float)tq1_trit(b->qs[32 + l], pow3[p]);
  for (int p = 0; p < 4; ++p)
    for (int l = 0; l < 4; ++l) y[240 + p * 4 + l] = d * (float)tq1_trit(b->qh[l], pow3[p]);
}

KR_HOST_DEVICE void decode_tq2_0(const block_tq2_0* b, float* y) {
  const float d = load_f16(&b->d);
  for (int g = 0; g < 2; ++g)
    for (int s = 0; s < 4; ++s)
      for (int l = 0; l < 32; ++l) y[g * 128 + s * 32 + l] = d * (float)(((b->qs[g * 32 + l] >> (2 * s)) & 3) - 1);
}

// E8M0 exponent to float, halved (the kvalues are doubled e2m1 values); exact for every byte.
KR_HOST_DEVICE float e8m0_to_fp32_half(uint8_t e) {
  return bits_to_f32(e < 2 ? (0x00200000u << e) : ((uint32_t)(e - 1) << 23));
}

KR_HOST_DEVICE void decode_mxfp4(const block_mxfp4* b, float* y) {
  const float d = e8m0_to_fp32_half(b->e);
  for (int j = 0; j < QK_MXFP4 / 2; ++j) {
    y[j] = d * (float)KR_TBL(kvalues_mxfp4)[b->qs[j] & 0xF];
    y[j + QK_MXFP4 / 2] = d * (float)KR_TBL(kvalues_mxfp4)[b->qs[j] >> 4];
  }
}

// ---- dispatch

// Decodes one block of `type` (type_traits(type).block_size floats). Returns false for a type
// without a decoder; callers validate the type first, so the hot path never sees false.
KR_HOST_DEVICE bool decode_block(int32_t type, const void* blk, float* y) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32: decode_f32(static_cast<const float*>(blk), y); return true;
    case GgmlType::F16: decode_f16(static_cast<const f16_bits*>(blk), y); return true;
    case GgmlType::BF16: decode_bf16(static_cast<const uint16_t*>(blk), y); return true;
    case GgmlType::Q4_0: decode_q4_0(static_cast<const block_q4_0*>(blk), y); return true;
    case GgmlType::Q4_1: decode_q4_1(static_cast<const block_q4_1*>(blk), y); return true;
    case GgmlType::Q5_0: decode_q5_0(static_cast<const block_q5_0*>(blk), y); return true;
    case GgmlType::Q5_1: decode_q5_1(static_cast<const block_q5_1*>(blk), y); return true;
    case GgmlType::Q8_0: decode_q8_0(static_cast<const block_q8_0*>(blk), y); return true;
    case GgmlType::Q2_K: decode_q2_K(static_cast<const block_q2_K*>(blk), y); return true;
    case GgmlType::Q3_K: decode_q3_K(static_cast<const block_q3_K*>(blk), y); return true;
    case GgmlType::Q4_K: decode_q4_K(static_cast<const block_q4_K*>(blk), y); return true;
    case GgmlType::Q5_K: decode_q5_K(static_cast<const block_q5_K*>(blk), y); return true;
    case GgmlType::Q6_K: decode_q6_K(static_cast<const block_q6_K*>(blk), y); return true;
    case GgmlType::Q8_K: decode_q8_K(static_cast<const block_q8_K*>(blk), y); return true;
    case GgmlType::IQ2_XXS: decode_iq2_xxs(static_cast<const block_iq2_xxs*>(blk), y); return true;
    case GgmlType::IQ2_XS: decode_iq2_xs(static_cast<const block_iq2_xs*>(blk), y); return true;
    case GgmlType::IQ2_S: decode_iq2_s(static_cast<const block_iq2_s*>(blk), y); return true;
    case GgmlType::IQ3_XXS: decode_iq3_xxs(static_cast<const block_iq3_xxs*>(blk), y); return true;
    case GgmlType::IQ3_S: decode_iq3_s(static_cast<const block_iq3_s*>(blk), y); return true;
    case GgmlType::IQ1_S: decode_iq1_s(static_cast<const block_iq1_s*>(blk), y); return true;
    case GgmlType::IQ1_M: decode_iq1_m(static_cast<const block_iq1_m*>(blk), y); return true;
    case GgmlType::IQ4_NL: decode_iq4_nl(static_cast<const block_iq4_nl*>(blk), y); return true;
    case GgmlType::IQ4_XS: decode_iq4_xs(static_cast<const block_iq4_xs*>(blk), y); return true;
    case GgmlType::TQ1_0: decode_tq1_0(static_cast<const block_tq1_0*>(blk), y); return true;
    case GgmlType::TQ2_0: decode_tq2_0(static_cast<const block_tq2_0*>(blk), y); return true;
    case GgmlType::MXFP4: decode_mxfp4(static_cast<const block_mxfp4*>(blk), y); return true;
    default: return false;
  }
}

// True for the types decode_block handles (Q8_1 has a layout but no decoder).
KR_HOST_DEVICE bool has_decoder(int32_t type) {
  return type_traits(type).name != nullptr && static_cast<GgmlType>(type) != GgmlType::Q8_1;
}

}  // namespace kr
