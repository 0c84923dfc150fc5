"""Put an Engine's model on the GPU tier, in place: quantized weights uploaded as raw bytes (GEMV for
up to 8 tokens, dequantize-to-bf16 tiles + matmul for prompts), norms / router / MLA weights and the
latent KV cache on the device, routed experts through a HybridProvider (VRAM slots + CPU). The model
code itself (model/*) is unchanged: it runs on whatever device its tensors are on; the few places that
make CPU tensors (positions, the causal mask, the embedding rows) are wrapped here.

With EmuBackend the same conversion runs on the CPU through the kernel emulator (tests)."""
from __future__ import annotations

from typing import Any, Optional

import torch

from kimi_runtime.gpu.hybrid import HybridProvider
from kimi_runtime.gpu.lanes import LaneRates
from kimi_runtime.model.linear import QLinear


class DeviceLinear:
    """A QLinear whose weight lives on the backend's device."""

    def __init__(self, q: QLinear, backend) -> None:
        self.backend = backend
        self.qtype, self.out_features, self.in_features = q.qtype, q.out_features, q.in_features
        self.raw_host = q.raw
        self.w = backend.upload(q.raw) if q.raw is not None else None
        self.weight = q.weight.to(backend.device) if q.weight is not None else None

    @property
    def nbytes(self) -> int:
        return self.w.numel() if self.w is not None else self.weight.numel() * 4

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            return x @ self.weight.T
        return self.backend.linear(self.w, self.qtype, self.out_features, self.in_features, x)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding rows: decoded on the host from the file bytes (a few rows), then uploaded."""
        if self.weight is not None:
            return self.weight[ids.to(self.weight.device)]
        q = QLinear(self.raw_host, self.qtype, self.out_features, self.in_features)
        return q.rows(ids.cpu()).to(self.backend.device)


def expert_types(src, cfg) -> dict:
    """layer -> (gate, up, down) ggml type ids of the routed experts (from the GGUF tensor table)."""
    out = {}
    for layer in cfg.moe_layers:
        p = f"blk.{layer}."
        out[layer] = tuple(int(src.model.tensors[p + f"ffn_{w}_exps.weight"].ggml_type) for w in ("gate", "up", "down"))
    return out


def make_provider(engine, backend, n_slots: int, rates: Optional[LaneRates] = None, prefetch: bool = True,
                  **kw: Any) -> HybridProvider:
    from kimi_runtime.experts.cache import store_from_model

    cfg = engine.config
    src = engine.model.src
    rates = rates or LaneRates.from_bandwidths(cpu_gbs=40, gpu_gbs=800, h2d_gbs=25)
    return HybridProvider(backend, store_from_model(src.model), expert_types(src, cfg), cfg.n_embd, cfg.n_ff_exp,
                          cfg.n_expert_used, n_slots, rates, prefetch=prefetch, **kw)


def _move(obj, backend) -> None:
    """Every tensor attribute of obj to the device, every QLinear attribute to a DeviceLinear."""
    for name, val in list(vars(obj).items()):
        if isinstance(val, torch.Tensor):
            setattr(obj, name, val.to(backend.device))
        elif isinstance(val, QLinear):
            setattr(obj, name, DeviceLinear(val, backend))


def to_gpu(engine, backend, provider: Optional[HybridProvider] = None) -> Any:
    """Convert engine.model and engine.cache for `backend` (in place); returns the engine."""
    from kimi_runtime.model.moe import MLP, MoE

    dev = backend.device
    m = engine.model
    m.native = None  # the native CPU layer step gives way to the Python layers over device tensors
    m.native_off_reason = "the GPU tier runs the layers on the device"
    _move(m, backend)  # embed, output (DeviceLinear), output_norm
    rope = m.rope
    _move(rope, backend)
    rope._pos = None
    cos_sin = type(rope).cos_sin

    def cos_sin_dev(positions: torch.Tensor, _f=cos_sin, _r=rope):
        return _f(_r, positions.to(dev))

    rope.cos_sin = cos_sin_dev
    for b in m.blocks:
        _move(b, backend)  # norms
        a = b.attn
        _move(a, backend)  # q_a/q_b/q, kv_a, out, norms
        a._w = tuple(w.to(dev) for w in (a._w or a._float_heads()))  # (W_kb, W_vb) on the device
        a.k_heads = a.v_heads = None  # per-head native CPU kernels: torch bmm on the device instead
        future = type(a)._future
        a._future = lambda T, start, _f=future: _f(T, start).to(dev)
        if isinstance(b.ffn, MLP):
            _move(b.ffn, backend)
        elif isinstance(b.ffn, MoE):
            _move(b.ffn.router, backend)
            if b.ffn.shared is not None:
                _move(b.ffn.shared, backend)
            if provider is not None:
                b.ffn.provider = provider
                provider.routers[b.ffn.layer] = b.ffn.router.weight
    if provider is not None:
        m.provider = provider
    c = engine.cache
    C = c.latent.shape[-1]
    c.kv = c.kv.to(dev)
    c.latent, c.k_rope = c.kv[..., :C], c.kv[..., C:]
    return engine
