// kimi_runtime._C_cuda: declarations and exports only. Imported optionally by kimi_runtime._native.
#include <pybind11/pybind11.h>

#include <string>

#include "common.h"

namespace py = pybind11;

namespace kr::cuda {
int device_count();
std::string device_name(int dev);
}  // namespace kr::cuda


void register_cuda_quant(py::module_& m);  // csrc/cuda/quant_bind_cuda.cu: device dequantize

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "kimi_runtime native core (CUDA)";
  py::register_exception<kr::ArgError>(m, "ArgError", PyExc_ValueError);
  m.def("device_count", &kr::cuda::device_count, "Number of visible CUDA devices (0 when none).");
  m.def("device_name", &kr::cuda::device_name, py::arg("device") = 0);
  register_cuda_quant(m);
}
