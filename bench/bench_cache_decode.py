"""Decode tok/s and expert-cache hit rate on the medium synthetic preset at cache sizes of 10, 25, 50 and
100% of the experts (host tier) against the direct provider, in one run: one table on stdout, one JSON
line per configuration in bench/results/cache_decode.jsonl. Every configuration decodes the same
teacher-forced tokens, so routing is identical and the logits are checked equal to the direct run;
the direct run is repeated last to show how much the (shared) machine drifted meanwhile.

    KR_EXT_DIR=build/dev python bench/bench_cache_decode.py [--preset medium --sizes 10,25,50,100 --tokens 32]

Modes: fetch = every miss loaded into a slot and computed there (a demand-filled cache);
auto = the measured cost model (on the host tier: misses on the CPU from the file, no admission);
fetch+pf = fetch with the next-layer prefetcher.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from typing import Any, Optional

import torch

from kimi_runtime.commands.demo import ensure_model
from kimi_runtime.engine import Engine

MODES = {"fetch": dict(miss_policy="fetch"), "auto": dict(miss_policy="auto"),
         "fetch+pf": dict(miss_policy="fetch", prefetch=True)}


def run_one(path: str, ids: list[int], prompt: int, cache: Optional[dict[str, Any]], threads: Optional[int],
            ref: Optional[torch.Tensor]) -> tuple[dict[str, Any], torch.Tensor]:
    kw: dict[str, Any] = dict(cache or {})
    if threads:
        kw["threads"] = threads
    t0 = time.perf_counter()
    eng = Engine.from_gguf(path, report=False, **kw)
    load_s = time.perf_counter() - t0
    eng.prefill(ids[:prompt])
    eng.reset_stats()  # decode only from here; the cache keeps what the prompt left
    t0 = time.perf_counter()
    logits = torch.stack([eng.decode(t) for t in ids[prompt:]])
    dt = time.perf_counter() - t0
    st = eng.stats()
    n = len(ids) - prompt
    row: dict[str, Any] = {"tok_s": n / dt, "ms_per_tok": 1e3 * dt / n, "load_s": load_s,
                           "identical": bool(ref is None or torch.equal(logits, ref))}
    if "layers" in st:
        row.update({k: st[k] for k in ("cache_slots", "hit_rate", "cache_hits", "cache_misses", "cpu_misses",
                                       "fetched", "bytes_loaded", "stall_seconds", "evictions")})
        row["mb_loaded_per_tok"] = st["bytes_loaded"] / n / 1e6
        if "prefetch_accuracy" in st:
            row["prefetch_accuracy"] = st["prefetch_accuracy"]
        row["cost_model"] = st["cost_model"]
    del eng
    gc.collect()
    return row, logits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", default="10,25,50,100", help="cache sizes, percent of the cacheable experts")
    ap.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens before decoding")
    ap.add_argument("--tokens", type=int, default=32, help="decode steps timed per configuration")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cache_decode.jsonl"))
    args = ap.parse_args()
    sizes = [float(s) for s in args.sizes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}")
    path = str(ensure_model(args.preset, args.seed, sys.stderr))
    ids = torch.randint(3, 30000 if args.preset == "medium" else 1000, (args.prompt + args.tokens,),
                        generator=torch.Generator().manual_seed(args.seed)).tolist()
    meta = {"preset": args.preset, "prompt": args.prompt, "tokens": args.tokens, "cpu": platform.processor(),
            "threads": args.threads, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    rows: list[dict[str, Any]] = []
    run_one(path, ids[:args.prompt + 2], args.prompt, None, args.threads, None)  # warm page cache + pool
    base, ref = run_one(path, ids, args.prompt, None, args.threads, None)
    rows.append({"config": "direct", "size_pct": None, **base})
    for size in sizes:
        for m in modes:
            cache = {"cache_fraction": size / 100, **MODES[m]}
            row, _ = run_one(path, ids, args.prompt, cache, args.threads, ref)
            rows.append({"config": m, "size_pct": size, **row})
            print(f"  {m:9s} {size:5.0f}%  {row['tok_s']:6.2f} tok/s  hit {row['hit_rate']:.3f}", file=sys.stderr)
    end, _ = run_one(path, ids, args.prompt, None, args.threads, ref)  # the box's drift over the run
    rows.append({"config": "direct/end", "size_pct": None, **end})

    hdr = (f"{'config':10s} {'size':>5s} {'slots':>5s} {'tok/s':>7s} {'vs direct':>9s} {'hit rate':>8s} "
           f"{'cpu miss':>8s} {'fetched':>7s} {'MB/tok':>7s} {'stall s':>7s} {'pf acc':>6s} {'equal':>5s}")
    print(hdr)
    for r in rows:
        size = "-" if r["size_pct"] is None else f"{r['size_pct']:.0f}%"
        pf = f"{r['prefetch_accuracy']:.2f}" if "prefetch_accuracy" in r else "-"
        print(f"{r['config']:10s} {size:>5s} {r.get('cache_slots', '-')!s:>5s} {r['tok_s']:7.2f} "
              f"{r['tok_s'] / base['tok_s']:9.2f} {r.get('hit_rate', float('nan')):8.3f} "
              f"{r.get('cpu_misses', '-')!s:>8s} {r.get('fetched', '-')!s:>7s} "
              f"{r.get('mb_loaded_per_tok', 0.0):7.1f} {r.get('stall_seconds', 0.0):7.3f} {pf:>6s} "
              f"{'yes' if r['identical'] else 'NO':>5s}")
    cm = next((r["cost_model"] for r in rows if "cost_model" in r), None)
    if cm:
        print(f"cost model: CPU kernel {cm['cpu_gbs']:.1f} GB/s from the file, slot kernel {cm['dev_gbs']:.1f} "
              f"GB/s, load {cm['load_gbs']:.1f} GB/s (1 token), fetch pays above {cm['breakeven_tokens']:.3g} "
              f"tokens per expert")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        for r in rows:
            f.write(json.dumps({**meta, **r}) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
