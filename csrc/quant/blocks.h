// GGUF block layouts, defined once for CPU and CUDA code. Field order and sizes follow
// ggml-common.h; every struct's size is checked at compile time (a layout slip corrupts silently).
#pragma once
#include <cstdint>

#include "common.h"

namespace kr {

using f16_bits = uint16_t;  // IEEE half stored as raw bits; see half.h for conversion

// ggml_type ids (gguf.GGMLQuantizationType).
enum class GgmlType : int32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

constexpr int QK4_0 = 32, QK4_1 = 32, QK5_0 = 32, QK5_1 = 32, QK8_0 = 32, QK8_1 = 32;
constexpr int QK4_NL = 32, QK_MXFP4 = 32;
constexpr int QK_K = 256;
constexpr int K_SCALE_SIZE = 12;

#pragma pack(push, 1)
struct block_q4_0 { f16_bits d; uint8_t qs[QK4_0 / 2]; };
struct block_q4_1 { f16_bits d; f16_bits m; uint8_t qs[QK4_1 / 2]; };
struct block_q5_0 { f16_bits d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; };
struct block_q5_1 { f16_bits d; f16_bits m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; };
struct block_q8_0 { f16_bits d; int8_t qs[QK8_0]; };
struct block_q8_1 { f16_bits d; f16_bits s; int8_t qs[QK8_1]; };  // s = d * sum(qs)

struct block_q2_K { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; f16_bits d; f16_bits dmin; };
struct block_q3_K { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; f16_bits d; };
struct block_q4_K { f16_bits d; f16_bits dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; };
struct block_q5_K {
  f16_bits d; f16_bits dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2];
};
struct block_q6_K { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; f16_bits d; };
struct block_q8_K { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; };  // activations only

struct block_iq2_xxs { f16_bits d; uint16_t qs[QK_K / 8]; };
struct block_iq2_xs { f16_bits d; uint16_t qs[QK_K / 8]; uint8_t scales[QK_K / 32]; };
struct block_iq2_s { f16_bits d; uint8_t qs[QK_K / 4]; uint8_t qh[QK_K / 32]; uint8_t scales[QK_K / 32]; };
struct block_iq3_xxs { f16_bits d; uint8_t qs[3 * QK_K / 8]; };
struct block_iq3_s {
  f16_bits d; uint8_t qs[QK_K / 4]; uint8_t qh[QK_K / 32]; uint8_t signs[QK_K / 8]; uint8_t scales[QK_K / 64];
};
struct block_iq1_s { f16_bits d; uint8_t qs[QK_K / 8]; uint16_t qh[QK_K / 32]; };
struct block_iq1_m { uint8_t qs[QK_K / 8]; uint8_t qh[QK_K / 16]; uint8_t scales[QK_K / 32]; };
struct block_iq4_nl { f16_bits d; uint8_t qs[QK4_NL / 2]; };
struct block_iq4_xs { f16_bits d; uint16_t scales_h; uint8_t scales_l[QK_K / 64]; uint8_t qs[QK_K / 2]; };
struct block_tq1_0 { uint8_t qs[(QK_K - 4 * QK_K / 64) / 5]; uint8_t qh[QK_K / 64]; f16_bits d; };
struct block_tq2_0 { uint8_t qs[QK_K / 4]; f16_bits d; };
struct block_mxfp4 { uint8_t e; uint8_t qs[QK_MXFP4 / 2]; };
#pragma pack(pop)

