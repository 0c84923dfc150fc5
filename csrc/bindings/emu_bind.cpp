// Python face of the GPU-kernel emulator (csrc/emu): the CUDA kernels' own bodies run on the host,
// so tests compare them with the CPU kernels on a machine without a GPU. Shapes checked here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <tuple>
#include <vector>

#include "common.h"
#include "cpu/act_quant.h"
#include "emu/emu_kernels.h"

namespace py = pybind11;

namespace {

std::pair<const uint8_t*, size_t> bytes_of(const py::buffer& b) {
  py::buffer_info info = b.request();
  ssize_t expect = info.itemsize;
  for (ssize_t d = info.ndim - 1; d >= 0; --d) {
    KR_CHECK(info.shape[d] == 1 || info.strides[d] == expect, "buffer must be C-contiguous");
    expect *= info.shape[d];
  }
  return {static_cast<const uint8_t*>(info.ptr), (size_t)(info.size * info.itemsize)};
}

using F32In = py::array_t<float, py::array::c_style | py::array::forcecast>;

py::array_t<uint8_t> act_blocks(const F32In& x, bool emulated) {
  KR_CHECK(x.size() % 32 == 0, "activation length must be a multiple of 32");
  const int64_t nb = x.size() / 32;
  py::array_t<uint8_t> out(nb * (int64_t)sizeof(kr::block_q8a32));
  auto* y = reinterpret_cast<kr::block_q8a32*>(out.mutable_data());
  if (emulated) kr::emu::act_quant(x.data(), nb, y);
  else kr::quantize_act_q8a32(x.data(), y, nb * 32);
  return out;
}

}  // namespace

void register_emu(py::module_& m) {
  m.def("emu_gpu_supported", [](int32_t t) { return kr::gk::gpu_dot_supported(t); }, py::arg("qtype"),
        "True when the GPU kernels have an integer dot path for this ggml type.");
  m.def("emu_act_quant", [](F32In x) { return act_blocks(x, true); }, py::arg("x"),
        "Emulated GPU activation quantization: q8a32 blocks as bytes.");
  m.def("cpu_act_quant_q8a32", [](F32In x) { return act_blocks(x, false); }, py::arg("x"),
        "The CPU kernels' q8a32 activation quantization, as bytes (reference for emu_act_quant).");
  m.def(
      "emu_gemv",
      [](py::buffer w, int32_t type, int64_t rows, int64_t cols, F32In x) {
        auto [wp, wn] = bytes_of(w);
        KR_CHECK(x.ndim() == 2 && x.shape(1) == cols, "x must be [n, cols]");
        const int64_t n = x.shape(0);
        py::array_t<float> out({n, rows});
        {
          py::gil_scoped_release nogil;
          kr::emu::gemv(type, wp, wn, rows, cols, x.data(), n, out.mutable_data());
        }
        return out;
      },
      py::arg("w"), py::arg("qtype"), py::arg("rows"), py::arg("cols"), py::arg("x"),
      "Emulated GPU GEMV: out[n, rows] = x @ W^T through the CUDA kernel bodies.");
  m.def(
      "emu_moe",
      [](F32In x, const std::vector<std::tuple<py::buffer, py::buffer, py::buffer, int32_t, int32_t, int32_t>>& experts,
         py::array_t<int32_t, py::array::c_style | py::array::forcecast> sel, F32In w, int64_t n_ff, bool accumulate,
         py::object out_init) {
        KR_CHECK(x.ndim() == 2 && sel.ndim() == 2 && w.ndim() == 2, "x, sel, w must be 2-D");
        const int64_t n_tok = x.shape(0), n_embd = x.shape(1), k = sel.shape(1);
        KR_CHECK(sel.shape(0) == n_tok && w.shape(0) == n_tok && w.shape(1) == k, "sel/w must be [n_tok, k]");
        KR_CHECK(n_embd % 256 == 0 && n_ff % 256 == 0, "n_embd and n_ff must be multiples of 256");
        std::vector<kr::gk::MoeRoute> routes((size_t)(n_tok * k));
        for (int64_t i = 0; i < n_tok * k; ++i) {
          const int32_t e = sel.data()[i];
          KR_CHECK(e >= -1 && e < (int32_t)experts.size(), "expert index out of range");
          kr::gk::MoeRoute& R = routes[(size_t)i];
          R.tok = (int32_t)(i / k);
          R.weight = w.data()[i];
          if (e < 0) continue;
          const auto& ex = experts[(size_t)e];
          const py::buffer* bufs[3] = {&std::get<0>(ex), &std::get<1>(ex), &std::get<2>(ex)};
          const int32_t types[3] = {std::get<3>(ex), std::get<4>(ex), std::get<5>(ex)};
          const int64_t rows[3] = {n_ff, n_ff, n_embd}, cols[3] = {n_embd, n_embd, n_ff};
          for (int p = 0; p < 3; ++p) {
            KR_CHECK(kr::gk::gpu_dot_supported(types[p]), "no GPU integer kernel for ggml type " +
                                                              std::to_string(types[p]));
            auto [ptr, nbytes] = bytes_of(*bufs[p]);
            const kr::TypeTraits tt = kr::type_traits(types[p]);
            KR_CHECK(nbytes == (size_t)(rows[p] * (cols[p] / tt.block_size) * tt.type_size),
                     "expert buffer has the wrong size");
            R.w[p] = ptr;
            R.type[p] = types[p];
          }
        }
        py::array_t<float> out({n_tok, n_embd});
        if (accumulate) {
          F32In init = py::cast<F32In>(out_init);
          KR_CHECK(init.size() == n_tok * n_embd, "out_init must be [n_tok, n_embd]");
          std::copy(init.data(), init.data() + init.size(), out.mutable_data());
        }
        {
          py::gil_scoped_release nogil;
          kr::emu::moe(routes, n_tok, k, n_embd, n_ff, x.data(), out.mutable_data(), accumulate);
        }
        return out;
      },
      py::arg("x"), py::arg("experts"), py::arg("sel"), py::arg("w"), py::arg("n_ff"), py::arg("accumulate") = false,
      py::arg("out_init") = py::none(),
      "Emulated grouped MoE launch sequence; experts = [(gate, up, down, tg, tu, td)].");
  m.def(
      "emu_dequant_tile",
      [](py::buffer w, int32_t type, int64_t rows, int64_t cols, int64_t r0, int64_t r1, int out_dtype) {
        auto [wp, wn] = bytes_of(w);
        const kr::TypeTraits tt = kr::type_traits(type);
        KR_CHECK(tt.name != nullptr && cols > 0 && cols % tt.block_size == 0, "bad type or cols");
        KR_CHECK(0 <= r0 && r0 <= r1 && r1 <= rows, "tile rows out of range");
        KR_CHECK(wn == (size_t)(rows * (cols / tt.block_size) * tt.type_size), "weight buffer has the wrong size");
        py::array out = out_dtype == 0 ? py::array(py::array_t<float>({r1 - r0, cols}))
                                       : py::array(py::array_t<uint16_t>({r1 - r0, cols}));
        kr::emu::dequant_tile(type, wp, cols, r0, r1, out_dtype, out.mutable_data());
        return out;
      },
      py::arg("w"), py::arg("qtype"), py::arg("rows"), py::arg("cols"), py::arg("r0"), py::arg("r1"),
      py::arg("out_dtype") = 2, "Emulated dequantize-to-tile (out_dtype 0 = f32, 2 = bf16 bits).");
}
