// Warp-level reductions, written once for the device (shuffles) and once for the host emulator
// (an array of 32 lane values), with the same xor-butterfly order so both give identical bits.
// Kernel bodies are split into per-lane phases around these reductions: the device runs a phase
// per thread, then reduces with shuffles; the emulator runs the phase for lanes 0..31, then
// reduces the array. Everything else (indexing, decoding, arithmetic) is the same function.
#pragma once
#include <cstdint>

#include "common.h"

#if defined(__CUDACC__)
#define KR_HD __host__ __device__ __forceinline__
#else
#define KR_HD inline
#endif

namespace kr::gk {

constexpr int kWarp = 32;

// Host emulation: v[l] <- v[l] + v[l ^ o] for o = 16, 8, 4, 2, 1 (what __shfl_xor_sync computes).
template <class T>
inline void lanes_sum(T* v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    T old[kWarp];
    for (int l = 0; l < kWarp; ++l) old[l] = v[l];
    for (int l = 0; l < kWarp; ++l) v[l] = old[l] + old[l ^ o];
  }
}

inline float fmax_hd(float a, float b) { return a > b ? a : (b != b ? a : b); }

inline void lanes_max(float* v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    float old[kWarp];
    for (int l = 0; l < kWarp; ++l) old[l] = v[l];
    for (int l = 0; l < kWarp; ++l) v[l] = fmax_hd(old[l], old[l ^ o]);
  }
}

#if defined(__CUDACC__)
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) v = v + __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = v > w ? v : (w != w ? v : w);
  }
  return v;
}
#endif

// Round to nearest, ties to even (the CPU quantizer's _mm_cvtps_epi32 / nearbyint).
KR_HD int round_even(float x) {
#if defined(__CUDA_ARCH__)
  return __float2int_rn(x);
#else
  return (int)__builtin_nearbyintf(x);
#endif
}

KR_HD float abs_hd(float x) { return x < 0.f ? -x : x; }

KR_HD float silu_hd(float g) {
#if defined(__CUDA_ARCH__)
  return g / (1.0f + expf(-g));
#else
  return g / (1.0f + __builtin_expf(-g));
#endif
}

}  // namespace kr::gk
