// Python face of the batched-heads gemm (csrc/cpu/gemm_heads.h): shapes and dtypes are checked here,
// byte counts and weight types in csrc/cpu (KR_CHECK -> ValueError).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "common.h"
#include "cpu/gemm_heads.h"

namespace py = pybind11;

namespace {

// Pointer and byte count of a C-contiguous buffer (numpy array, memmap, bytes).
std::pair<const void*, size_t> contiguous_bytes(const py::buffer& b) {
  py::buffer_info info = b.request();
  ssize_t expect = info.itemsize;
  for (ssize_t d = info.ndim - 1; d >= 0; --d) {
    KR_CHECK(info.shape[d] == 1 || info.strides[d] == expect, "weight buffer must be C-contiguous");
    expect *= info.shape[d];
  }
  return {info.ptr, (size_t)(info.size * info.itemsize)};
}

py::array_t<float> f32_3d(const py::array& a, const char* what, bool writable) {
  KR_CHECK(py::isinstance<py::array_t<float>>(a) && a.dtype().is(py::dtype::of<float>()),
           std::string(what) + " must be float32");
  KR_CHECK(a.ndim() == 3, std::string(what) + " must have 3 dimensions");
  KR_CHECK(a.flags() & py::array::c_style, std::string(what) + " must be C-contiguous");
  KR_CHECK(!writable || a.writeable(), std::string(what) + " must be writable");
  return py::reinterpret_borrow<py::array_t<float>>(a);
}

}  // namespace

void register_heads(py::module_& m) {
  m.def(
      "gemm_heads",
      [](py::buffer w, int32_t type, int64_t heads, int64_t rows, int64_t cols, py::array x, py::array out) {
        auto [wp, wn] = contiguous_bytes(w);
        auto xa = f32_3d(x, "x", false);
        auto oa = f32_3d(out, "out", true);
        KR_CHECK(xa.shape(0) == heads && xa.shape(2) == cols,
                 "x must be [" + std::to_string(heads) + ", n, " + std::to_string(cols) + "]");
        KR_CHECK(oa.shape(0) == heads && oa.shape(1) == xa.shape(1) && oa.shape(2) == rows,
                 "out must be [heads, n, rows]");
        const float* xp = xa.data();
        float* op = oa.mutable_data();
        const int64_t n = xa.shape(1);
        py::gil_scoped_release nogil;
        kr::gemm_heads(type, wp, wn, heads, rows, cols, xp, n, op);
      },
      py::arg("w"), py::arg("qtype"), py::arg("heads"), py::arg("rows"), py::arg("cols"), py::arg("x"),
      py::arg("out"),
      "out[h, n, rows] = x[h, n, cols] @ W[h]^T for `heads` contiguous raw GGUF weight slices W[h] (one call).");
}
