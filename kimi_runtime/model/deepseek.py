"""The DeepSeek-V3 / Kimi K2 decoder: weight binding from a WeightSource and the forward pass over
token ids at absolute positions, appending to a latent KV cache."""
from __future__ import annotations

from typing import Optional, Union

import torch

from kimi_runtime.config import ModelConfig
from kimi_runtime.model.attention import KVCache, MLAttention, rms_norm
from kimi_runtime.model.moe import MLP, MoE, ExpertProvider, DirectExpertProvider, Observer
from kimi_runtime.model.native_step import DEFAULT_UBATCH, NativeStep, native_supported
from kimi_runtime.model.rope import Rope
from kimi_runtime.model.weights import WeightSource

# T = new tokens, D = n_embd, V = vocab


class Block:
    def __init__(self, cfg: ModelConfig, layer: int, src: WeightSource, rope: Rope,
                 provider: ExpertProvider) -> None:
        p = f"blk.{layer}."
        self.eps = cfg.rms_norm_eps
        self.attn_norm = src.dense(p + "attn_norm.weight", (cfg.n_embd,))
        self.ffn_norm = src.dense(p + "ffn_norm.weight", (cfg.n_embd,))
        self.attn = MLAttention(cfg, layer, src, rope)
        self.ffn: Union[MLP, MoE]
        if cfg.is_moe_layer(layer):
            self.ffn = MoE(cfg, layer, src, provider)
        else:
            self.ffn = MLP.bind(src, p, cfg.n_embd, cfg.n_ff)

    def __call__(self, h: torch.Tensor, positions: torch.Tensor, cache: KVCache, start: int,
                 absorbed: bool) -> torch.Tensor:
        h = h + self.attn(rms_norm(h, self.attn_norm, self.eps), positions, cache, start, absorbed)
        x = rms_norm(h, self.ffn_norm, self.eps)
        return h + (self.ffn(x, positions) if isinstance(self.ffn, MoE) else self.ffn(x))


class DeepseekV3:
    """Holds the bound weights; `forward` runs new tokens against a KVCache."""

    def __init__(self, src: WeightSource, provider: Optional[ExpertProvider] = None, *,
                 native: Union[bool, str] = "auto", ubatch: int = DEFAULT_UBATCH) -> None:
        cfg = self.config = src.config
        self.src = src
        self.provider = provider if provider is not None else DirectExpertProvider(src)
        self.rope = Rope(cfg)
        self.embed = src.linear("token_embd.weight", cfg.n_vocab, cfg.n_embd)
        out_name = "output.weight" if src.has("output.weight") else "token_embd.weight"
        self.output = src.linear(out_name, cfg.n_vocab, cfg.n_embd)
        self.output_norm = src.dense("output_norm.weight", (cfg.n_embd,))
        self.blocks = [Block(cfg, i, src, self.rope, self.provider) for i in range(cfg.n_layer)]
        if ubatch < 1:
            raise ValueError(f"ubatch must be >= 1 (got {ubatch})")
        self.ubatch = int(ubatch)
        # native: "auto" (when the kernels and the provider allow it), True (required) or False.
        self.native: Optional[NativeStep] = None
        self.native_off_reason: Optional[str] = "native=False"
        if native:
            self.native_off_reason = native_supported(self)
            if self.native_off_reason is None:
                self.native = NativeStep(self, self.ubatch)
            elif native is True:
                raise ValueError(f"the native step cannot run this model: {self.native_off_reason}")

    def set_observer(self, observer: Optional[Observer]) -> None:
        """Route-tracing hook: observer(layer, positions [T], ids [T, K], weights [T, K])."""
        for b in self.blocks:
            if isinstance(b.ffn, MoE):
                b.ffn.observer = observer

    def forward(self, ids: torch.Tensor, cache: KVCache, *, absorbed: bool,
                all_logits: bool = True, python: bool = False) -> torch.Tensor:
        """ids [T] int64 appended at cache.length -> logits [T, V] (or [1, V] for the last token).
        Runs the native step when bound (always absorbed attention), unless `python`: the reference
        layers in torch, with naive or absorbed attention. Either way ubatch tokens at a time."""
        T = ids.shape[0]
        start = cache.length
        if start + T > cache.n_ctx:
            raise ValueError(f"context overflow: {start} + {T} tokens > n_ctx {cache.n_ctx}")
        if T == 0:
            raise ValueError("no tokens to run")
        if self.native is not None and not python:
            return self.native.forward(ids, cache, all_logits)
        outs = []
        for a in range(0, T, self.ubatch):
            b_ = min(T, a + self.ubatch)
            s = start + a
            positions = torch.arange(s, start + b_)
            h = self.embed.rows(ids[a:b_])  # [t, D]
            for b in self.blocks:
                h = b(h, positions, cache, s, absorbed)
            cache.length = start + b_
            if all_logits or b_ == T:
                outs.append(h if all_logits else h[-1:])
        h = torch.cat(outs) if len(outs) > 1 else outs[0]
        return self.output(rms_norm(h, self.output_norm, self.config.rms_norm_eps))  # [T, V]
