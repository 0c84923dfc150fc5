// Python face of the CUDA dequantizer: raw device pointers and a stream handle in (as integers),
// sizes checked here before any launch; CUDA failures raise RuntimeError, bad arguments ValueError.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.h"
#include "quant/blocks.h"
#include "quant/decode.h"

namespace py = pybind11;

namespace kr::cuda {
cudaError_t dequantize_blocks(const void* src, int32_t type, int64_t n_blocks, void* dst, int out_dtype,
                              cudaStream_t stream);

namespace {

void dequantize_op(uintptr_t src, size_t src_len, int32_t type, int64_t n_rows, int64_t n_cols, uintptr_t dst,
                   size_t dst_len, int out_dtype, uintptr_t stream) {
  const TypeTraits tt = type_traits(type);
  KR_CHECK(tt.name != nullptr && has_decoder(type), "no dequantizer for ggml type " + std::to_string(type));
  KR_CHECK(n_rows >= 0 && n_cols >= 0, "negative shape");
  KR_CHECK(n_cols % tt.block_size == 0, "row length " + std::to_string(n_cols) + " is not a multiple of the " +
                                            tt.name + " block size " + std::to_string(tt.block_size));
  KR_CHECK(out_dtype >= 0 && out_dtype <= 2, "out_dtype must be 0 (f32), 1 (f16) or 2 (bf16)");
  const int64_t rb = n_cols / tt.block_size * tt.type_size;
  KR_CHECK(n_cols == 0 || n_rows <= INT64_MAX / 4 / n_cols, "tensor too large");
  KR_CHECK((uint64_t)(n_rows * rb) == src_len, "source holds " + std::to_string(src_len) +
                                                   " bytes but the shape needs " + std::to_string(n_rows * rb));
  KR_CHECK((uint64_t)(n_rows * n_cols) * (out_dtype == 0 ? 4u : 2u) == dst_len, "output buffer has the wrong size");
  KR_CHECK(n_rows * n_cols == 0 || (src != 0 && dst != 0), "null device pointer");
  const int64_t n_blocks = n_rows * n_cols / tt.block_size;
  cudaError_t err;
  {
    py::gil_scoped_release nogil;
    err = dequantize_blocks(reinterpret_cast<const void*>(src), type, n_blocks, reinterpret_cast<void*>(dst),
                            out_dtype, reinterpret_cast<cudaStream_t>(stream));
  }
  if (err != cudaSuccess) throw std::runtime_error(std::string("CUDA dequantize failed: ") + cudaGetErrorString(err));
}

}  // namespace
}  // namespace kr::cuda

void register_cuda_quant(py::module_& m) {
  m.def("dequantize", &kr::cuda::dequantize_op, py::arg("src_ptr"), py::arg("src_len"), py::arg("type"),
        py::arg("n_rows"), py::arg("n_cols"), py::arg("dst_ptr"), py::arg("dst_len"), py::arg("out_dtype"),
        py::arg("stream") = 0,
        "Dequantize n_rows x n_cols weights of ggml `type` between device buffers (out_dtype 0=f32, "
        "1=f16, 2=bf16) on a CUDA stream; asynchronous.");
}
