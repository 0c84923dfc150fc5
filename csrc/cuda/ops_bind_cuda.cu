// Python face of the CUDA GEMV / grouped MoE / dequantize-tile launchers. Raw device pointers,
// byte counts and a stream handle come in as integers; every size is checked against the shape
// before a launch, the device is selected from the arguments (DeviceGuard), and the launch is
// asynchronous on the given stream. Workspace is the caller's (a torch tensor), sized by the
// *_workspace_bytes functions, so no allocation happens behind torch's caching allocator.
#include <cuda_runtime.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "common.h"
#include "cuda/ops.h"
#include "cuda/runtime.cuh"

namespace py = pybind11;

namespace kr::cuda {
namespace {

using gk::kMaxTok;

size_t row_bytes_of(int32_t type, int64_t cols) {
  const TypeTraits tt = type_traits(type);
  KR_CHECK(tt.name != nullptr, "unknown ggml type " + std::to_string(type));
  KR_CHECK(cols > 0 && cols % tt.block_size == 0 && cols % 32 == 0,
           "cols " + std::to_string(cols) + " is not a positive multiple of the " + tt.name + " block size");
  return (size_t)(cols / tt.block_size) * tt.type_size;
}

size_t gemv_workspace_bytes(int64_t n, int64_t cols) {
  KR_CHECK(n >= 0 && cols > 0 && cols % 32 == 0, "bad activation shape");
  return (size_t)(n * (cols / 32)) * sizeof(block_q8a32);
}

void gemv_op(uintptr_t w, size_t w_len, int32_t type, int64_t rows, int64_t cols, uintptr_t x, int64_t n,
             uintptr_t out, size_t out_len, uintptr_t ws, size_t ws_len, uintptr_t stream, int device) {
  KR_CHECK(gk::gpu_dot_supported(type), "no GPU integer kernel for ggml type " + std::to_string(type));
  const size_t rb = row_bytes_of(type, cols);
  KR_CHECK(rows >= 0 && n >= 0, "negative shape");
  KR_CHECK(w_len == rb * (size_t)rows, "weights hold " + std::to_string(w_len) + " bytes, the shape needs " +
                                           std::to_string(rb * (size_t)rows));
  KR_CHECK(out_len == (size_t)(n * rows) * sizeof(float), "out has the wrong size");
  KR_CHECK(ws_len >= gemv_workspace_bytes(n, cols), "workspace too small");
  if (n == 0 || rows == 0) return;
  KR_CHECK(w && x && out && ws, "null device pointer");
  cudaError_t e;
  {
    py::gil_scoped_release nogil;
    DeviceGuard g(device, reinterpret_cast<const void*>(w));
    const cudaStream_t s = as_stream(stream);
    auto* xq = reinterpret_cast<block_q8a32*>(ws);
    e = launch_act_quant(reinterpret_cast<const float*>(x), n * cols / 32, xq, s);
    for (int64_t t0 = 0; t0 < n && e == cudaSuccess; t0 += kMaxTok) {
      gk::GemvArgs a;
      a.w = reinterpret_cast<const uint8_t*>(w);
      a.row_bytes = rb;
      a.rows = rows;
      a.cols = cols;
      a.x = xq + t0 * (cols / 32);
      a.ntok = (int)(n - t0 < kMaxTok ? n - t0 : kMaxTok);
      a.out = reinterpret_cast<float*>(out) + t0 * rows;
      a.out_stride = rows;
      e = launch_gemv(type, a, s);
    }
  }
  if (e != cudaSuccess) throw_cuda(e, "CUDA gemv launch");
}

// Workspace layout of one MoE call: route table | xq | hq | h | y (each 256-byte aligned).
struct MoeLayout {
  size_t routes, xq, hq, h, y, total;
};
size_t align256(size_t v) { return (v + 255) & ~(size_t)255; }
MoeLayout moe_layout(int64_t n_tok, int64_t k, int64_t n_embd, int64_t n_ff) {
  KR_CHECK(n_tok >= 0 && k > 0 && n_embd > 0 && n_ff > 0 && n_embd % 256 == 0 && n_ff % 256 == 0,
           "bad MoE shape (n_embd and n_ff must be multiples of 256)");
  const int64_t nr = n_tok * k;
  MoeLayout l{};
  l.routes = 0;
  l.xq = align256((size_t)nr * sizeof(gk::MoeRoute));
  l.hq = l.xq + align256((size_t)(n_tok * n_embd / 32) * sizeof(block_q8a32));
  l.h = l.hq + align256((size_t)(nr * n_ff / 32) * sizeof(block_q8a32));
  l.y = l.h + align256((size_t)(nr * n_ff) * sizeof(float));
  l.total = l.y + align256((size_t)(nr * n_embd) * sizeof(float));
  return l;
}

using U64Arr = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>;
using I32Arr = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using F32Arr = py::array_t<float, py::array::c_style | py::array::forcecast>;

// ptrs: [n_tok * k, 3] device addresses of gate/up/down (0 = skipped slot); types [n_tok * k, 3];
// weights [n_tok * k]. Slot sizes are the caller's contract (the pool's slot holds the expert).
void moe_op(uintptr_t x, int64_t n_tok, int64_t n_embd, int64_t n_ff, int64_t k, U64Arr ptrs, I32Arr types,
            F32Arr weights, uintptr_t out, size_t out_len, bool accumulate, uintptr_t ws, size_t ws_len,
            uintptr_t stream, int device) {
  const MoeLayout L = moe_layout(n_tok, k, n_embd, n_ff);
  const int64_t nr = n_tok * k;
  KR_CHECK(ptrs.size() == nr * 3 && types.size() == nr * 3 && weights.size() == nr,
           "ptrs/types must be [n_tok * k, 3] and weights [n_tok * k]");
  KR_CHECK(out_len == (size_t)(n_tok * n_embd) * sizeof(float), "out has the wrong size");
  KR_CHECK(ws_len >= L.total, "workspace too small: need " + std::to_string(L.total) + " bytes");
  if (nr == 0) return;
  KR_CHECK(x && out && ws, "null device pointer");
  std::vector<gk::MoeRoute> routes((size_t)nr);
  for (int64_t i = 0; i < nr; ++i) {
    gk::MoeRoute& R = routes[(size_t)i];
    R.tok = (int32_t)(i / k);
    R.weight = weights.data()[i];
    if (ptrs.data()[3 * i] == 0) continue;
    for (int p = 0; p < 3; ++p) {
      const int32_t t = types.data()[3 * i + p];
      KR_CHECK(gk::gpu_dot_supported(t), "no GPU integer kernel for ggml type " + std::to_string(t));
      KR_CHECK(ptrs.data()[3 * i + p] != 0, "route has a gate but no up/down pointer");
      R.w[p] = reinterpret_cast<const uint8_t*>(ptrs.data()[3 * i + p]);
      R.type[p] = t;
    }
  }
  cudaError_t e;
  {
    py::gil_scoped_release nogil;
    DeviceGuard g(device, reinterpret_cast<const void*>(x));
    const cudaStream_t s = as_stream(stream);
    uint8_t* base = reinterpret_cast<uint8_t*>(ws);
    // Pageable source: cudaMemcpyAsync stages it before returning, so `routes` may die after.
    e = cudaMemcpyAsync(base + L.routes, routes.data(), routes.size() * sizeof(gk::MoeRoute),
                        cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess) {
      gk::MoeArgs a;
      a.routes = reinterpret_cast<const gk::MoeRoute*>(base + L.routes);
      a.n_routes = nr;
      a.k = k;
      a.n_tok = n_tok;
      a.n_embd = n_embd;
      a.n_ff = n_ff;
      a.x = reinterpret_cast<const float*>(x);
      a.xq = reinterpret_cast<const block_q8a32*>(base + L.xq);
      a.hq = reinterpret_cast<const block_q8a32*>(base + L.hq);
      a.h = reinterpret_cast<float*>(base + L.h);
      a.y = reinterpret_cast<float*>(base + L.y);
      a.out = reinterpret_cast<float*>(out);
      a.accumulate = accumulate;
      e = launch_moe(a, s);
    }
  }
  if (e != cudaSuccess) throw_cuda(e, "CUDA MoE launch");
}

void dequant_tile_op(uintptr_t w, size_t w_len, int32_t type, int64_t rows, int64_t cols, int64_t r0, int64_t r1,
                     uintptr_t dst, size_t dst_len, int out_dtype, uintptr_t stream, int device) {
  const TypeTraits tt = type_traits(type);
  KR_CHECK(tt.name != nullptr && has_decoder(type), "no dequantizer for ggml type " + std::to_string(type));
  KR_CHECK(cols > 0 && cols % tt.block_size == 0, "bad cols");
  KR_CHECK(0 <= r0 && r0 <= r1 && r1 <= rows, "tile rows out of range");
  KR_CHECK(out_dtype == 0 || out_dtype == 2, "out_dtype must be 0 (f32) or 2 (bf16)");
  const size_t rb = (size_t)(cols / tt.block_size) * tt.type_size;
  KR_CHECK(w_len == rb * (size_t)rows, "weights have the wrong size");
  KR_CHECK(dst_len == (size_t)((r1 - r0) * cols) * (out_dtype == 0 ? 4u : 2u), "tile buffer has the wrong size");
  if (r1 == r0) return;
  KR_CHECK(w && dst, "null device pointer");
  cudaError_t e;
  {
    py::gil_scoped_release nogil;
    DeviceGuard g(device, reinterpret_cast<const void*>(w));
    e = launch_dequant_tile(type, reinterpret_cast<const uint8_t*>(w) + (size_t)r0 * rb,
                            (r1 - r0) * (cols / tt.block_size), reinterpret_cast<void*>(dst), out_dtype,
                            as_stream(stream));
  }
  if (e != cudaSuccess) throw_cuda(e, "CUDA dequant tile launch");
}

}  // namespace
}  // namespace kr::cuda

