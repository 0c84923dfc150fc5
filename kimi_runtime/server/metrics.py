"""Server counters rendered as Prometheus text (exposition format 0.0.4): requests, tokens, speed,
queue depth, and the engine's expert-cache statistics per layer when it reports them."""
from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any, Callable, Mapping, Optional

PREFIX = "kimi_runtime"


def _num(v: Any) -> Optional[float]:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return None


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class Metrics:
    """Thread-safe counters; the worker thread and the HTTP handlers both update them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cancelled = 0
        self.rejected = 0
        self.prefill_tok_s = 0.0
        self.decode_tok_s = 0.0
        self.prefill_seconds = 0.0
        self.decode_seconds = 0.0

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, int(status))] += 1
            if status == 429:
                self.rejected += 1

    def generation(self, usage: Any, timings: Any, finish_reason: str) -> None:
        with self._lock:
            if usage is not None:
                self.prompt_tokens += usage.prompt_tokens
                self.completion_tokens += usage.completion_tokens
            if timings is not None:
                self.prefill_seconds += timings.prefill_s
                self.decode_seconds += timings.decode_s
                if timings.prefill_s > 0:
                    self.prefill_tok_s = timings.prefill_tok_s
                if timings.decode_tokens > 0:
                    self.decode_tok_s = timings.decode_tok_s
            if finish_reason == "cancelled":
                self.cancelled += 1

    def render(self, queue_depth: int, running: int,
               engine_stats: Optional[Callable[[], Any]] = None) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {PREFIX}_{name} {help_}")
            lines.append(f"# TYPE {PREFIX}_{name} {kind}")
            for labels, v in samples:
                lines.append(f"{PREFIX}_{name}{labels} {_fmt(v)}")

        with self._lock:
            metric("requests_total", "counter", "HTTP requests by endpoint and status.",
                   [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in sorted(self.requests.items())])
            metric("requests_rejected_total", "counter", "Requests refused because the queue was full.",
                   [("", self.rejected)])
            metric("requests_cancelled_total", "counter", "Generations stopped by a client disconnect.",
                   [("", self.cancelled)])
            metric("prompt_tokens_total", "counter", "Prompt tokens processed.", [("", self.prompt_tokens)])
            metric("completion_tokens_total", "counter", "Tokens generated.", [("", self.completion_tokens)])
            metric("prefill_seconds_total", "counter", "Time spent in prefill.", [("", self.prefill_seconds)])
            metric("decode_seconds_total", "counter", "Time spent in decode.", [("", self.decode_seconds)])
            metric("prefill_tokens_per_second", "gauge", "Prompt speed of the last request.",
                   [("", self.prefill_tok_s)])
            metric("decode_tokens_per_second", "gauge", "Decode speed of the last request.",
                   [("", self.decode_tok_s)])
        metric("queue_depth", "gauge", "Requests waiting for the engine.", [("", queue_depth)])
        metric("requests_running", "gauge", "Requests on the engine now.", [("", running)])
        if engine_stats is not None:
            try:
                stats = engine_stats()
            except Exception as e:  # stats must never take /metrics down
                lines.append(f"# engine stats unavailable: {type(e).__name__}")
                stats = None
            if isinstance(stats, Mapping):
                _engine_lines(stats, metric)
        return "\n".join(lines) + "\n"


def _engine_lines(stats: Mapping[str, Any], metric: Callable[..., None]) -> None:
    """Scalars become kimi_runtime_engine_<key>; a per-layer table (`layers`: list of dicts, or a dict
    keyed by layer) becomes kimi_runtime_cache_<field>{layer="i"}; the expert cache's tiers (`tiers`:
    {"ram": {...}, "disk": {...}, "vram": {...}}) become kimi_runtime_tier_<field>{tier="ram"}."""
    per_layer: dict[str, list[tuple[str, float]]] = defaultdict(list)
    per_tier: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for key, val in stats.items():
        v = _num(val)
        if v is not None:
            metric(f"engine_{_name(key)}", "gauge", f"Engine statistic {key}.", [("", v)])
        elif key == "tiers" and isinstance(val, Mapping):
            for tier, row in val.items():
                for f, x in (row.items() if isinstance(row, Mapping) else ()):
                    n = _num(x)
                    if n is not None:
                        per_tier[_name(f)].append((f'{{tier="{_name(tier)}"}}', n))
        elif key in ("layers", "per_layer", "cache_layers"):
            rows = val.items() if isinstance(val, Mapping) else enumerate(val or [])
            for layer, row in rows:
                if isinstance(row, Mapping):
                    for f, x in row.items():
                        n = _num(x)
                        if n is not None:
                            per_layer[_name(f)].append((f'{{layer="{layer}"}}', n))
        elif isinstance(val, Mapping):
            for f, x in val.items():
                n = _num(x)
                if n is not None:
                    metric(f"engine_{_name(key)}_{_name(f)}", "gauge", f"Engine statistic {key}.{f}.",
                           [("", n)])
    for f, samples in sorted(per_layer.items()):
        metric(f"cache_{f}", "gauge", f"Expert cache {f} per layer.", samples)
    for f, samples in sorted(per_tier.items()):
        metric(f"tier_{f}", "gauge", f"Expert cache tier {f} (hits, misses, bytes, stall seconds...).", samples)


def _name(s: Any) -> str:
    out = "".join(c if c.isalnum() else "_" for c in str(s).lower())
    return out if out and not out[0].isdigit() else "_" + out
