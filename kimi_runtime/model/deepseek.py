"""The DeepSeek-V3 / Kimi K2 decoder: weight binding from a WeightSource and the forward pass over
token ids at absolute positions, appending to a latent KV cache."""
from __future__ import annotations

from typing import Optional, Union

import torch

from kimi_runtime.config import ModelConfig
from kimi_runtime.model.attention import KVCache, MLAttention, rms_norm
from kimi_runtime.model.moe import MLP, MoE, ExpertProvider, DirectExpertProvider, Observer
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

    def __init__(self, src: WeightSource, provider: Optional[ExpertProvider] = None) -> None:
        cfg = self.config = src.config
        self.src = src
        self.provider = provider if provider is not None else DirectExpertProvider(src)
        self.rope = Rope(cfg)
        self.embed = src.linear("token_embd.weight", cfg.n_vocab, cfg.n_embd)
        out_name = "output.weight" if src.has("output.weight") else "token_embd.weight"
        self.output = src.linear(out_name, cfg.n_vocab, cfg.n_embd)
        self.output_norm = src.dense("output_norm.weight", (cfg.n_embd,))
        self.blocks = [Block(cfg, i, src, self.rope, self.provider) for i in range(cfg.n_layer)]

    def set_observer(self, observer: Optional[Observer]) -> None:
        """Route-tracing hook: observer(layer, positions [T], ids [T, K], weights [T, K])."""
        for b in self.blocks:
            if isinstance(b.ffn, MoE):
                b.ffn.observer = observer

    def forward(self, ids: torch.Tensor, cache: KVCache, *, absorbed: bool,
                all_logits: bool = True) -> torch.Tensor:
        """ids [T] int64 appended at cache.length -> logits [T, V] (or [1, V] for the last token)."""
        T = ids.shape[0]
        start = cache.length
        if start + T > cache.n_ctx:
            raise ValueError(f"context overflow: {start} + {T} tokens > n_ctx {cache.n_ctx}")
        if T == 0:
            raise ValueError("no tokens to run")
        positions = torch.arange(start, start + T)
        h = self.embed.rows(ids)  # [T, D]
        for b in self.blocks:
            h = b(h, positions, cache, start, absorbed)
        cache.length = start + T
        if not all_logits:
            h = h[-1:]
        return self.output(rms_norm(h, self.output_norm, self.config.rms_norm_eps))  # [T, V]
