// Shared macros and error handling for the native core: one place defines how host/device code
// is marked and how bad arguments become Python exceptions (C++ exceptions, translated by pybind11).
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define KR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define KR_HOST_DEVICE inline
#endif

namespace kr {

// Thrown for caller mistakes (wrong sizes, unknown types); pybind11 maps it to ValueError.
struct ArgError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

[[noreturn]] inline void fail(const std::string& msg) { throw ArgError(msg); }

}  // namespace kr

#define KR_CHECK(cond, msg)                                                        \
  do {                                                                             \
    if (!(cond)) ::kr::fail(std::string(msg) + " [" #cond " at " __FILE__ ":" +    \
                            std::to_string(__LINE__) + "]");                       \
  } while (0)
