"""Multi-head latent attention (MLA) with a latent KV cache that stores, per token and layer, only the
normalised latent (kv_lora_rank) and the roped shared key (qk_rope_head_dim). Two equal computations:
naive (expand k/v through kv_b; prefill) and weight-absorbed (attend in latent space; decode)."""
from __future__ import annotations

from typing import Optional

import torch

from kimi_runtime.config import ModelConfig
from kimi_runtime.model.linear import QLinear
from kimi_runtime.model.rope import Rope
from kimi_runtime.model.weights import WeightSource

# H = heads, T = new tokens, S = cached + new tokens, C = kv_lora_rank, R = rope dims, N = nope dims,
# V = v head dim, D = n_embd


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


class KVCache:
    """Latent cache for all layers: latent [L, n_ctx, C] and roped key [L, n_ctx, R], float32."""

    def __init__(self, cfg: ModelConfig, n_ctx: int) -> None:
        self.n_ctx = int(n_ctx)
        self.latent = torch.zeros(cfg.n_layer, self.n_ctx, cfg.kv_lora_rank)
        self.k_rope = torch.zeros(cfg.n_layer, self.n_ctx, cfg.qk_rope_head_dim)
        self.length = 0  # tokens committed (host-side count: no device sync to read it)

    def reset(self) -> None:
        self.length = 0

    @property
    def nbytes(self) -> int:
        return (self.latent.numel() + self.k_rope.numel()) * 4


class MLAttention:
    def __init__(self, cfg: ModelConfig, layer: int, src: WeightSource, rope: Rope) -> None:
        H, N, R, V, C, D = (cfg.n_head, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim,
                            cfg.kv_lora_rank, cfg.n_embd)
        self.cfg, self.layer, self.rope = cfg, layer, rope
        p = f"blk.{layer}."
        self.q_a: Optional[QLinear] = None
        if cfg.q_lora_rank:
            self.q_a = src.linear(p + "attn_q_a.weight", cfg.q_lora_rank, D)
            self.q_a_norm = src.dense(p + "attn_q_a_norm.weight", (cfg.q_lora_rank,))
            self.q_b = src.linear(p + "attn_q_b.weight", H * (N + R), cfg.q_lora_rank)
        else:
            self.q = src.linear(p + "attn_q.weight", H * (N + R), D)
        self.kv_a = src.linear(p + "attn_kv_a_mqa.weight", C + R, D)
        self.kv_a_norm = src.dense(p + "attn_kv_a_norm.weight", (C,))
        self.out = src.linear(p + "attn_output.weight", D, H * V)
        if src.has(p + "attn_k_b.weight"):
            self.w_uk = src.dense(p + "attn_k_b.weight", (H, C, N)).transpose(1, 2)  # [H, N, C]
            self.w_uv = src.dense(p + "attn_v_b.weight", (H, V, C))  # [H, V, C]
        else:
            kv_b = src.dense(p + "attn_kv_b.weight", (H * (N + V), C)).view(H, N + V, C)
            self.w_uk, self.w_uv = kv_b[:, :N], kv_b[:, N:]  # [H, N, C], [H, V, C]
        self.scale = cfg.softmax_scale

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache, start: int,
                 absorbed: bool) -> torch.Tensor:
        """x [T, D] at absolute positions start..start+T-1 (`positions` the same as a tensor); appends
        this layer's latents to `cache` and attends causally over cache[:start+T]. Returns [T, D]."""
        cfg = self.cfg
        H, N, R, C = cfg.n_head, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank
        T = x.shape[0]
        S = start + T
        eps = cfg.rms_norm_eps
        if self.q_a is not None:
            q = self.q_b(rms_norm(self.q_a(x), self.q_a_norm, eps))
        else:
            q = self.q(x)
        q = q.view(T, H, N + R)
        q_nope, q_pe = q[..., :N], q[..., N:]  # [T, H, N], [T, H, R]
        kv = self.kv_a(x)  # [T, C + R]
        latent = rms_norm(kv[:, :C], self.kv_a_norm, eps)  # [T, C]
        cos, sin = self.rope.cos_sin(positions)
        q_pe = Rope.apply(q_pe, cos, sin)
        k_pe = Rope.apply(kv[:, C:], cos, sin)  # [T, R]

        cache.latent[self.layer, start:S] = latent
        cache.k_rope[self.layer, start:S] = k_pe
        lat_all = cache.latent[self.layer, :S]  # [S, C]
        kpe_all = cache.k_rope[self.layer, :S]  # [S, R]

        q_pe_h = q_pe.transpose(0, 1)  # [H, T, R]
        if absorbed:
            q_lat = torch.einsum("thn,hnc->htc", q_nope, self.w_uk)  # [H, T, C]
            scores = q_lat @ lat_all.T + q_pe_h @ kpe_all.T  # [H, T, S]
        else:
            k_nope = torch.einsum("sc,hnc->hsn", lat_all, self.w_uk)  # [H, S, N]
            scores = q_nope.transpose(0, 1) @ k_nope.transpose(1, 2) + q_pe_h @ kpe_all.T  # [H, T, S]
        scores = scores * self.scale
        if T > 1:
            qpos = torch.arange(start, S).unsqueeze(1)  # [T, 1]
            mask = torch.arange(S).unsqueeze(0) > qpos  # [T, S] future keys
            scores = scores.masked_fill(mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)  # [H, T, S]
        if absorbed:
            o_lat = probs @ lat_all  # [H, T, C]
            o = torch.einsum("htc,hvc->thv", o_lat, self.w_uv)  # [T, H, V]
        else:
            v = torch.einsum("sc,hvc->hsv", lat_all, self.w_uv)  # [H, S, V]
            o = (probs @ v).transpose(0, 1)  # [T, H, V]
        return self.out(o.reshape(T, -1))
