"""NativeStep: the decoder's layer loop in native code (csrc/cpu/layer.h). At bind time every layer's
weight references (raw GGUF rows, never copied), norms, router and expert tables are handed to one
native StepPlan, which owns the scratch for a micro-batch; a forward pass then copies the embedded
tokens in, runs each micro-batch through all layers in one native call and reads the last hidden
rows out. The Python model (deepseek.py, attention.py, moe.py) stays the readable reference the
native step is tested against.

With the expert cache the loop runs per layer: the native attention half (which also routes), the
cached provider's scheduling in Python, then the native FFN half with the slot addresses of the
experts it placed; a routing observer (traces) gets the routing of each layer the same way."""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from gguf import GGMLQuantizationType

from kimi_runtime.model.attention import KVCache, rms_norm
from kimi_runtime.model.linear import FLOAT_TYPES, QLinear, kernels
from kimi_runtime.model.moe import MLP, DirectExpertProvider, MoE

if TYPE_CHECKING:
    from kimi_runtime.model.deepseek import DeepseekV3

# T = tokens, D = n_embd, K = experts per token

DEFAULT_UBATCH = 512
"""Tokens per micro-batch: the native scratch (and the fused MoE call's) is sized for this many, so a
prompt of any length runs in bounded memory, and each expert's rows are read once per micro-batch."""


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to(torch.float32).numpy())


def _mat(lin: QLinear) -> tuple[int, int, int, int, int, Any]:
    """(address, type, rows, cols, nbytes, owner) of a QLinear's weight as the native side reads it."""
    if lin.raw is not None:
        a = lin.raw
        return int(a.ctypes.data), int(lin.qtype), lin.out_features, lin.in_features, int(a.nbytes), a
    a = _f32(lin.weight)
    return int(a.ctypes.data), int(GGMLQuantizationType.F32), lin.out_features, lin.in_features, int(a.nbytes), a


def _mlp_table(mlps: list[MLP]) -> tuple[np.ndarray, np.ndarray, list[int], list[Any]]:
    """uint64 address and byte tables [n, 3] (gate, up, down), one type per projection, the owners."""
    addrs = np.zeros((len(mlps), 3), dtype=np.uint64)
    nbytes = np.zeros((len(mlps), 3), dtype=np.uint64)
    types: Optional[list[int]] = None
    keep: list[Any] = []
    for i, m in enumerate(mlps):
        row_types = []
        for j, q in enumerate((m.gate, m.up, m.down)):
            a, t, _, _, n, owner = _mat(q)
            addrs[i, j], nbytes[i, j] = a, n
            row_types.append(t)
            keep.append(owner)
        if types is None:
            types = row_types
        elif row_types != types:
            raise ValueError("experts of one layer must share their types")
    return addrs, nbytes, types or [0, 0, 0], keep


def native_supported(model: "DeepseekV3") -> Optional[str]:
    """None when the native step can run `model`, else why not."""
    if os.environ.get("KR_NATIVE_STEP", "1") == "0":
        return "KR_NATIVE_STEP=0"
    if kernels() is None:
        return "native kernels unavailable (KR_KERNELS=0)"
    from kimi_runtime.experts.provider import CachedExpertProvider  # noqa: PLC0415 - imports model.moe

    p = model.provider
    if type(p) is not DirectExpertProvider and type(p) is not CachedExpertProvider:
        return f"expert provider {type(p).__name__} runs in Python"
    if isinstance(p, CachedExpertProvider) and any(p._refs(i) is None for i in model.config.moe_layers):
        return "the cached provider runs float experts in Python"
    if isinstance(p, CachedExpertProvider) and p.slots_only:
        # The native FFN takes one table per layer; a prompt needing more experts than there are slots
        # goes through the slots in windows, which the Python provider does (each expert read once).
        return "the disk tier streams experts through slot windows in Python"
    return None


