// kimi_runtime._C_cuda: declarations and exports only. Imported optionally by kimi_runtime._native.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <utility>

#include "common.h"

namespace py = pybind11;

namespace kr::cuda {
int device_count();
std::string device_name(int dev);
std::string runtime_status();
std::pair<size_t, size_t> mem_info(int dev);
}  // namespace kr::cuda

void register_cuda_quant(py::module_& m);    // csrc/cuda/quant_bind_cuda.cu: device dequantize
void register_cuda_ops(py::module_& m);      // csrc/cuda/ops_bind_cuda.cu: gemv, grouped MoE, tiles
void register_cuda_devpool(py::module_& m);  // csrc/cuda/vram_pool_bind.cu: VRAM slot pool

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "kimi_runtime native core (CUDA)";
  py::register_exception<kr::ArgError>(m, "ArgError", PyExc_ValueError);
  m.def("device_count", &kr::cuda::device_count, "Number of visible CUDA devices (0 when none).");
  m.def("device_name", &kr::cuda::device_name, py::arg("device") = 0);
  m.def("runtime_status", &kr::cuda::runtime_status,
        "Empty when a device is usable, else why not (driver/runtime versions included).");
  m.def("mem_info", &kr::cuda::mem_info, py::arg("device") = 0, "(free, total) bytes of device memory.");
  register_cuda_quant(m);
  register_cuda_ops(m);
  register_cuda_devpool(m);
}
