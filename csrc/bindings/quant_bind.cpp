// Python face of csrc/quant and the CPU dequant/quantize ops: buffers in, checks in the ops layer,
// the GIL released while native code runs.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "quant/blocks.h"
#include "quant/dequant.h"
#include "quant/decode.h"
#include "quant/quantize.h"

namespace py = pybind11;

namespace {

struct Span {
  void* ptr;
  size_t len;
};

// A C-contiguous buffer as (pointer, byte length); anything strided is refused, not copied.
Span contiguous(const py::buffer& b, bool writable, const char* what) {
  py::buffer_info info = b.request(writable);
  py::ssize_t expect = info.itemsize;
  for (py::ssize_t i = info.ndim - 1; i >= 0; --i) {
    if (info.shape[i] != 1 && info.strides[i] != expect)
      throw kr::ArgError(std::string(what) + " must be a C-contiguous buffer");
    expect *= info.shape[i];
  }
  return {info.ptr, (size_t)(info.size * info.itemsize)};
}

}  // namespace

void register_quant(py::module_& m) {
  m.def(
      "type_traits",
      [](int32_t t) -> py::object {
        const kr::TypeTraits tt = kr::type_traits(t);
        if (!tt.name) return py::none();
        return py::make_tuple(tt.name, tt.block_size, tt.type_size, kr::has_decoder(t),
                              kr::has_quantizer(t));
      },
      py::arg("type"),
      "(name, block_size, type_size, can_dequantize, can_quantize) for a ggml type id, or None.");
  m.def("row_bytes", &kr::row_bytes_checked, py::arg("type"), py::arg("n_cols"),
        "Bytes of one row of n_cols weights; ValueError for unknown types or ragged rows.");
  m.def(
      "dequantize",
      [](const py::buffer& src, int32_t type, int64_t n_rows, int64_t n_cols, const py::buffer& out,
         int out_dtype) {
        const Span s = contiguous(src, false, "src");
        const Span o = contiguous(out, true, "out");
        py::gil_scoped_release nogil;
        kr::dequantize_tensor(static_cast<const uint8_t*>(s.ptr), s.len, type, n_rows, n_cols, o.ptr,
                              o.len, out_dtype);
      },
      py::arg("src"), py::arg("type"), py::arg("n_rows"), py::arg("n_cols"), py::arg("out"),
      py::arg("out_dtype"),
      "Dequantize n_rows x n_cols weights of ggml `type` from src into out (out_dtype 0=f32, 1=f16, "
      "2=bf16 bits); multithreaded.");
  m.def(
      "quantize",
      [](const py::buffer& src, int32_t type, int64_t n_rows, int64_t n_cols, const py::buffer& out) {
        const Span s = contiguous(src, false, "src");
        const Span o = contiguous(out, true, "out");
        py::gil_scoped_release nogil;
        kr::quantize_tensor(static_cast<const float*>(s.ptr), s.len, type, n_rows, n_cols,
                            static_cast<uint8_t*>(o.ptr), o.len);
      },
      py::arg("src"), py::arg("type"), py::arg("n_rows"), py::arg("n_cols"), py::arg("out"),
      "Quantize n_rows x n_cols float32 values into ggml `type` blocks in out; multithreaded.");
}
