// Python face of the fused dequant-dot kernels: gemm/gemv, the fused MoE FFN, ISA override and the
// bandwidth probe. Shapes/dtypes are checked here; byte counts and types in csrc/cpu (KR_CHECK).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "common.h"
#include "cpu/gemv.h"
#include "cpu/moe.h"

namespace py = pybind11;

namespace {

// A native ExpertRef plus the Python objects whose memory it points into.
struct PyExpertRef {
  kr::ExpertRef ref;
  py::object owner;
};

// Read-only contiguous view of any buffer (numpy array, memmap, bytes): pointer and byte count.
std::pair<const void*, size_t> byte_view(const py::buffer& b) {
  py::buffer_info info = b.request();
  ssize_t expect = info.itemsize;
  for (ssize_t d = info.ndim - 1; d >= 0; --d) {
    KR_CHECK(info.shape[d] == 1 || info.strides[d] == expect, "weight buffer must be C-contiguous");
    expect *= info.shape[d];
  }
  return {info.ptr, (size_t)(info.size * info.itemsize)};
}

template <class T>
py::array_t<T> checked(const py::array& a, const char* what, int ndim, bool writable) {
  KR_CHECK(py::isinstance<py::array_t<T>>(a) && a.dtype().is(py::dtype::of<T>()),
           std::string(what) + " has the wrong dtype");
  KR_CHECK(a.ndim() == ndim, std::string(what) + " must have " + std::to_string(ndim) + " dimensions");
  KR_CHECK(a.flags() & py::array::c_style, std::string(what) + " must be C-contiguous");
  KR_CHECK(!writable || a.writeable(), std::string(what) + " must be writable");
  return py::reinterpret_borrow<py::array_t<T>>(a);
}

const char* isa_name(kr::Isa i) {
  switch (i) {
    case kr::Isa::Avx512: return "avx512";
    case kr::Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace

void register_gemv(py::module_& m) {
  m.def(
      "gemm",
      [](py::buffer w, int32_t type, int64_t rows, int64_t cols, py::array x, py::array out) {
        auto [wp, wn] = byte_view(w);
        auto xa = checked<float>(x, "x", 2, false);
        auto oa = checked<float>(out, "out", 2, true);
        KR_CHECK(xa.shape(1) == cols, "x has " + std::to_string(xa.shape(1)) + " columns, expected " + std::to_string(cols));
        KR_CHECK(oa.shape(0) == xa.shape(0) && oa.shape(1) == rows, "out must be [n, rows]");
        const float* xp = xa.data();
        float* op = oa.mutable_data();
        const int64_t n = xa.shape(0);
        py::gil_scoped_release nogil;
        kr::gemm(type, wp, wn, rows, cols, xp, n, op);
      },
      py::arg("w"), py::arg("qtype"), py::arg("rows"), py::arg("cols"), py::arg("x"), py::arg("out"),
      "out[n, rows] = x[n, cols] @ W^T for raw GGUF weight rows W (fused dequant-dot).");

  m.def("set_gemv_isa", [](const std::string& name) {
        int id = -2;
        if (name == "auto") id = -1;
        else if (name == "scalar") id = 0;
        else if (name == "avx2") id = 1;
        else if (name == "avx512") id = 2;
        KR_CHECK(id != -2, "unknown ISA '" + name + "' (auto, scalar, avx2, avx512)");
        kr::set_isa(id);
      }, py::arg("name"), "Force the kernels' ISA (tests/benchmarks); 'auto' = best available.");
  m.def("gemv_isa", [] { return std::string(isa_name(kr::active_isa())); }, "ISA the kernels use now.");
  m.def("gemv_best_isa", [] { return std::string(isa_name(kr::best_isa())); }, "Best ISA this CPU runs.");
  m.def("gemv_kernel_path", [](int32_t type) { return std::string(kr::kernel_path_name(type)); }, py::arg("qtype"),
        "Kernel used for a weight type under the current ISA, e.g. 'avx2/int8'.");
  m.def("gemv_kernel_multirow", [](int32_t type) { return kr::row_kernel(type).multi != nullptr; },
        py::arg("qtype"), "Whether batches of this weight type use a multi-row kernel under the current ISA.");
  m.def("weight_row_bytes", &kr::weight_row_bytes, py::arg("qtype"), py::arg("cols"));
  m.def("membw_read_gbs", [](size_t nbytes, int repeat) {
        py::gil_scoped_release nogil;
        return kr::membw_read_gbs(nbytes, repeat);
      }, py::arg("nbytes"), py::arg("repeat") = 3, "Streaming read bandwidth (GB/s) with the kernel thread pool.");

  py::class_<PyExpertRef>(m, "ExpertRef")
      .def(py::init([](uintptr_t gate, uintptr_t up, uintptr_t down, int32_t gate_type, int32_t up_type,
                       int32_t down_type, int64_t n_ff, int64_t n_embd, size_t gate_nbytes, size_t up_nbytes,
                       size_t down_nbytes, py::object owner) {
             PyExpertRef r;
             r.ref = kr::make_expert_ref((const void*)gate, (const void*)up, (const void*)down, gate_type, up_type,
                                         down_type, n_ff, n_embd, gate_nbytes, up_nbytes, down_nbytes);
             r.owner = std::move(owner);
             return r;
           }),
           py::arg("gate_addr"), py::arg("up_addr"), py::arg("down_addr"), py::arg("gate_type"), py::arg("up_type"),
           py::arg("down_type"), py::arg("n_ff"), py::arg("n_embd"), py::arg("gate_nbytes"), py::arg("up_nbytes"),
           py::arg("down_nbytes"), py::arg("owner") = py::none(),
           "One expert's gate/up [n_ff, n_embd] and down [n_embd, n_ff] raw rows by address; `owner` is kept "
           "alive as long as this object (the memory the addresses point into).")
      .def_property_readonly("n_ff", [](const PyExpertRef& r) { return r.ref.n_ff; })
      .def_property_readonly("n_embd", [](const PyExpertRef& r) { return r.ref.n_embd; })
      .def_property_readonly("types", [](const PyExpertRef& r) {
        return py::make_tuple(r.ref.type[0], r.ref.type[1], r.ref.type[2]);
      });

  m.def(
      "moe_ffn",
      [](py::array x, py::array out, const std::vector<PyExpertRef*>& experts, py::array sel, py::array w,
         bool accumulate) {
        auto xa = checked<float>(x, "x", 2, false);
        auto oa = checked<float>(out, "out", 2, true);
        auto sa = checked<int32_t>(sel, "sel", 2, false);
        auto wa = checked<float>(w, "w", 2, false);
        KR_CHECK(oa.shape(0) == xa.shape(0) && oa.shape(1) == xa.shape(1), "out must have x's shape");
        KR_CHECK(sa.shape(0) == xa.shape(0) && wa.shape(0) == xa.shape(0) && sa.shape(1) == wa.shape(1),
                 "sel and w must be [n_tok, k]");
        std::vector<const kr::ExpertRef*> refs;
        for (PyExpertRef* e : experts) {
          KR_CHECK(e != nullptr, "experts must not contain None");
          refs.push_back(&e->ref);
        }
        const float* xp = xa.data();
        float* op = oa.mutable_data();
        const int32_t* sp = sa.data();
        const float* wp = wa.data();
        const int64_t n_tok = xa.shape(0), n_embd = xa.shape(1), k = sa.shape(1);
        py::gil_scoped_release nogil;
        kr::moe_ffn(xp, op, n_tok, n_embd, refs, sp, wp, k, accumulate);
      },
      py::arg("x"), py::arg("out"), py::arg("experts"), py::arg("sel"), py::arg("w"), py::arg("accumulate") = false,
      "Fused MoE FFN: out[t] (+)= sum_j w[t,j] * down(silu(gate x_t) * up x_t) of expert sel[t,j] (-1 skips).");
}
