"""Engine: wires a weight source, the DeepSeek-V3 model, an expert provider (direct, or the cached one
with placement, scheduler and prefetch), routing traces and the KV cache into whole-sequence logits and
incremental prefill / decode, with timings and per-layer expert statistics."""
from __future__ import annotations

import sys
import time
import weakref
from typing import Any, Callable, Optional, Sequence, Union

import torch

from kimi_runtime.config import ModelConfig
from kimi_runtime.experts.provider import CachedExpertProvider, ExpertSetup, build_expert_setup, expert_bytes_by_layer
from kimi_runtime.model.attention import CACHE_TYPES, KVCache
from kimi_runtime.model.deepseek import DeepseekV3
from kimi_runtime.model.linear import kernels
from kimi_runtime.model.moe import ExpertProvider
from kimi_runtime.model.native_step import DEFAULT_UBATCH
from kimi_runtime.model.weights import GGUFSource, HFSource, WeightSource

Ids = Union[Sequence[int], torch.Tensor]


class Engine:
    """attn: "auto" (the native step when it can run, else the Python layers: naive for multi-token
    prefill, absorbed for decode), "naive" (Python reference, naive prefill) or "absorbed".
    native: "auto", True (required) or False (the Python reference layers). cache_type: latent KV cache
    in "f16" (default) or "f32" (exact). ubatch: tokens per micro-batch of a prompt."""

    def __init__(self, src: WeightSource, *, provider: Optional[ExpertProvider] = None,
                 n_ctx: Optional[int] = None, threads: Optional[int] = None, attn: str = "auto",
                 experts: Optional[ExpertSetup] = None, trace: Optional[str] = None,
                 cache_type: str = "f16", ubatch: int = DEFAULT_UBATCH,
                 native: Union[bool, str] = "auto") -> None:
        if attn not in ("auto", "naive", "absorbed"):
            raise ValueError(f"attn must be auto, naive or absorbed (got {attn!r})")
        if cache_type not in CACHE_TYPES:
            raise ValueError(f"cache_type must be one of {', '.join(CACHE_TYPES)} (got {cache_type!r})")
        if attn == "naive":
            if native is True:
                raise ValueError("the native step always uses absorbed attention: attn='naive' needs native=False")
            native = False
        self.src = src
        self._set_threads(src, threads)
        self.experts = experts  # placement + cached provider (from_gguf), or None
        if experts is not None and experts.provider is not None:
            if provider is not None:
                raise ValueError("give either a provider or expert cache options, not both")
            provider = experts.provider
        self.model = DeepseekV3(src, provider, native=native, ubatch=ubatch)
        if self.model.native is not None:  # the native step runs float sources on the pool as well
            self._set_threads(src, threads, pool=True)
        self.config: ModelConfig = src.config
        self.trace_writer: Any = None
        if trace is not None:
            self._open_trace(str(trace))
        self.n_ctx = int(n_ctx or min(self.config.context_length, 4096))
        if self.n_ctx <= 0:
            raise ValueError(f"n_ctx must be positive (got {self.n_ctx})")
        self.attn = attn
        self.cache_type = cache_type
        self.cache = KVCache(self.config, self.n_ctx, cache_type)
        self._stats = {"prefill_tokens": 0, "prefill_s": 0.0, "decode_tokens": 0, "decode_s": 0.0}

    def _open_trace(self, path: str) -> None:
        """Record every MoE layer's routing (and the prefetcher's guesses) to `path`, written on close()
        or, failing that, when the engine is collected / the interpreter exits."""
        from kimi_runtime.experts.trace import DEFAULT_EXPERT_BYTES, TraceWriter  # noqa: PLC0415

        cfg = self.config
        eb = expert_bytes_by_layer(self.src) if isinstance(self.src, GGUFSource) else DEFAULT_EXPERT_BYTES
        w = TraceWriter(path, n_layers=cfg.n_layer, n_experts=cfg.n_expert, top_k=cfg.n_expert_used,
                        expert_bytes=eb, meta={"model": str(getattr(self.src, "path", ""))})
        self.model.set_observer(w.observer)
        if isinstance(self.provider, CachedExpertProvider):
            self.provider.on_predict = w.predict
        self.trace_writer = w
        self._trace_finalizer = weakref.finalize(self, w.close)

    @staticmethod
    def _set_threads(src: WeightSource, threads: Optional[int], pool: bool = False) -> None:
        """Quantized weights (and the native step) run on the native thread pool; torch's OpenMP pool
        spinning beside it on the same cores made prefill ~10x slower (2-core box), so torch gets one
        thread then."""
        k = kernels()
        quantized = pool or (isinstance(src, GGUFSource) and src.quantized)
        if k is not None and quantized:
            if threads is not None:
                k.set_num_threads(int(threads))
            torch.set_num_threads(1)
        elif threads is not None:
            torch.set_num_threads(int(threads))

    @classmethod
    def from_gguf(cls, path: str, *, provider: Optional[ExpertProvider] = None,
                  cache_fraction: Optional[float] = None, cache_slots: Optional[int] = None,
                  cache_policy: str = "lfu", prefetch: bool = False, overrides: Sequence[str] = (),
                  cpu_moe: bool = False, n_cpu_moe: int = 0, gpu_budget: Union[int, str, None] = None,
                  ram_budget: Union[int, str, None] = None, trace: Optional[str] = None,
                  miss_policy: str = "auto", admit: Union[bool, str] = "auto", cost_model: Any = None,
                  expert_reads: str = "auto", n_readers: Optional[int] = None, mlock: bool = False,
                  report: Union[bool, Callable[[str], None]] = True, **kw: Any) -> "Engine":
        """An engine over a GGUF file; weights stay in the mmapped file.

        The expert cache is on when a size is given: `cache_slots` (slots), `cache_fraction` (of the
        cacheable experts) or a `gpu_budget` / `ram_budget` (bytes or "24GiB"; auto-fit gives the rest
        of the budget to slots). Without one the routed experts run straight from the file.
        cache_policy: "lru" or "lfu"; prefetch: next-layer router guesses (needs a cache);
        overrides: "REGEX=DEVICE" rules (cpu, gpu, cache), first match wins, with `cpu_moe` /
        `n_cpu_moe` as shorthands: experts placed on "cpu" never enter the cache.
        miss_policy: "auto" (measured cost model), "cpu" or "fetch"; admit: load CPU-computed misses
        into slots in the background (True, False, or "auto": when the cost model says hits pay);
        cost_model: a scheduler.CostModel instead of measuring one. expert_reads: "auto" (the disk tier,
        O_DIRECT reads by `n_readers` threads, when a ram_budget holds fewer slots than experts), "mmap",
        "pread" or "direct"; mlock: lock the non-expert weights in RAM. trace: path of a routing trace
        written on close(). report: True prints the placement to stderr, a callable gets each line.
        """
        src = GGUFSource(path)
        cls._set_threads(src, kw.get("threads"))
        n_ctx = kw.get("n_ctx") or min(src.config.context_length, 4096)
        setup = build_expert_setup(
            src, cache_fraction=cache_fraction, cache_slots=cache_slots, cache_policy=cache_policy,
            prefetch=prefetch, overrides=overrides, cpu_moe=cpu_moe, n_cpu_moe=n_cpu_moe,
            gpu_budget=gpu_budget, ram_budget=ram_budget, miss_policy=miss_policy, admit=admit,
            cost_model=cost_model, n_ctx=int(n_ctx), expert_reads=expert_reads, n_readers=n_readers,
            mlock=mlock)
        if report:
            emit = report if callable(report) else (lambda line: print(f"placement: {line}", file=sys.stderr))
            for line in setup.lines:
                emit(line)
        return cls(src, provider=provider, experts=setup, trace=trace, **kw)

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
        """Python layers: naive attention for prompts (cheaper) unless the heads are quantized, whose
        absorbed path rounds differently from the float naive one: then every step is absorbed, so a
        prompt and its token-by-token decode give the same logits."""
        if self.attn != "auto":
            return self.attn == "absorbed"
        return n == 1 or self._quantized_heads

    @property
    def _quantized_heads(self) -> bool:
        from kimi_runtime.model.linear import FLOAT_TYPES  # noqa: PLC0415

        return any(b.attn.k_heads is not None and b.attn.k_heads.qtype not in FLOAT_TYPES for b in self.model.blocks)

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
        """Append `ids` to the context; logits of the last position [vocab] (or [T, vocab]).

        Without all_logits the last token runs as a one-token step of its own: quantized kernels and
        the two MLA paths round differently for a batch than for one token, and this keeps the
        returned logits independent of how a prompt was split (a chat prefix served from the KV
        cache, then its tail) so that seeded requests repeat exactly."""
        t = self._ids(ids)
        t0 = time.perf_counter()
        if all_logits or t.numel() == 1:
            out = self.model.forward(t, self.cache, absorbed=self._absorbed(t.numel()), all_logits=all_logits)
        else:
            if self.cache.length + t.numel() > self.cache.n_ctx:  # fail before touching the cache
                raise ValueError(f"context overflow: {self.cache.length} + {t.numel()} tokens > "
                                 f"n_ctx {self.cache.n_ctx}")
            self.model.forward(t[:-1], self.cache, absorbed=self._absorbed(t.numel() - 1), all_logits=False)
            out = self.model.forward(t[-1:], self.cache, absorbed=self._absorbed(1), all_logits=False)
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

    def truncate(self, n: int) -> None:
        """Keep the first n cached positions (chat prefix reuse); later ones are overwritten."""
        n = int(n)
        if not 0 <= n <= self.cache.length:
            raise ValueError(f"truncate({n}): the cache holds {self.cache.length} positions")
        self.cache.length = n

    def stats(self) -> dict[str, Any]:
        """Token counts, seconds and tokens/s for prefill and decode, the KV cache size and, with the
        expert cache, `layers` (per MoE layer: hits, misses, prefetch_hits, bytes_loaded, evictions,
        stall_seconds, cpu_misses, fetched, ...) with totals, hit_rate, the prefetcher's accuracy and
        `tiers` (per tier of the cache chain - ram, disk: hits, misses, bytes, stall_seconds, ...)."""
        s: dict[str, Any] = dict(self._stats)
        for k in ("prefill", "decode"):
            s[f"{k}_tok_s"] = s[f"{k}_tokens"] / s[f"{k}_s"] if s[f"{k}_s"] > 0 else 0.0
        s["n_past"] = self.cache.length
        s["kv_cache_bytes"] = self.cache.nbytes
        s["cache_type"] = self.cache_type
        s["native_step"] = self.model.native is not None
        if self.experts is not None:
            s.update(self.experts.stats())
        return s

    def reset_stats(self) -> None:
        """Zero the timings and the expert counters (the cache contents stay)."""
        self._stats = {k: type(v)() for k, v in self._stats.items()}
        if self.experts is not None:
            self.experts.reset_stats()

    def close(self) -> None:
        """Write the routing trace (if any); the engine stays usable, tracing stops."""
        if self.trace_writer is not None:
            if self.experts is not None and self.experts.provider is not None:
                self.trace_writer.meta["tiers"] = self.experts.tier_stats()  # the cache chain's counters
            self.model.set_observer(None)
            if isinstance(self.provider, CachedExpertProvider):
                self.provider.on_predict = None
            self.trace_writer.close()
            self.trace_writer = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
