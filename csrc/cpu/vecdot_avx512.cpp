// AVX-512 (VL + VNNI) build of the x86 dot kernels: int8 dots use vpdpbusd.
#define KR_VNNI 1
#include "cpu/vecdot_x86_iq_scaled.h"

namespace kr {
const VecDotTable& vecdot_table_avx512() {
  static const VecDotTable t = make_x86_table();
  return t;
}
}  // namespace kr