void register_cuda_ops(py::module_& m) {
  using namespace kr::cuda;
  m.def("gpu_supported", [](int32_t t) { return kr::gk::gpu_dot_supported(t); }, py::arg("qtype"));
  m.def("gemv_workspace_bytes", &gemv_workspace_bytes, py::arg("n"), py::arg("cols"));
  m.def("gemv", &gemv_op, py::arg("w_ptr"), py::arg("w_len"), py::arg("qtype"), py::arg("rows"), py::arg("cols"),
        py::arg("x_ptr"), py::arg("n"), py::arg("out_ptr"), py::arg("out_len"), py::arg("ws_ptr"),
        py::arg("ws_len"), py::arg("stream") = 0, py::arg("device") = -1,
        "out[n, rows] = x[n, cols] @ W^T for quantized W, all device pointers; asynchronous on `stream`.");
  m.def("moe_workspace_bytes", [](int64_t n_tok, int64_t k, int64_t n_embd, int64_t n_ff) {
    return moe_layout(n_tok, k, n_embd, n_ff).total;
  }, py::arg("n_tok"), py::arg("k"), py::arg("n_embd"), py::arg("n_ff"));
  m.def("moe", &moe_op, py::arg("x_ptr"), py::arg("n_tok"), py::arg("n_embd"), py::arg("n_ff"), py::arg("k"),
        py::arg("ptrs"), py::arg("types"), py::arg("weights"), py::arg("out_ptr"), py::arg("out_len"),
        py::arg("accumulate"), py::arg("ws_ptr"), py::arg("ws_len"), py::arg("stream") = 0, py::arg("device") = -1,
        "Grouped MoE FFN over a route table of expert slot pointers per (token, k); asynchronous.");
  m.def("dequant_tile", &dequant_tile_op, py::arg("w_ptr"), py::arg("w_len"), py::arg("qtype"), py::arg("rows"),
        py::arg("cols"), py::arg("r0"), py::arg("r1"), py::arg("dst_ptr"), py::arg("dst_len"),
        py::arg("out_dtype") = 2, py::arg("stream") = 0, py::arg("device") = -1,
        "Rows [r0, r1) of a quantized weight to an f32/bf16 device tile; asynchronous.");
}
