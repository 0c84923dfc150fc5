"""Rotary position embedding for MLA's rope dims: plain or YaRN, applied to interleaved pairs
(x0, x1), (x2, x3), ... as llama.cpp's NORM rope and transformers' rope_interleave=True."""
from __future__ import annotations

import math
from typing import Optional

import torch

from kimi_runtime.config import ModelConfig, yarn_get_mscale


def _correction_dim(n_rot: float, dim: int, base: float, orig_ctx: int) -> float:
    return dim * math.log(orig_ctx / (n_rot * 2 * math.pi)) / (2 * math.log(base))


def yarn_params(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """(inv_freq [rope_dim / 2] float32, cos/sin magnitude) for `cfg`.

    YaRN blends interpolated (1 / (factor * base^(2i/d))) and extrapolated frequencies with a linear
    ramp between the correction dims of beta_fast and beta_slow (floored / ceiled, clamped to the
    dimension range), exactly as transformers' `_compute_yarn_parameters`. We honour the file's
    beta_fast / beta_slow; llama.cpp's deepseek2 loader ignores them and always uses 32 / 1, so a
    Kimi K2-Instruct file (beta_fast 1) gives different logits in llama.cpp unless the caller passes
    yarn_beta_fast / yarn_beta_slow explicitly.

    The cos/sin magnitude is mscale(factor, mscale) / mscale(factor, mscale_all_dim): 1 for every
    DeepSeek/Kimi checkpoint (mscale == mscale_all_dim == 1) and for GGUF files, whose loader
    assumes mscale == mscale_all_dim. The softmax side of YaRN is `ModelConfig.softmax_scale`.
    """
    dim = cfg.qk_rope_head_dim
    base = cfg.rope_theta
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    inv_extra = 1.0 / pos_freqs
    rs = cfg.rope_scaling
    if not rs.enabled:
        return inv_extra, 1.0
    if rs.original_context_length <= 0:
        raise ValueError("YaRN rope needs original_context_length > 0")
    inv_inter = 1.0 / (rs.factor * pos_freqs)
    beta_fast = rs.beta_fast or 32.0
    beta_slow = rs.beta_slow or 1.0
    low = math.floor(_correction_dim(beta_fast, dim, base, rs.original_context_length))
    high = math.ceil(_correction_dim(beta_slow, dim, base, rs.original_context_length))
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extra_w = 1 - ramp  # weight of the extrapolated (unscaled) frequency
    inv_freq = inv_inter * (1 - extra_w) + inv_extra * extra_w
    mag = yarn_get_mscale(rs.factor, rs.mscale) / yarn_get_mscale(rs.factor, rs.mscale_all_dim)
    return inv_freq, float(mag)


class Rope:
    """Applies rope at absolute positions. The table (T x R/2 values) is computed once per positions
    tensor: every layer of a forward pass gets the same one, so the other layers reuse it."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.inv_freq, self.magnitude = yarn_params(cfg)  # [R/2]
        self._pos: Optional[torch.Tensor] = None  # held, so its id cannot be reused by a new tensor
        self._cs: tuple[torch.Tensor, torch.Tensor] = (self.inv_freq, self.inv_freq)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] int -> cos, sin [T, R/2]."""
        if positions is not self._pos:
            freqs = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]  # [T, R/2]
            self._pos, self._cs = positions, (freqs.cos() * self.magnitude, freqs.sin() * self.magnitude)
        return self._cs

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [T, ..., R] with pairs interleaved; cos/sin [T, R/2]. Returns the same layout."""
        while cos.dim() < x.dim():
            cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over head dims
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)  # [..., R/2, 2]
        return out.flatten(-2)
