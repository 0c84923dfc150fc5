"""Multi-head latent attention (MLA) with a latent KV cache that stores, per token and layer, only the
normalised latent (kv_lora_rank) and the roped shared key (qk_rope_head_dim). Two equal computations:
naive (expand k/v through kv_b; prefill) and weight-absorbed (attend in latent space; decode)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from kimi_runtime.config import ModelConfig, kv_cache_bytes  # noqa: F401  (re-exported)
from kimi_runtime.model.linear import FLOAT_TYPES, HeadLinear, QLinear
from kimi_runtime.model.rope import Rope
from kimi_runtime.model.weights import WeightSource

# H = heads, T = new tokens, S = cached + new tokens, C = kv_lora_rank, R = rope dims, N = nope dims,
# V = v head dim, D = n_embd


HEADS_MAX_TOKENS = 8
"""Absorbed attention on up to this many tokens (decode) applies float k_b / v_b head by head through
the native kernels (HeadLinear); longer runs use torch's batched matmul. Quantized heads (below) go
through the kernels for any token count, so that their rounding does not depend on how a prompt
was split."""

QUANTIZED_HEADS = True
"""Read when a layer is built: absorbed attention applies the file's quantized k_b / v_b bytes (Q8_0
etc.) with 8-bit activations, as llama.cpp does, instead of float32 copies (4x the bytes for Q8_0:
2 GB per token for Kimi K2). The naive (expand through kv_b) path keeps float weights, so absorbed
and naive attention then differ by activation rounding (~0.5% per projection); tests compare each
against the reference with the same attention. Set False for float heads."""


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


CACHE_TYPES = {"f16": torch.float16, "f32": torch.float32}


class KVCache:
    """Latent cache for all layers: latent [L, n_ctx, C] and roped key [L, n_ctx, R], as two views of one
    [L, n_ctx, C + R] tensor so that decode scores a query against both in one matmul. cache_type "f16"
    (default: half the memory; values rounded to nearest even when written) or "f32" (exact)."""

    def __init__(self, cfg: ModelConfig, n_ctx: int, cache_type: str = "f32") -> None:
        if cache_type not in CACHE_TYPES:
            raise ValueError(f"cache type must be one of {', '.join(CACHE_TYPES)} (got {cache_type!r})")
        self.n_ctx = int(n_ctx)
        self.cache_type = cache_type
        C = cfg.kv_lora_rank
        self.kv = torch.zeros(cfg.n_layer, self.n_ctx, C + cfg.qk_rope_head_dim,
                              dtype=CACHE_TYPES[cache_type])  # [L, n_ctx, C + R]
        self.latent = self.kv[..., :C]
        self.k_rope = self.kv[..., C:]
        self.length = 0  # tokens committed (host-side count: no device sync to read it)
        self._bytes = kv_cache_bytes(cfg, self.n_ctx, cache_type)

    def reset(self) -> None:
        self.length = 0

    @property
    def nbytes(self) -> int:
        return self._bytes


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
        self._src, self._prefix = src, p
        self._w: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # float k_b / v_b, when kept
        # Decode multiplies each head by its own small matrix: one native call for all heads. With
        # QUANTIZED_HEADS the file's quantized bytes are used and no float copy is kept (the naive
        # path dequantizes per call); float heads are exact up to summation order.
        self.k_heads: Optional[HeadLinear] = None
        self.v_heads: Optional[HeadLinear] = None
        kb = src.quantized_tensor(p + "attn_k_b.weight") if QUANTIZED_HEADS else None
        vb = src.quantized_tensor(p + "attn_v_b.weight") if QUANTIZED_HEADS else None
        if kb is not None and vb is not None:
            self.k_heads = HeadLinear.maybe(kb[0], kb[1], H, C, N)
            self.v_heads = HeadLinear.maybe(vb[0], vb[1], H, V, C)
        if self.k_heads is None or self.v_heads is None:
            self._w = self._float_heads()
            self.k_heads = HeadLinear.from_float(self._w[0])
            self.v_heads = HeadLinear.from_float(self._w[1])
        self.scale = cfg.softmax_scale

    def _float_heads(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_kb [H, C, N], W_vb [H, V, C]) float32: q_lat[h] = W_kb[h] @ q_nope[h], o[h] = W_vb[h] @ o_lat[h]."""
        cfg, src, p = self.cfg, self._src, self._prefix
        H, N, V, C = cfg.n_head, cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        if src.has(p + "attn_k_b.weight"):
            w_kb = src.dense(p + "attn_k_b.weight", (H, C, N))
            w_vb = src.dense(p + "attn_v_b.weight", (H, V, C))
        else:
            kv_b = src.dense(p + "attn_kv_b.weight", (H * (N + V), C)).view(H, N + V, C)
            w_kb, w_vb = kv_b[:, :N].transpose(1, 2), kv_b[:, N:]
        return w_kb.contiguous(), w_vb.contiguous()

    @property
    def w_kb(self) -> torch.Tensor:
        return (self._w or self._float_heads())[0]

    @property
    def w_vb(self) -> torch.Tensor:
        return (self._w or self._float_heads())[1]

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

        kv_all = cache.kv[self.layer]
        kv_all[start:S, :C] = latent
        kv_all[start:S, C:] = k_pe
        kv_all = kv_all[:S].float()  # [S, C + R] (f16 caches are read back as float32)
        if absorbed:
            o = self._absorbed(q_nope, q_pe, kv_all, start)
        else:
            o = self._naive(q_nope, q_pe, kv_all, start)
        return self.out(o.reshape(T, -1))

    def _absorbed(self, q_nope: torch.Tensor, q_pe: torch.Tensor, kv_all: torch.Tensor,
                  start: int) -> torch.Tensor:
        """Attend in latent space: k_b folded into the query, v_b applied after. Returns [T, H, V]."""
        cfg = self.cfg
        H, C = cfg.n_head, cfg.kv_lora_rank
        T, S = q_nope.shape[0], kv_all.shape[0]
        few = self.k_heads is not None and self.v_heads is not None and (
            T <= HEADS_MAX_TOKENS or self.k_heads.qtype not in FLOAT_TYPES)
        q_h = q_nope.transpose(0, 1)  # [H, T, N]
        q_lat = self.k_heads(q_h) if few else torch.bmm(q_h, self.w_kb.transpose(1, 2))  # [H, T, C]
        q_cat = torch.cat((q_lat, q_pe.transpose(0, 1)), dim=-1).view(H * T, -1)  # [H*T, C + R]
        scores = (q_cat @ kv_all.T).view(H, T, S)  # latent and rope parts in one matmul
        scores = scores * self.scale
        if T > 1:
            scores = scores.masked_fill(self._future(T, start), float("-inf"))
        probs = torch.softmax(scores, dim=-1)  # [H, T, S]
        o_lat = (probs.view(H * T, S) @ kv_all[:, :C]).view(H, T, C)  # [H, T, C]
        o = self.v_heads(o_lat) if few else torch.bmm(o_lat, self.w_vb.transpose(1, 2))  # [H, T, V]
        return o.transpose(0, 1)  # [T, H, V]

    def _naive(self, q_nope: torch.Tensor, q_pe: torch.Tensor, kv_all: torch.Tensor,
               start: int) -> torch.Tensor:
        """Expand keys and values of every cached position through kv_b (prefill). Returns [T, H, V]."""
        cfg = self.cfg
        H, R, C = cfg.n_head, cfg.qk_rope_head_dim, cfg.kv_lora_rank
        T, S = q_nope.shape[0], kv_all.shape[0]
        lat_all = kv_all[:, :C]  # [S, C]
        w_kb, w_vb = self._w or self._float_heads()
        k_nope = torch.matmul(lat_all, w_kb)  # [H, S, N]
        v = torch.matmul(lat_all, w_vb.transpose(1, 2))  # [H, S, V]
        k = torch.cat((k_nope, kv_all[None, :, C:].expand(H, S, R)), dim=-1)  # [H, S, N+R]
        q = torch.cat((q_nope, q_pe), dim=-1).transpose(0, 1)  # [H, T, N+R]
        if start == 0:  # causal with top-left alignment is right only without a cached prefix
            o = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, scale=self.scale)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=~self._future(T, start), scale=self.scale)
        return o.transpose(0, 1)  # [T, H, V]

    @staticmethod
    def _future(T: int, start: int) -> torch.Tensor:
        """[T, S] True where a key lies after the query (queries at start..start+T-1)."""
        return torch.arange(start + T).unsqueeze(0) > torch.arange(start, start + T).unsqueeze(1)
