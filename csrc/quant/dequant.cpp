// Scalar row dequantization over decode.h: one loop per format so the per-block switch is hoisted
// out of the hot loop. Compiled without FMA flags, so the float results are gguf's bit for bit.
#include "quant/dequant.h"

#include <string>

#include "quant/decode.h"

namespace kr {
namespace {

template <class Block, void (*Decode)(const Block*, float*)>
void row_loop(const void* src, float* dst, int64_t n_blocks, int qk) {
  const Block* b = static_cast<const Block*>(src);
  for (int64_t i = 0; i < n_blocks; ++i) Decode(b + i, dst + i * qk);
}

}  // namespace

void dequantize_row(int32_t type, const void* src, float* dst, int64_t n) {
  const TypeTraits tt = type_traits(type);
  KR_CHECK(has_decoder(type), "no dequantizer for ggml type " + std::to_string(type));
  KR_CHECK(n >= 0 && n % tt.block_size == 0,
           std::string("row length ") + std::to_string(n) + " is not a multiple of the " + tt.name +
               " block size " + std::to_string(tt.block_size));
  const int64_t nb = n / tt.block_size;
  const int qk = tt.block_size;
  switch (static_cast<GgmlType>(type)) {
#define KR_ROW(T, B, F) \
  case GgmlType::T: row_loop<B, F>(src, dst, nb, qk); return;
    KR_ROW(F32, float, decode_f32)
    KR_ROW(F16, f16_bits, decode_f16)
    KR_ROW(BF16, uint16_t, decode_bf16)
    KR_ROW(Q4_0, block_q4_0, decode_q4_0)
    KR_ROW(Q4_1, block_q4_1, decode_q4_1)
    KR_ROW(Q5_0, block_q5_0, decode_q5_0)
    KR_ROW(Q5_1, block_q5_1, decode_q5_1)
    KR_ROW(Q8_0, block_q8_0, decode_q8_0)
    KR_ROW(Q2_K, block_q2_K, decode_q2_K)
    KR_ROW(Q3_K, block_q3_K, decode_q3_K)
    KR_ROW(Q4_K, block_q4_K, decode_q4_K)
    KR_ROW(Q5_K, block_q5_K, decode_q5_K)
    KR_ROW(Q6_K, block_q6_K, decode_q6_K)
    KR_ROW(Q8_K, block_q8_K, decode_q8_K)
    KR_ROW(IQ2_XXS, block_iq2_xxs, decode_iq2_xxs)
    KR_ROW(IQ2_XS, block_iq2_xs, decode_iq2_xs)
    KR_ROW(IQ2_S, block_iq2_s, decode_iq2_s)
    KR_ROW(IQ3_XXS, block_iq3_xxs, decode_iq3_xxs)
    KR_ROW(IQ3_S, block_iq3_s, decode_iq3_s)
    KR_ROW(IQ1_S, block_iq1_s, decode_iq1_s)
    KR_ROW(IQ1_M, block_iq1_m, decode_iq1_m)
    KR_ROW(IQ4_NL, block_iq4_nl, decode_iq4_nl)
    KR_ROW(IQ4_XS, block_iq4_xs, decode_iq4_xs)
    KR_ROW(TQ1_0, block_tq1_0, decode_tq1_0)
    KR_ROW(TQ2_0, block_tq2_0, decode_tq2_0)
    KR_ROW(MXFP4, block_mxfp4, decode_mxfp4)
#undef KR_ROW
    default: break;
  }
  fail("no dequantizer for ggml type " + std::to_string(type));
}

}  // namespace kr
