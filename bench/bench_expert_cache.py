"""Expert-cache load bandwidth: bytes per second from the page-cached model file into host slots
(mmap memcpy, pread, double-buffered staging) against a plain memcpy between RAM buffers measured in
the same run. One JSON line per configuration; the target is loads >= 90% of memcpy.

    KR_EXT_DIR=build/dev python bench/bench_expert_cache.py [--experts 32 --expert-mib 12 --rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np

from kimi_runtime.experts.cache import ExpertCache, open_store


def make_file(path: str, n_experts: int, expert_bytes: int) -> dict:
    """One layer of experts, gate/up/down each a third, written contiguously (as GGUF stores
    ffn_*_exps: each expert's slice of a stacked tensor is contiguous)."""
    third = expert_bytes // 3
    block = np.random.default_rng(0).integers(0, 256, size=1 << 20, dtype=np.uint8)
    total = 3 * n_experts * third
    with open(path, "wb") as f:
        for off in range(0, total, len(block)):
            f.write(block[:min(len(block), total - off)].tobytes())
    # Stacked tensors: all gates, then all ups, then all downs.
    return {(1, e): [(0, (w * n_experts + e) * third, third) for w in range(3)] for e in range(n_experts)}


class MemcpyRound:
    """One thread copying expert-sized chunks between two pre-touched RAM buffers."""

    def __init__(self, n_experts: int, expert_bytes: int) -> None:
        self.n, self.eb = n_experts, expert_bytes
        self.src = np.ones(n_experts * expert_bytes, dtype=np.uint8)
        self.dst = np.ones(n_experts // 2 * expert_bytes, dtype=np.uint8)

    def __call__(self) -> float:
        n, eb = self.n, self.eb
        t0 = time.perf_counter()
        for e in range(n):
            d = (e % (n // 2)) * eb
            np.copyto(self.dst[d:d + eb], self.src[e * eb:(e + 1) * eb])
        return n * eb / (time.perf_counter() - t0) / 1e9


class CacheRound:
    """Loads through the cache: half as many slots as experts and a cyclic access order, so every
    acquire misses (LRU evicts exactly the expert needed last)."""

    def __init__(self, store, n_experts: int, batch: int, staging: bool, prefetch: bool) -> None:
        self.cache = ExpertCache(store, max(batch, n_experts // 2), staging=staging)
        self.n, self.batch, self.prefetch = n_experts, batch, prefetch

    def __call__(self) -> float:
        cache, n, batch = self.cache, self.n, self.batch
        cache.reset_stats()
        t0 = time.perf_counter()
        for b in range(0, n, batch):
            with cache.using(1, range(b, min(b + batch, n))):
                if self.prefetch:  # the next batch loads while this one is "computed"
                    cache.prefetch(1, range(b + batch, min(b + 2 * batch, n)))
        cache.wait_idle()
        return cache.stats()["bytes_loaded"] / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--expert-mib", type=float, default=12.0, help="bytes per expert (Kimi K2 ~2 bpw: 10.5)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batch", type=int, default=8, help="experts per acquire (top-k of a decode step)")
    ap.add_argument("--dir", default=None, help="where to write the model file (default: a temp dir)")
    args = ap.parse_args()
    eb = int(args.expert_mib * (1 << 20)) // 192 * 192  # thirds stay 64-byte aligned
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        path = os.path.join(d, "experts.bin")
        ranges = make_file(path, args.experts, eb)
        memcpy = MemcpyRound(args.experts, eb)
        configs = [("mmap", False, False), ("mmap", False, True), ("pread", False, False),
                   ("mmap", True, False)]
        runs = [CacheRound(open_store([path], 2, args.experts, ranges, mode=m), args.experts,
                           args.batch, st, pf) for m, st, pf in configs]
        # Rounds interleave memcpy and every load path, and each load round is compared with the
        # memcpy round just before it: the shared machine's load drifts, the ratio much less.
        first = [r() for r in runs]  # also pays the first touch of the mapping's page tables
        mem: list[float] = []
        gb: list[list[float]] = [[] for _ in runs]
        for _ in range(args.rounds):
            mem.append(memcpy())
            for i, r in enumerate(runs):
                gb[i].append(r())
        print(json.dumps({"what": "memcpy", "gbps_median": round(statistics.median(mem), 2),
                          "gbps_all": [round(x, 2) for x in mem], "expert_bytes": eb}))
        for (mode, staging, prefetch), g, g0 in zip(configs, gb, first):
            ratio = statistics.median(x / m for x, m in zip(g, mem))
            print(json.dumps({"what": "cache_load", "mode": mode, "staging": staging,
                              "prefetch": prefetch, "gbps_first": round(g0, 2),
                              "gbps_median": round(statistics.median(g), 2),
                              "vs_memcpy": round(ratio, 3), "batch": args.batch}))
        # The hit path's fixed cost, which a decode step pays per MoE layer.
        cache = runs[0].cache
        ids = list(range(args.batch))
        with cache.using(1, ids):
            pass
        n_calls = 20000
        t0 = time.perf_counter()
        for _ in range(n_calls):
            cache.acquire(1, ids)
            cache.release(1, ids)
        us = (time.perf_counter() - t0) / n_calls * 1e6
        print(json.dumps({"what": "hit_acquire_release", "experts": args.batch, "us_per_pair": round(us, 2)}))


if __name__ == "__main__":
    main()