static_assert(sizeof(block_q4_0) == 18, "q4_0 size");
static_assert(sizeof(block_q4_1) == 20, "q4_1 size");
static_assert(sizeof(block_q5_0) == 22, "q5_0 size");
static_assert(sizeof(block_q5_1) == 24, "q5_1 size");
static_assert(sizeof(block_q8_0) == 34, "q8_0 size");
static_assert(sizeof(block_q8_1) == 36, "q8_1 size");
static_assert(sizeof(block_q2_K) == 84, "q2_K size");
static_assert(sizeof(block_q3_K) == 110, "q3_K size");
static_assert(sizeof(block_q4_K) == 144, "q4_K size");
static_assert(sizeof(block_q5_K) == 176, "q5_K size");
static_assert(sizeof(block_q6_K) == 210, "q6_K size");
static_assert(sizeof(block_q8_K) == 292, "q8_K size");
static_assert(sizeof(block_iq2_xxs) == 66, "iq2_xxs size");
static_assert(sizeof(block_iq2_xs) == 74, "iq2_xs size");
static_assert(sizeof(block_iq2_s) == 82, "iq2_s size");
static_assert(sizeof(block_iq3_xxs) == 98, "iq3_xxs size");
static_assert(sizeof(block_iq3_s) == 110, "iq3_s size");
static_assert(sizeof(block_iq1_s) == 50, "iq1_s size");
static_assert(sizeof(block_iq1_m) == 56, "iq1_m size");
static_assert(sizeof(block_iq4_nl) == 18, "iq4_nl size");
static_assert(sizeof(block_iq4_xs) == 136, "iq4_xs size");
static_assert(sizeof(block_tq1_0) == 54, "tq1_0 size");
static_assert(sizeof(block_tq2_0) == 66, "tq2_0 size");
static_assert(sizeof(block_mxfp4) == 17, "mxfp4 size");

// Block geometry per type: weights per block and bytes per block (0/0 for unknown ids).
struct TypeTraits {
  const char* name;
  int block_size;
  int type_size;
};

KR_HOST_DEVICE TypeTraits type_traits(int32_t t) {
  switch (static_cast<GgmlType>(t)) {
    case GgmlType::F32: return {"F32", 1, 4};
    case GgmlType::F16: return {"F16", 1, 2};
    case GgmlType::BF16: return {"BF16", 1, 2};
    case GgmlType::Q4_0: return {"Q4_0", QK4_0, sizeof(block_q4_0)};
    case GgmlType::Q4_1: return {"Q4_1", QK4_1, sizeof(block_q4_1)};
    case GgmlType::Q5_0: return {"Q5_0", QK5_0, sizeof(block_q5_0)};
    case GgmlType::Q5_1: return {"Q5_1", QK5_1, sizeof(block_q5_1)};
    case GgmlType::Q8_0: return {"Q8_0", QK8_0, sizeof(block_q8_0)};
    case GgmlType::Q8_1: return {"Q8_1", QK8_1, sizeof(block_q8_1)};
    case GgmlType::Q2_K: return {"Q2_K", QK_K, sizeof(block_q2_K)};
    case GgmlType::Q3_K: return {"Q3_K", QK_K, sizeof(block_q3_K)};
    case GgmlType::Q4_K: return {"Q4_K", QK_K, sizeof(block_q4_K)};
    case GgmlType::Q5_K: return {"Q5_K", QK_K, sizeof(block_q5_K)};
    case GgmlType::Q6_K: return {"Q6_K", QK_K, sizeof(block_q6_K)};
    case GgmlType::Q8_K: return {"Q8_K", QK_K, sizeof(block_q8_K)};
    case GgmlType::IQ2_XXS: return {"IQ2_XXS", QK_K, sizeof(block_iq2_xxs)};
    case GgmlType::IQ2_XS: return {"IQ2_XS", QK_K, sizeof(block_iq2_xs)};
    case GgmlType::IQ2_S: return {"IQ2_S", QK_K, sizeof(block_iq2_s)};
    case GgmlType::IQ3_XXS: return {"IQ3_XXS", QK_K, sizeof(block_iq3_xxs)};
    case GgmlType::IQ3_S: return {"IQ3_S", QK_K, sizeof(block_iq3_s)};
    case GgmlType::IQ1_S: return {"IQ1_S", QK_K, sizeof(block_iq1_s)};
    case GgmlType::IQ1_M: return {"IQ1_M", QK_K, sizeof(block_iq1_m)};
    case GgmlType::IQ4_NL: return {"IQ4_NL", QK4_NL, sizeof(block_iq4_nl)};
    case GgmlType::IQ4_XS: return {"IQ4_XS", QK_K, sizeof(block_iq4_xs)};
    case GgmlType::TQ1_0: return {"TQ1_0", QK_K, sizeof(block_tq1_0)};
    case GgmlType::TQ2_0: return {"TQ2_0", QK_K, sizeof(block_tq2_0)};
    case GgmlType::MXFP4: return {"MXFP4", QK_MXFP4, sizeof(block_mxfp4)};
    default: return {nullptr, 0, 0};
  }
}

}  // namespace kr
