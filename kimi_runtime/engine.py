"""Engine: wires a weight source, the DeepSeek-V3 model, an expert provider and the KV cache into
whole-sequence logits and incremental prefill / decode, with simple timings."""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence, Union

import torch

from kimi_runtime.config import ModelConfig
from kimi_runtime.model.attention import KVCache
from kimi_runtime.model.deepseek import DeepseekV3
from kimi_runtime.model.linear import kernels
from kimi_runtime.model.moe import ExpertProvider
from kimi_runtime.model.weights import GGUFSource, HFSource, WeightSource

Ids = Union[Sequence[int], torch.Tensor]


class Engine:
    """attn: "auto" (naive for multi-token prefill, absorbed for decode), "naive" or "absorbed"."""

    def __init__(self, src: WeightSource, *, provider: Optional[ExpertProvider] = None,
                 n_ctx: Optional[int] = None, threads: Optional[int] = None, attn: str = "auto") -> None:
        if attn not in ("auto", "naive", "absorbed"):
            raise ValueError(f"attn must be auto, naive or absorbed (got {attn!r})")
        self.src = src
        self._set_threads(threads)
        self.model = DeepseekV3(src, provider)
        self.config: ModelConfig = src.config
        self.n_ctx = int(n_ctx or min(self.config.context_length, 4096))
        if self.n_ctx <= 0:
            raise ValueError(f"n_ctx must be positive (got {self.n_ctx})")
        self.attn = attn
        self.cache = KVCache(self.config, self.n_ctx)
        self._stats = {"prefill_tokens": 0, "prefill_s": 0.0, "decode_tokens": 0, "decode_s": 0.0}

    def _set_threads(self, threads: Optional[int]) -> None:
        """Quantized weights run on the native thread pool; torch's OpenMP pool spinning beside it on
        the same cores made prefill ~10x slower (2-core box), so torch gets one thread then."""
        k = kernels()
        quantized = isinstance(self.src, GGUFSource) and self.src.quantized
        if k is not None and quantized:
            if threads is not None:
                k.set_num_threads(int(threads))
            torch.set_num_threads(1)
        elif threads is not None:
            torch.set_num_threads(int(threads))

    @classmethod
    def from_gguf(cls, path: str, *, provider: Optional[ExpertProvider] = None, **kw: Any) -> "Engine":
        """An engine over a GGUF file; weights stay in the mmapped file."""
        return cls(GGUFSource(path), provider=provider, **kw)

    @classmethod
    def from_hf(cls, path: str, *, split_kv_b: bool = False, **kw: Any) -> "Engine":
        """An engine over a transformers DeepseekV3 directory (config.json + safetensors), float32."""
        return cls(HFSource(path, split_kv_b=split_kv_b), **kw)

    @property
    def provider(self) -> ExpertProvider:
        return self.model.provider

    def _ids(self, ids: Ids) -> torch.Tensor:
        t = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.config.n_vocab):
            raise ValueError(f"token id out of range 0..{self.config.n_vocab - 1}")
        return t

    def _absorbed(self, n: int) -> bool:
        return self.attn == "absorbed" or (self.attn == "auto" and n == 1)

    @torch.inference_mode()
    def logits(self, ids: Ids) -> torch.Tensor:
        """Logits [T, vocab] of a whole sequence, on a fresh cache (the engine's cache is reset)."""
        t = self._ids(ids)
        self.reset()
        return self.model.forward(t, self.cache, absorbed=self._absorbed(t.numel()))

    def reset(self) -> None:
        """Forget the cached context."""
        self.cache.reset()

    @torch.inference_mode()
    def prefill(self, ids: Ids, all_logits: bool = False) -> torch.Tensor:
        """Append `ids` to the context; logits of the last position [vocab] (or [T, vocab])."""
        t = self._ids(ids)
        t0 = time.perf_counter()
        out = self.model.forward(t, self.cache, absorbed=self._absorbed(t.numel()), all_logits=all_logits)
        self._stats["prefill_s"] += time.perf_counter() - t0
        self._stats["prefill_tokens"] += t.numel()
        return out if all_logits else out[0]

    @torch.inference_mode()
    def decode(self, token_id: int) -> torch.Tensor:
        """Append one token; its logits [vocab]."""
        t = self._ids([token_id])
        t0 = time.perf_counter()
        out = self.model.forward(t, self.cache, absorbed=self._absorbed(1), all_logits=False)
        self._stats["decode_s"] += time.perf_counter() - t0
        self._stats["decode_tokens"] += 1
        return out[0]

    @property
    def n_past(self) -> int:
        return self.cache.length

    def stats(self) -> dict[str, Any]:
        """Token counts, seconds and tokens/s for prefill and decode, plus the KV cache size."""
        s: dict[str, Any] = dict(self._stats)
        for k in ("prefill", "decode"):
            s[f"{k}_tok_s"] = s[f"{k}_tokens"] / s[f"{k}_s"] if s[f"{k}_s"] > 0 else 0.0
        s["n_past"] = self.cache.length
        s["kv_cache_bytes"] = self.cache.nbytes
        return s
