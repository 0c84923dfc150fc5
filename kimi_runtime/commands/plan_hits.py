"""Which expert-cache hit rates a cache of a given size can reach, for `plan`.

A hit-rate row is only worth printing if some cache of that size could achieve it. The ceiling is
Belady's optimum (evict the expert used furthest in the future: no online policy does better) at
the plan's slots per layer, replayed over a routing trace: one recorded by `run --trace` when
given, else a seeded synthetic decode trace with the model's expert count and top-k
(experts/trace.py's routing model at its defaults: skew 1.0, persistence 0.95). LRU on the same
trace is shown as what an ordinary cache gets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

SYNTH_STEPS = 1000
SYNTH_LAYERS = 4  # layers are independent in the routing model: a few give the rate, 60 only cost time


@dataclass(frozen=True)
class HitCeiling:
    slots_per_layer: int
    belady: float  # the best any cache of this size reaches on the trace
    lru: float
    source: str  # "trace FILE" or "synthetic routing (...)"


def hit_ceiling(slot_fraction: float, n_experts: int, top_k: int, trace_path: Optional[str] = None,
                seed: int = 0) -> Optional[HitCeiling]:
    """None when there is nothing to bound (no cache, or every expert fits)."""
    from kimi_runtime.experts.replay import replay

    if slot_fraction <= 0:
        return None
    if trace_path:
        from kimi_runtime.experts.trace import load_trace

        trace = load_trace(trace_path)
        source = f"trace {trace_path}"
        n_experts = trace.n_experts
    else:
        from kimi_runtime.experts.trace import synthetic_trace

        trace = synthetic_trace(SYNTH_STEPS, n_layers=SYNTH_LAYERS, n_experts=n_experts, top_k=top_k, seed=seed)
        source = "synthetic routing (skew 1.0, persistence 0.95)"
    slots = max(1, round(slot_fraction * n_experts))
    if slots >= n_experts:
        return None
    res = {r.policy: r.hit_rate for r in replay(trace, ["belady", "lru"], [slots], prefetch=False)}
    return HitCeiling(slots, res["belady"], res["lru"], source)
