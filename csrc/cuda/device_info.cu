// Device queries for the CUDA module; errors are returned as strings, never exit().
#include <cuda_runtime.h>

#include <string>

namespace kr::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

std::string device_name(int dev) {
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, dev) != cudaSuccess) return "";
  return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ")";
}

// Why no device is usable, in words ("" when at least one is): no driver, a driver older than
// this module's CUDA runtime (cudart_static is independent of torch's), or no visible device.
std::string runtime_status() {
  int n = 0, drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  const cudaError_t e = cudaGetDeviceCount(&n);
  const std::string ver = " (driver supports CUDA " + std::to_string(drv / 1000) + "." +
                          std::to_string(drv % 1000 / 10) + ", module built with runtime " +
                          std::to_string(rt / 1000) + "." + std::to_string(rt % 1000 / 10) + ")";
  if (drv == 0) {
    cudaGetLastError();
    return "no NVIDIA driver found (libcuda is not installed or not loadable)";
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e) + ver;
  }
  if (n == 0) return "no CUDA device visible" + ver;
  return "";
}

// (free, total) bytes of a device's memory.
std::pair<size_t, size_t> mem_info(int dev) {
  int prev = 0;
  cudaGetDevice(&prev);
  cudaSetDevice(dev);
  size_t f = 0, t = 0;
  cudaMemGetInfo(&f, &t);
  cudaSetDevice(prev);
  return {f, t};
}

}  // namespace kr::cuda
