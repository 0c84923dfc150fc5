"""Offline replay of a routing trace through cache policies at several sizes, next to Belady's MIN.

Scope "layer": each MoE layer has its own `slots` slots (what a per-layer partition of the pool
gives). Scope "global": one pool of `slots` x (MoE layers in the trace) slots shared by all layers,
so both scopes compare at the same memory. Bytes moved = loads x that layer's expert bytes.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

from kimi_runtime.experts.cachesim_adapter import CapacityTooSmall
from kimi_runtime.experts.policies import make_policy
from kimi_runtime.experts.trace import Trace


@dataclass
class ReplayResult:
    policy: str  # "+pf" appended when the trace's predictions were replayed as prefetches
    slots: int  # per layer (see the module docstring for the global scope)
    scope: str
    capacity: int  # keys the replayed cache(s) hold in total
    accesses: int
    hits: int
    bytes_moved: int
    prefetch_loads: int = 0
    prefetch_hits: int = 0
    seconds: float = 0.0

    @property
    def misses(self) -> int:
        return self.accesses - self.hits

    @property
    def hit_rate(self) -> float:
        return self.hits / self.accesses if self.accesses else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "misses": self.misses, "hit_rate": self.hit_rate}


def _streams(trace: Trace, scope: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(keys, bytes per event, is_prefetch) per independent cache: one per layer, or one global."""
    layer, e, is_pf = trace.events()
    eb = trace.expert_bytes[layer]
    if scope == "global":
        return [(layer * trace.n_experts + e, eb, is_pf)]
    if scope != "layer":
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    return [(e[layer == l], eb[layer == l], is_pf[layer == l]) for l in np.unique(layer)]


def _replay_demand(name: str, cap: int, keys: np.ndarray, nbytes: np.ndarray) -> tuple[int, int]:
    pol = make_policy(name, cap)
    pol.prepare(keys)
    hit = np.frombuffer(pol.run(keys.tolist()), dtype=np.uint8).astype(bool)
    return int(hit.sum()), int(nbytes[~hit].sum())


def _replay_prefetch(name: str, cap: int, keys: np.ndarray, nbytes: np.ndarray,
                     is_pf: np.ndarray) -> tuple[int, int, int, int]:
    """(hits, bytes moved, prefetch loads, prefetch hits). A prefetch hit is a demand hit on a key a
    prefetch loaded that no demand access has touched since."""
    pol = make_policy(name, cap)
    access, prefetch = pol.access, pol.prefetch
    pending: set[int] = set()
    hits = moved = loads = pf_hits = 0
    for k, b, pf in zip(keys.tolist(), nbytes.tolist(), is_pf.tolist()):
        if pf:
            if prefetch(k):
                pending.add(k)
                loads += 1
                moved += b
        elif access(k):
            hits += 1
            if k in pending:
                pf_hits += 1
                pending.discard(k)
        else:
            moved += b
            pending.discard(k)
    return hits, moved, loads, pf_hits


def replay(trace: Trace, policies: Sequence[str], slots: Sequence[int], scope: str = "layer",
           prefetch: Optional[bool] = None) -> list[ReplayResult]:
    """Replay `trace` for every policy x slot count. Belady is always demand-only. With
    predictions in the trace (and prefetch not False) each other policy is also replayed with them
    as prefetches, reported as "<policy>+pf". A policy that cannot run at a size (libCacheSim's
    S3-FIFO below 10 slots, ...) is left out at that size."""
    streams = _streams(trace, scope)
    n_caches = len(streams) if scope == "layer" else max(1, len(np.unique(trace.layer)))
    demand = [(k[~pf], b[~pf]) for k, b, pf in streams]
    with_pf = trace.pred_ids is not None and prefetch is not False
    out: list[ReplayResult] = []
    for s in slots:
        if s < 1:
            raise ValueError(f"slot counts must be >= 1, got {s}")
        cap = s if scope == "layer" else s * n_caches
        total_cap = s * n_caches
        for name in policies:
            try:
                probe = make_policy(name, cap)
            except CapacityTooSmall:
                continue
            t0 = time.perf_counter()
            hits = moved = 0
            for keys, nb in demand:
                h, m = _replay_demand(name, cap, keys, nb)
                hits, moved = hits + h, moved + m
            n_acc = sum(len(k) for k, _ in demand)
            out.append(ReplayResult(name, s, scope, total_cap, n_acc, hits, moved,
                                    seconds=time.perf_counter() - t0))
            if with_pf and probe.supports_prefetch:
                t0 = time.perf_counter()
                agg = [0, 0, 0, 0]
                for keys, nb, pf in streams:
                    for i, v in enumerate(_replay_prefetch(name, cap, keys, nb, pf)):
                        agg[i] += v
                out.append(ReplayResult(name + "+pf", s, scope, total_cap, n_acc, agg[0], agg[1],
                                        agg[2], agg[3], time.perf_counter() - t0))
    return out


def require_matplotlib(what: str = "--plot") -> object:
    """pyplot (Agg backend), or a clear ValueError naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ValueError(f"{what} needs matplotlib: pip install 'kimi-runtime[plot]'") from e
    return plt


def plot_hit_rates(results: Sequence[ReplayResult], path: str, title: str = "") -> None:
    """Hit rate vs slots, one line per policy (Belady dashed). Needs matplotlib (extra "plot")."""
    plt: Any = require_matplotlib()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r.policy for r in results):
        rs = sorted((r for r in results if r.policy == name), key=lambda r: r.slots)
        ax.plot([r.slots for r in rs], [r.hit_rate for r in rs], marker="o", label=name,
                linestyle="--" if name == "belady" else "-", color="black" if name == "belady" else None)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("slots per layer" if results and results[0].scope == "layer"
                  else "slots per layer (one shared pool)")
    ax.set_ylabel("hit rate")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
