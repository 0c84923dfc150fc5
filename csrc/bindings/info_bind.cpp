// Machine facts and the thread pool size, exported to Python.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cpu/cpu_features.h"
#include "cpu/threadpool.h"

namespace py = pybind11;

void register_info(py::module_& m) {
  m.def("cpu_features", [] {
    const auto& f = kr::cpu_features();
    py::dict d;
    d["avx2"] = f.avx2;
    d["fma"] = f.fma;
    d["f16c"] = f.f16c;
    d["bmi2"] = f.bmi2;
    d["avx512f"] = f.avx512f;
    d["avx512bw"] = f.avx512bw;
    d["avx512vl"] = f.avx512vl;
    d["avx512vnni"] = f.avx512vnni;
    return d;
  }, "CPU features detected at run time.");
  m.def("num_threads", &kr::num_threads, "Threads used by native kernels (caller included).");
  m.def("set_num_threads", &kr::set_num_threads, py::arg("n"),
        "Set the kernel thread count; n <= 0 means all hardware threads.");
}
