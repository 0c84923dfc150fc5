// Our own CUDA runtime (cudart_static) does not see torch's current device, so every entry point
// selects the device explicitly: the one it is handed, else the one its pointers live on. Streams
// arrive as integer handles (torch.cuda.current_stream().cuda_stream); both runtimes share the
// device's primary context, so torch's pointers and streams are valid here.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "common.h"

namespace kr::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t e, const std::string& what) {
  throw std::runtime_error(what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

inline void check_cuda(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess) throw_cuda(e, what);
}

// Device a pointer belongs to (device or managed memory), else -1 (host, unregistered, error).
inline int device_of(const void* p) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged) ? a.device : -1;
}

// Selects `device` (or the device of `ptr` when device < 0) for this thread and restores the
// previous selection on exit. A host pointer where device memory is required is an ArgError.
class DeviceGuard {
 public:
  DeviceGuard(int device, const void* ptr) {
    check_cuda(cudaGetDevice(&prev_), "cudaGetDevice");
    int dev = device;
    if (dev < 0) {
      dev = device_of(ptr);
      KR_CHECK(dev >= 0, "pointer is not device memory (pass a CUDA tensor or a device index)");
    }
    if (dev != prev_) check_cuda(cudaSetDevice(dev), "cudaSetDevice(" + std::to_string(dev) + ")");
    dev_ = dev;
  }
  ~DeviceGuard() {
    if (dev_ != prev_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  int device() const { return dev_; }

 private:
  int prev_ = 0, dev_ = 0;
};

inline cudaStream_t as_stream(uintptr_t h) { return reinterpret_cast<cudaStream_t>(h); }

}  // namespace kr::cuda
