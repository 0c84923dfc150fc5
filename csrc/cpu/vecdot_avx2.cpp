// AVX2+FMA+F16C build of the x86 dot kernels (maddubs/madd integer dots).
#include "cpu/vecdot_x86_iq_scaled.h"

namespace kr {
const VecDotTable& vecdot_table_avx2() {
  static const VecDotTable t = make_x86_table();
  return t;
}
}  // namespace kr