class NativeStep:
    """The native layer loop of one DeepseekV3 (see the module doc). `ubatch`: tokens per micro-batch."""

    def __init__(self, model: "DeepseekV3", ubatch: int = DEFAULT_UBATCH) -> None:
        from kimi_runtime._native import C  # noqa: PLC0415
        from kimi_runtime.experts.provider import CachedExpertProvider  # noqa: PLC0415

        cfg = self.config = model.config
        if ubatch < 1:
            raise ValueError(f"ubatch must be >= 1 (got {ubatch})")
        self.model = model
        self.ubatch = int(ubatch)
        self.cached = isinstance(model.provider, CachedExpertProvider)
        d = dict(n_embd=cfg.n_embd, n_head=cfg.n_head, q_lora_rank=cfg.q_lora_rank, kv_lora_rank=cfg.kv_lora_rank,
                 nope=cfg.qk_nope_head_dim, rope=cfg.qk_rope_head_dim, v_dim=cfg.v_head_dim,
                 n_expert=cfg.n_expert, n_expert_used=cfg.n_expert_used, n_group=cfg.n_group,
                 topk_group=cfg.topk_group, eps=cfg.rms_norm_eps, softmax_scale=cfg.softmax_scale,
                 routed_scale=cfg.routed_scaling_factor, norm_topk=cfg.norm_topk_prob,
                 sigmoid=cfg.gating == "sigmoid")
        self.plan = C.StepPlan(d, cfg.n_layer, self.ubatch)
        self._keep: list[Any] = []  # owners of every bound address
        for i, b in enumerate(model.blocks):
            self._bind_layer(i, b)
        self.hidden = torch.from_numpy(self.plan.hidden)  # [ubatch, D] views of the native scratch
        self.ffn_in = torch.from_numpy(self.plan.ffn_in)
        self.route_ids = torch.from_numpy(self.plan.route_ids)
        self.route_weights = torch.from_numpy(self.plan.route_weights)
        self._kv: Optional[KVCache] = None
        self._rope_rows = 0
        self.native_seconds = 0.0  # wall time inside native calls (layers, output projection), for profiles

    def _keep_arr(self, t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
        if t is None:
            return None
        a = _f32(t)
        self._keep.append(a)
        return a

    def _bind_layer(self, i: int, b: Any) -> None:
        p, att = self.plan, b.attn
        p.set_norms(i, self._keep_arr(b.attn_norm), self._keep_arr(b.ffn_norm),
                    self._keep_arr(att.q_a_norm) if att.q_a is not None else None, self._keep_arr(att.kv_a_norm))
        mats = {"kv_a": att.kv_a, "out": att.out}
        if att.q_a is not None:
            mats.update(q_a=att.q_a, q_b=att.q_b)
        else:
            mats["q"] = att.q
        for name, lin in mats.items():
            a, t, rows, cols, n, owner = _mat(lin)
            self._keep.append(owner)
            p.set_mat(i, name, a, t, rows, cols, n)
        for name, hl in (("k_b", att.k_heads), ("v_b", att.v_heads)):
            if hl is None:
                raise ValueError("the native step needs the heads kernels")
            self._keep.append(hl.raw)
            p.set_mat(i, name, int(hl.raw.ctypes.data), int(hl.qtype), hl.heads * hl.rows, hl.cols, int(hl.raw.nbytes))
        ffn = b.ffn
        if isinstance(ffn, MoE):
            p.set_router(i, self._keep_arr(ffn.router.weight), self._keep_arr(ffn.router.bias))
            prov = self.model.provider
            mlps = [prov.expert(i, e) for e in range(self.config.n_expert)]
            addrs, nbytes, types, keep = _mlp_table(mlps)
            self._keep += keep
            p.set_experts(i, addrs, nbytes, types, self.config.n_ff_exp)
            shared = ffn.shared
        else:
            shared = ffn
        if shared is not None:
            addrs, nbytes, types, keep = _mlp_table([shared])
            self._keep += keep
            p.set_ffn(i, addrs, nbytes, types, shared.gate.out_features)
        p.validate(i)

    def _bind_cache(self, cache: KVCache) -> None:
        if cache is self._kv and self._rope_rows >= cache.n_ctx:
            return
        if not cache.kv.is_contiguous():
            raise ValueError("the KV cache tensor must be contiguous")
        if cache.n_ctx > self._rope_rows:
            cos, sin = self.model.rope.cos_sin(torch.arange(cache.n_ctx))  # the reference's own table
            self._cos, self._sin = _f32(cos), _f32(sin)
            self.plan.set_rope(self._cos, self._sin, cache.n_ctx)
            self._rope_rows = cache.n_ctx
        kv = cache.kv
        self.plan.set_kv(int(kv.data_ptr()), kv.numel() * kv.element_size(), kv.dtype == torch.float16, cache.n_ctx)
        self._kv = cache

    def forward(self, ids: torch.Tensor, cache: KVCache, all_logits: bool) -> torch.Tensor:
        """ids [T] appended at cache.length -> logits [T, V] (or [1, V]); as DeepseekV3.forward."""
        model, cfg = self.model, self.config
        T = ids.shape[0]
        start = cache.length
        self._bind_cache(cache)
        observer = self._observer()
        per_layer = self.cached or observer is not None
        outs = []
        for a in range(0, T, self.ubatch):
            n = min(self.ubatch, T - a)
            self.hidden[:n] = model.embed.rows(ids[a:a + n])
            if per_layer:
                self._layers_python_loop(n, start + a, observer)
            else:
                t0 = time.perf_counter()
                self.plan.layers(0, cfg.n_layer, n, start + a)
                self.native_seconds += time.perf_counter() - t0
            if all_logits:
                outs.append(self._logits(self.hidden[:n]))
        cache.length = start + T
        if all_logits:
            return torch.cat(outs) if len(outs) > 1 else outs[0]
        return self._logits(self.hidden[n - 1:n])

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = rms_norm(h, m.output_norm, self.config.rms_norm_eps)
        t0 = time.perf_counter()
        out = m.output(x)
        self.native_seconds += time.perf_counter() - t0
        return out

    def _observer(self) -> Any:
        for b in self.model.blocks:
            if isinstance(b.ffn, MoE) and b.ffn.observer is not None:
                return b.ffn.observer
        return None

    def _layers_python_loop(self, n: int, start: int, observer: Any) -> None:
        """Per layer: native attention (+ router), the observer and the cache's decisions, native FFN."""
        p, prov = self.plan, self.model.provider
        positions = torch.arange(start, start + n) if observer is not None else None
        clock = time.perf_counter

        def ffn(i: int, experts: Any = None, ptrs: Any = None) -> None:
            t0 = clock()
            p.ffn(i, n, experts, ptrs)
            self.native_seconds += clock() - t0

        for i, b in enumerate(self.model.blocks):
            t0 = clock()
            p.attention(i, n, start)
            self.native_seconds += clock() - t0
            if not isinstance(b.ffn, MoE):
                ffn(i)
                continue
            if observer is not None:
                observer(i, positions, self.route_ids[:n].to(torch.int64), self.route_weights[:n].clone())
            if self.cached:
                prov.run_native(i, self.ffn_in[:n], self.route_ids[:n], lambda experts, ptrs, i=i: ffn(i, experts, ptrs))
            else:
                ffn(i)
