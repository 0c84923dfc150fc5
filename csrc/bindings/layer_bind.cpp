// Python face of the native layer step (csrc/cpu/layer.h). Weights are bound once by address (the
// Python side keeps their owners alive); a step then passes only token counts and positions, and the
// scratch (hidden state, routing) is exposed as numpy views, so a call converts and allocates nothing.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "common.h"
#include "cpu/layer.h"

namespace py = pybind11;

namespace {

template <class T>
const T* vec_ptr(const py::array& a, int64_t n, const char* what) {
  KR_CHECK(py::isinstance<py::array_t<T>>(a) && a.dtype().is(py::dtype::of<T>()), std::string(what) + ": wrong dtype");
  KR_CHECK(a.flags() & py::array::c_style, std::string(what) + " must be C-contiguous");
  KR_CHECK(a.size() == n, std::string(what) + " must have " + std::to_string(n) + " values, got " +
                              std::to_string(a.size()));
  return (const T*)a.data();
}

kr::ExpertRef expert_from(const py::array& addrs, const py::array& nbytes, const std::vector<int32_t>& types,
                          int64_t row, int64_t n_ff, int64_t n_embd) {
  const uint64_t* ap = (const uint64_t*)addrs.data();
  const uint64_t* np = (const uint64_t*)nbytes.data();
  return kr::make_expert_ref((const void*)(uintptr_t)ap[3 * row], (const void*)(uintptr_t)ap[3 * row + 1],
                             (const void*)(uintptr_t)ap[3 * row + 2], types[0], types[1], types[2], n_ff, n_embd,
                             (size_t)np[3 * row], (size_t)np[3 * row + 1], (size_t)np[3 * row + 2]);
}

void check_table(const py::array& a, int64_t rows, const char* what) {
  KR_CHECK(py::isinstance<py::array_t<uint64_t>>(a) && a.dtype().is(py::dtype::of<uint64_t>()),
           std::string(what) + " must be uint64");
  KR_CHECK((a.flags() & py::array::c_style) && a.ndim() == 2 && a.shape(0) == rows && a.shape(1) == 3,
           std::string(what) + " must be a C-contiguous [" + std::to_string(rows) + ", 3] array");
}

py::array view_f32(kr::StepPlan& p, float* ptr, int64_t cols, py::handle owner) {
  return py::array_t<float>({p.max_tokens(), cols}, {cols * (int64_t)sizeof(float), (int64_t)sizeof(float)}, ptr,
                            owner);
}

}  // namespace

