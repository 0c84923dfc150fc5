// Streaming-read bandwidth probe: the roofline the gemv benchmark is judged against, measured in the
// same process and with the same thread pool as the kernels.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <cstdint>
#include <memory>
#include <vector>

#include "common.h"
#include "cpu/cpu_features.h"
#include "cpu/gemv.h"
#include "cpu/threadpool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace kr {
namespace {

// 32-byte loads, four independent chains: a scalar loop is load-issue bound below what the SIMD
// kernels stream, which would make the roofline too low. Entered only after has_avx2().
#if defined(__x86_64__)
__attribute__((target("avx2"))) uint64_t sum_avx2(const uint64_t* p, size_t m) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 16 <= m; i += 16) {
    a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i*)(p + i)));
    a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i*)(p + i + 4)));
    a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i*)(p + i + 8)));
    a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i*)(p + i + 12)));
  }
  alignas(32) uint64_t t[4];
  _mm256_store_si256((__m256i*)t, _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
  uint64_t s = t[0] + t[1] + t[2] + t[3];
  for (; i < m; ++i) s += p[i];
  return s;
}
#endif

uint64_t sum_scalar(const uint64_t* p, size_t m) {
  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
  size_t i = 0;
  for (; i + 8 <= m; i += 8) {
    a0 += p[i]; a1 += p[i + 1]; a2 += p[i + 2]; a3 += p[i + 3];
    a4 += p[i + 4]; a5 += p[i + 5]; a6 += p[i + 6]; a7 += p[i + 7];
  }
  for (; i < m; ++i) a0 += p[i];
  return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

}  // namespace

double membw_read_gbs(size_t nbytes, int repeat) {
  KR_CHECK(nbytes >= (1u << 20), "membw probe needs at least 1 MiB");
  KR_CHECK(repeat >= 1, "repeat must be >= 1");
  constexpr size_t kSlices = 256;
  // Equal slices of a multiple of 64 bytes, so every slice starts 64-byte aligned.
  const size_t per = (nbytes / sizeof(uint64_t) + kSlices - 1) / kSlices / 8 * 8 + 8;
  const size_t n = kSlices * per;
  constexpr size_t kHuge = 2u << 20;
  const size_t alloc = (n * sizeof(uint64_t) + kHuge - 1) / kHuge * kHuge;
  std::unique_ptr<uint64_t, void (*)(void*)> buf((uint64_t*)std::aligned_alloc(kHuge, alloc), std::free);
  KR_CHECK(buf != nullptr, "membw probe: out of memory");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // numpy asks for huge pages on large arrays too; with 4 KiB pages TLB misses cut the read rate
  // well below what the kernels reach on numpy-held weights.
  madvise(buf.get(), alloc, MADV_HUGEPAGE);
#endif
  const bool simd = cpu_features().has_avx2();
  parallel_for(kSlices, [&](size_t s, int) {  // first touch from the pool, as the weights would be
    for (size_t i = s * per; i < (s + 1) * per; ++i) buf.get()[i] = i;
  });
  std::vector<uint64_t> sink(kSlices);
  double best = 0.0;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(kSlices, [&](size_t s, int) {
      const uint64_t* p = buf.get() + s * per;
      const size_t m = per;
#if defined(__x86_64__)
      sink[s] = simd ? sum_avx2(p, m) : sum_scalar(p, m);
#else
      sink[s] = sum_scalar(p, m);
#endif
    });
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, (double)(n * sizeof(uint64_t)) / dt / 1e9);
  }
  volatile uint64_t keep = 0;
  for (uint64_t v : sink) keep = keep + v;
  (void)keep;
  return best;
}

}  // namespace kr
