// Run-time CPU feature detection: SIMD kernels are compiled with their ISA flags in separate
// files and only entered when the running CPU has the features (see CMakeLists.txt).
#pragma once

namespace kr {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, bmi2 = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false;
  bool has_avx2() const { return avx2 && fma && f16c && bmi2; }  // the _avx2 files build with -mbmi2
  bool has_avx512() const { return has_avx2() && avx512f && avx512bw && avx512vl; }
};

const CpuFeatures& cpu_features();

}  // namespace kr