void register_layer(py::module_& m) {
  py::class_<kr::StepPlan>(m, "StepPlan")
      .def(py::init([](py::dict d, int64_t n_layer, int64_t max_tokens) {
             kr::StepConfig c;
             auto i = [&](const char* k) { return d[k].cast<int64_t>(); };
             c.n_embd = i("n_embd");
             c.n_head = i("n_head");
             c.q_lora_rank = i("q_lora_rank");
             c.kv_lora_rank = i("kv_lora_rank");
             c.nope = i("nope");
             c.rope = i("rope");
             c.v_dim = i("v_dim");
             c.n_expert = i("n_expert");
             c.n_expert_used = i("n_expert_used");
             c.n_group = i("n_group");
             c.topk_group = i("topk_group");
             c.eps = d["eps"].cast<float>();
             c.softmax_scale = d["softmax_scale"].cast<float>();
             c.routed_scale = d["routed_scale"].cast<float>();
             c.norm_topk = d["norm_topk"].cast<bool>();
             c.sigmoid = d["sigmoid"].cast<bool>();
             return new kr::StepPlan(c, n_layer, max_tokens);
           }),
           py::arg("config"), py::arg("n_layer"), py::arg("max_tokens"),
           "A native layer plan: config dict (n_embd, n_head, q_lora_rank, kv_lora_rank, nope, rope, v_dim, "
           "n_expert, n_expert_used, n_group, topk_group, eps, softmax_scale, routed_scale, norm_topk, sigmoid).")
      .def_property_readonly("max_tokens", &kr::StepPlan::max_tokens)
      .def_property_readonly("n_layer", &kr::StepPlan::n_layer)
      .def("set_rope", [](kr::StepPlan& p, py::array cos, py::array sin, int64_t rows) {
             const int64_t n = rows * (p.config().rope / 2);
             p.set_rope(vec_ptr<float>(cos, n, "cos"), vec_ptr<float>(sin, n, "sin"), rows);
           }, py::arg("cos"), py::arg("sin"), py::arg("rows"), "Rope table [rows, R/2] (kept alive by the caller).")
      .def("set_kv", [](kr::StepPlan& p, uintptr_t addr, size_t nbytes, bool f16, int64_t n_ctx) {
             const kr::StepConfig& c = p.config();
             const size_t need = (size_t)p.n_layer() * (size_t)n_ctx * (size_t)(c.kv_lora_rank + c.rope) * (f16 ? 2 : 4);
             KR_CHECK(n_ctx > 0 && nbytes >= need, "KV cache buffer too short: need " + std::to_string(need) +
                                                       " bytes, got " + std::to_string(nbytes));
             kr::KvRef kv;
             kv.base = (uint8_t*)addr;
             kv.f16 = f16;
             kv.n_ctx = n_ctx;
             p.set_kv(kv);
           }, py::arg("addr"), py::arg("nbytes"), py::arg("f16"), py::arg("n_ctx"),
           "Latent cache [n_layer, n_ctx, C + R] by address (kept alive by the caller).")
      .def("set_norms", [](kr::StepPlan& p, int64_t layer, py::array attn, py::array ffn, py::object q_a,
                           py::array kv_a) {
             const kr::StepConfig& c = p.config();
             kr::LayerPlan& L = p.layer(layer);
             L.attn_norm = vec_ptr<float>(attn, c.n_embd, "attn_norm");
             L.ffn_norm = vec_ptr<float>(ffn, c.n_embd, "ffn_norm");
             L.kv_a_norm = vec_ptr<float>(kv_a, c.kv_lora_rank, "kv_a_norm");
             L.q_a_norm = q_a.is_none() ? nullptr : vec_ptr<float>(q_a.cast<py::array>(), c.q_lora_rank, "q_a_norm");
           }, py::arg("layer"), py::arg("attn_norm"), py::arg("ffn_norm"), py::arg("q_a_norm"), py::arg("kv_a_norm"))
      .def("set_mat", [](kr::StepPlan& p, int64_t layer, const std::string& name, uintptr_t addr, int32_t type,
                         int64_t rows, int64_t cols, size_t nbytes) {
             kr::LayerPlan& L = p.layer(layer);
             kr::MatRef* dst = name == "q_a" ? &L.q_a : name == "q_b" ? &L.q_b : name == "q" ? &L.q
                             : name == "kv_a" ? &L.kv_a : name == "k_b" ? &L.k_b : name == "v_b" ? &L.v_b
                             : name == "out" ? &L.out : nullptr;
             KR_CHECK(dst != nullptr, "unknown matrix '" + name + "'");
             *dst = kr::make_mat_ref((const void*)addr, type, rows, cols, nbytes);
           }, py::arg("layer"), py::arg("name"), py::arg("addr"), py::arg("qtype"), py::arg("rows"), py::arg("cols"),
           py::arg("nbytes"), "Bind q_a, q_b, q, kv_a, k_b ([H*C, N]), v_b ([H*V, C]) or out by address.")
      .def("set_router", [](kr::StepPlan& p, int64_t layer, py::array w, py::object bias) {
             const kr::StepConfig& c = p.config();
             kr::LayerPlan& L = p.layer(layer);
             L.router_w = vec_ptr<float>(w, c.n_expert * c.n_embd, "router weight");
             L.router_b = bias.is_none() ? nullptr : vec_ptr<float>(bias.cast<py::array>(), c.n_expert, "router bias");
             L.moe = true;
           }, py::arg("layer"), py::arg("weight"), py::arg("bias"), "Router [E, D] float32 and bias [E] (or None).")
      .def("set_experts", [](kr::StepPlan& p, int64_t layer, py::array addrs, py::array nbytes,
                             const std::vector<int32_t>& types, int64_t n_ff) {
             const kr::StepConfig& c = p.config();
             KR_CHECK(types.size() == 3, "types must be (gate, up, down)");
             check_table(addrs, c.n_expert, "addrs");
             check_table(nbytes, c.n_expert, "nbytes");
             kr::LayerPlan& L = p.layer(layer);
             std::vector<kr::ExpertRef> refs;
             refs.reserve((size_t)c.n_expert);
             for (int64_t e = 0; e < c.n_expert; ++e) refs.push_back(expert_from(addrs, nbytes, types, e, n_ff, c.n_embd));
             L.experts = std::move(refs);
           }, py::arg("layer"), py::arg("addrs"), py::arg("nbytes"), py::arg("types"), py::arg("n_ff"),
           "Routed expert table: addrs / nbytes uint64 [E, 3] (gate, up, down), one type per projection.")
      .def("set_ffn", [](kr::StepPlan& p, int64_t layer, py::array addrs, py::array nbytes,
                         const std::vector<int32_t>& types, int64_t n_ff) {
             KR_CHECK(types.size() == 3, "types must be (gate, up, down)");
             check_table(addrs, 1, "addrs");
             check_table(nbytes, 1, "nbytes");
             p.layer(layer).ffn = expert_from(addrs, nbytes, types, 0, n_ff, p.config().n_embd);
           }, py::arg("layer"), py::arg("addrs"), py::arg("nbytes"), py::arg("types"), py::arg("n_ff"),
           "The shared expert (MoE layers) or the dense MLP: addrs / nbytes uint64 [1, 3].")
      .def("validate", &kr::StepPlan::validate, py::arg("layer"))
      .def_property_readonly("hidden", [](py::object self) {
             auto& p = self.cast<kr::StepPlan&>();
             return view_f32(p, p.hidden(), p.config().n_embd, self);
           }, "[max_tokens, n_embd] residual stream (in and out of each step).")
      .def_property_readonly("ffn_in", [](py::object self) {
             auto& p = self.cast<kr::StepPlan&>();
             return view_f32(p, p.ffn_in(), p.config().n_embd, self);
           }, "[max_tokens, n_embd] normed FFN input of the last attention() call.")
      .def_property_readonly("route_ids", [](py::object self) {
             auto& p = self.cast<kr::StepPlan&>();
             const int64_t k = p.config().n_expert_used;
             return py::array_t<int32_t>({p.max_tokens(), k}, {k * (int64_t)sizeof(int32_t), (int64_t)sizeof(int32_t)},
                                         p.route_ids(), self);
           }, "[max_tokens, K] routed expert ids of the last attention() call.")
      .def_property_readonly("route_weights", [](py::object self) {
             auto& p = self.cast<kr::StepPlan&>();
             return view_f32(p, p.route_weights(), p.config().n_expert_used, self);
           }, "[max_tokens, K] their weights.")
      .def("attention", [](kr::StepPlan& p, int64_t layer, int64_t T, int64_t start) {
             py::gil_scoped_release nogil;
             p.attention(layer, T, start);
           }, py::arg("layer"), py::arg("n_tokens"), py::arg("start"),
           "Norm, MLA over the cache, residual, FFN norm and router of one layer for hidden[:n_tokens].")
      .def("ffn", [](kr::StepPlan& p, int64_t layer, int64_t T, py::object slot_experts, py::object slot_ptrs) {
             const int32_t* se = nullptr;
             const uint64_t* sp = nullptr;
             int64_t n = 0;
             if (!slot_experts.is_none()) {
               py::array e = slot_experts.cast<py::array>();
               n = (int64_t)e.size();
               se = vec_ptr<int32_t>(e, n, "slot_experts");
               py::array a = slot_ptrs.cast<py::array>();
               check_table(a, n, "slot_ptrs");
               sp = (const uint64_t*)a.data();
             }
             py::gil_scoped_release nogil;
             p.ffn(layer, T, se, sp, n);
           }, py::arg("layer"), py::arg("n_tokens"), py::arg("slot_experts") = py::none(),
           py::arg("slot_ptrs") = py::none(),
           "Routed (slot_experts[j] from the slot addresses slot_ptrs[j] = gate, up, down) + shared experts, "
           "or the dense MLP, added into hidden.")
      .def("layers", [](kr::StepPlan& p, int64_t l0, int64_t l1, int64_t T, int64_t start) {
             py::gil_scoped_release nogil;
             p.layers(l0, l1, T, start);
           }, py::arg("first"), py::arg("last"), py::arg("n_tokens"), py::arg("start"),
           "Layers first..last-1 in full for hidden[:n_tokens] at positions start...");
}
