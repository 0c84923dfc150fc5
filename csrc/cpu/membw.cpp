// Streaming-read bandwidth probe: the roofline the gemv benchmark is judged against, measured in the
// same process and with the same thread pool as the kernels.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "common.h"
#include "cpu/gemv.h"
#include "cpu/threadpool.h"

namespace kr {

double membw_read_gbs(size_t nbytes, int repeat) {
  KR_CHECK(nbytes >= (1u << 20), "membw probe needs at least 1 MiB");
  KR_CHECK(repeat >= 1, "repeat must be >= 1");
  const size_t n = nbytes / sizeof(uint64_t);
  std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);
  constexpr size_t kSlices = 256;
  const size_t per = (n + kSlices - 1) / kSlices;
  parallel_for(kSlices, [&](size_t s, int) {  // first touch from the pool, as the weights would be
    for (size_t i = s * per; i < std::min(n, (s + 1) * per); ++i) buf[i] = i;
  });
  std::vector<uint64_t> sink(kSlices);
  double best = 0.0;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(kSlices, [&](size_t s, int) {
      const uint64_t* p = buf.get() + s * per;
      const size_t m = std::min(n, (s + 1) * per) - std::min(n, s * per);
      uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
      size_t i = 0;
      for (; i + 8 <= m; i += 8) {
        a0 += p[i]; a1 += p[i + 1]; a2 += p[i + 2]; a3 += p[i + 3];
        a4 += p[i + 4]; a5 += p[i + 5]; a6 += p[i + 6]; a7 += p[i + 7];
      }
      for (; i < m; ++i) a0 += p[i];
      sink[s] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
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
