"""The MoE feed-forward: router (sigmoid or softmax gating, correction bias for selection only,
group-limited top-k, normalised, scaled), the shared expert, and the ExpertProvider seam through which
the routed experts run (the direct provider here; a caching one lives in kimi_runtime/experts/)."""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Protocol

import torch
import torch.nn.functional as F

from kimi_runtime.config import ModelConfig
from kimi_runtime.model.linear import QLinear, kernels
from kimi_runtime.model.weights import WeightSource

# T = tokens, D = n_embd, E = routed experts, K = experts per token, G = groups

FUSED_CHUNK_TOKENS = 512
"""The direct provider runs the fused kernel for any prompt, this many tokens per call: the kernel
groups tokens per expert itself (each expert's rows read once per call), and one call per layer
(shared expert included) beat the Python loop over experts at 1 to 512 tokens (medium preset, 2
loaded cores: 512 tokens 771 vs 856 ms CPU per layer). The chunk bounds its scratch memory
(~T x (2 n_ff + n_embd) floats per expert)."""

Observer = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


class ExpertProvider(Protocol):
    def run(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [T, D] f32, ids [T, K] int64, weights [T, K] f32 -> sum_k w * expert_k(x), [T, D]
        (routed output only; the shared expert is added by the caller)."""
        ...


class MLP:
    """down(silu(gate x) * up x): dense layers and the shared expert."""

    def __init__(self, gate: QLinear, up: QLinear, down: QLinear) -> None:
        self.gate, self.up, self.down = gate, up, down

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))

    @classmethod
    def bind(cls, src: WeightSource, prefix: str, d: int, ff: int, suffix: str = "") -> "MLP":
        return cls(src.linear(f"{prefix}ffn_gate{suffix}.weight", ff, d),
                   src.linear(f"{prefix}ffn_up{suffix}.weight", ff, d),
                   src.linear(f"{prefix}ffn_down{suffix}.weight", d, ff))


class Router:
    """DeepSeek-V3 routing, as transformers' DeepseekV3TopkRouter and llama.cpp's build_moe_ffn."""

    def __init__(self, cfg: ModelConfig, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        self.cfg = cfg
        self.weight = weight  # [E, D] float32
        self.bias = bias  # [E] or None (e_score_correction_bias)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, D] -> (ids [T, K] int64, weights [T, K] f32)."""
        cfg = self.cfg
        logits = x @ self.weight.T  # [T, E]
        scores = torch.sigmoid(logits) if cfg.gating == "sigmoid" else torch.softmax(logits, dim=-1)
        choice = scores + self.bias if self.bias is not None else scores  # bias only steers selection
        if cfg.n_group > 1 and cfg.topk_group < cfg.n_group:
            T, E, G = x.shape[0], cfg.n_expert, cfg.n_group
            grouped = choice.view(T, G, E // G)
            group_scores = grouped.topk(min(2, E // G), dim=-1)[0].sum(-1)  # [T, G]
            keep = torch.topk(group_scores, cfg.topk_group, dim=-1, sorted=False)[1]  # [T, topk_group]
            gmask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
            choice = choice.masked_fill(~gmask.repeat_interleave(E // G, dim=1), float("-inf"))
        ids = torch.topk(choice, cfg.n_expert_used, dim=-1, sorted=False)[1]  # [T, K]
        w = scores.gather(1, ids)
        if cfg.norm_topk_prob:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return ids, w * cfg.routed_scaling_factor


def expert_groups(ids: torch.Tensor, n_expert: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(expert, assignment indices into ids.reshape(-1), their token indices) for every selected expert,
    in ascending expert order: each expert's weights are then used once for all its tokens."""
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_expert).tolist()  # CPU tensors: no device sync
    K = ids.shape[1]
    pos = 0
    for e, n in enumerate(counts):
        if n:
            sel = order[pos:pos + n]
            pos += n
            yield e, sel, sel // K


class DirectExpertProvider:
    """Routed experts computed straight from the weight source (mmapped GGUF bytes): the fused CPU MoE
    kernel when kimi_runtime.kernels provides it, else one QLinear triple per selected expert."""

    def __init__(self, src: WeightSource) -> None:
        self.src = src
        self.cfg = src.config
        self._experts: dict[tuple[int, int], MLP] = {}  # views only: bytes stay in the page cache
        self._layer_refs: dict[int, Optional[list]] = {}
        self._shared_refs: dict[int, object] = {}

    def expert(self, layer: int, e: int) -> MLP:
        key = (layer, e)
        mlp = self._experts.get(key)
        if mlp is None:
            mlp = MLP(*(self.src.expert(layer, e, k) for k in ("gate", "up", "down")))
            self._experts[key] = mlp
        return mlp

    def _refs(self, layer: int) -> Optional[list]:
        """Native ExpertRef handles for every expert of `layer` (views into the file), or None when
        the kernels are unavailable or the experts are float (kept exact in torch)."""
        if layer in self._layer_refs:
            return self._layer_refs[layer]
        k = kernels()
        refs = None
        if k is not None:
            mlps = [self.expert(layer, e) for e in range(self.cfg.n_expert)]
            if all(m.gate.quantized and m.up.quantized and m.down.quantized for m in mlps):
                refs = [k.expert_ref(m.gate.raw, m.up.raw, m.down.raw, (m.gate.qtype, m.up.qtype, m.down.qtype),
                                     self.cfg.n_ff_exp, self.cfg.n_embd) for m in mlps]
        self._layer_refs[layer] = refs
        return refs

    def _shared_ref(self, layer: int, shared: MLP) -> Optional[object]:
        """ExpertRef of the shared expert (appended after the routed ones), or None when float."""
        if layer not in self._shared_refs:
            k = kernels()
            ok = k is not None and shared.gate.quantized and shared.up.quantized and shared.down.quantized
            self._shared_refs[layer] = k.expert_ref(
                shared.gate.raw, shared.up.raw, shared.down.raw, (shared.gate.qtype, shared.up.qtype,
                shared.down.qtype), shared.gate.out_features, shared.gate.in_features) if ok else None
        return self._shared_refs[layer]

    def _fused(self, refs: list, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """All tokens through the fused kernel, FUSED_CHUNK_TOKENS per call."""
        x = x.contiguous()
        moe_ffn = kernels().moe_ffn
        if x.shape[0] <= FUSED_CHUNK_TOKENS:
            return moe_ffn(x, refs, ids, weights)
        out = torch.empty_like(x)  # [T, D]
        for a in range(0, x.shape[0], FUSED_CHUNK_TOKENS):
            b = a + FUSED_CHUNK_TOKENS
            moe_ffn(x[a:b], refs, ids[a:b], weights[a:b], out=out[a:b])
        return out

    def run_with_shared(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                        shared: MLP) -> Optional[torch.Tensor]:
        """Routed + shared expert in one fused call (the shared expert as one more expert of weight 1
        for every token: its gate/up/down join the same parallel phases instead of three more
        gemm calls), or None when the kernels or quantized weights are missing."""
        refs = self._refs(layer)
        sref = self._shared_ref(layer, shared) if refs is not None else None
        if sref is None:
            return None
        T = x.shape[0]
        ids = torch.cat((ids, torch.full((T, 1), len(refs), dtype=ids.dtype)), dim=1)  # [T, K+1]
        weights = torch.cat((weights, torch.ones(T, 1, dtype=weights.dtype)), dim=1)
        return self._fused(refs + [sref], x, ids, weights)

    def run(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        refs = self._refs(layer)
        if refs is not None:  # one native call for all tokens and experts
            return self._fused(refs, x, ids, weights)
        out = torch.zeros_like(x)  # [T, D]
        w = weights.reshape(-1)
        for e, sel, tok in expert_groups(ids, self.cfg.n_expert):
            y = self.expert(layer, e)(x[tok]) * w[sel].unsqueeze(1)  # [n, D]
            out[tok] += y  # a token picks an expert at most once: no duplicate indices
        return out


class MoE:
    """Router -> provider (routed) + shared expert."""

    def __init__(self, cfg: ModelConfig, layer: int, src: WeightSource, provider: ExpertProvider) -> None:
        p = f"blk.{layer}."
        self.layer = layer
        bias_name = p + "exp_probs_b.bias"
        bias = src.dense(bias_name, (cfg.n_expert,)) if src.has(bias_name) else None
        self.router = Router(cfg, src.dense(p + "ffn_gate_inp.weight", (cfg.n_expert, cfg.n_embd)), bias)
        self.shared: Optional[MLP] = None
        if cfg.n_expert_shared > 0:
            self.shared = MLP.bind(src, p, cfg.n_embd, cfg.n_ff_exp * cfg.n_expert_shared, "_shexp")
        self.provider = provider
        self.observer: Optional[Observer] = None

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        ids, w = self.router(x)  # [T, K]
        if self.observer is not None:
            self.observer(self.layer, positions, ids, w)
        if self.shared is not None and isinstance(self.provider, DirectExpertProvider):
            out = self.provider.run_with_shared(self.layer, x, ids, w, self.shared)
            if out is not None:
                return out
        out = self.provider.run(self.layer, x, ids, w)
        if self.shared is not None:
            out = out + self.shared(x)
        return out
