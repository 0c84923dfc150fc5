// kimi_runtime._C: declarations and exports only; each area registers its own functions.
#include <pybind11/pybind11.h>

#include "common.h"

namespace py = pybind11;

void register_info(py::module_& m);   // info_bind.cpp: CPU features, threads
void register_quant(py::module_& m);  // quant_bind.cpp: type table, dequantize, quantize
void register_gemv(py::module_& m);   // gemv_bind.cpp: fused dequant-dot gemv/gemm, MoE FFN
void register_cache(py::module_& m);  // cache_bind.cpp: expert store, slot pool, expert cache
void register_heads(py::module_& m);  // heads_bind.cpp: batched-heads gemm (MLA k_b / v_b)
void register_layer(py::module_& m);  // layer_bind.cpp: the native layer step (StepPlan)
void register_emu(py::module_& m);    // emu_bind.cpp: host emulator of the CUDA kernels
void register_devpool(py::module_& m);  // devpool_bind.cpp: device slot-pool protocol (emulated device)

PYBIND11_MODULE(_C, m) {
  m.doc() = "kimi_runtime native core (CPU)";
  py::register_exception<kr::ArgError>(m, "ArgError", PyExc_ValueError);
  register_info(m);
  register_quant(m);
  register_gemv(m);
  register_cache(m);
  register_heads(m);
  register_layer(m);
  register_emu(m);
  register_devpool(m);
}
