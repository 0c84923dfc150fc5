"""`kimi-runtime trace`: replay routing traces through cache policies (next to Belady's optimum),
summarise them, and generate synthetic ones."""
from __future__ import annotations

import argparse
import json
import time


def _csv_ints(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError("slot counts must be positive integers")
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="replay or summarise expert routing traces")
    tsub = p.add_subparsers(dest="trace_command", required=True)

    r = tsub.add_parser("replay", help="hit rate and bytes moved per policy and cache size")
    r.add_argument("file", help="trace file (.npz from --trace or `trace synth`)")
    r.add_argument("--policies", default="lru,lfu,slru,hot,belady",
                   help="comma-separated: lru, fifo, lfu, lfu-aged, slru, hot, belady, and with the "
                        "libcachesim package arc, s3fifo, sieve, lirs, wtinylfu, 2q, clock, lecar, cacheus, lhd, "
                        "lcs-lru, lcs-fifo, lcs-belady")
    r.add_argument("--slots", type=_csv_ints, default=[8, 16, 32], help="slots per layer, e.g. 8,16,32")
    r.add_argument("--scope", choices=["layer", "global"], default="layer",
                   help="layer: a partition of `slots` per layer; global: one pool of slots x layers")
    r.add_argument("--no-prefetch", action="store_true", help="ignore predicted ids in the trace")
    r.add_argument("--plot", metavar="PNG", help="write hit-rate curves (needs matplotlib)")
    r.add_argument("--json", action="store_true", help="one JSON object per result instead of a table")
    r.set_defaults(func=run_replay)

    rep = tsub.add_parser("report", help="figures and an HTML page of the cache study of a trace")
    rep.add_argument("file", help="trace file (.npz)")
    rep.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory")
    rep.add_argument("--policies", default=None,
                     help="comma-separated (default: ours, plus libCacheSim's when libcachesim is installed)")
    rep.add_argument("--slots", type=_csv_ints, default=None,
                     help="slots per layer (default: 1, 2, 3, 4, 6, 8, 12, 16, 24, 32 below the expert count)")
    rep.add_argument("--title", default=None)
    rep.set_defaults(func=run_report)

    s = tsub.add_parser("stats", help="sizes, skew, locality and prediction recall of a trace")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_stats)

    g = tsub.add_parser("synth", help="write a seeded synthetic decode trace")
    g.add_argument("out")
    g.add_argument("--steps", type=int, default=1000)
    g.add_argument("--layers", type=int, default=8)
    g.add_argument("--experts", type=int, default=64)
    g.add_argument("--top-k", type=int, default=8)
    g.add_argument("--skew", type=float, default=1.0, help="spread of fixed expert popularity")
    g.add_argument("--persistence", type=float, default=0.95, help="AR(1) drift of popularity, 0..1")
    g.add_argument("--pred-accuracy", type=float, default=None, help="add predicted ids of this recall")
    g.add_argument("--expert-bytes", type=int, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=run_synth)


def run_replay(args: argparse.Namespace) -> int:
    from kimi_runtime.experts import cachesim_adapter
    from kimi_runtime.experts.policies import policy_names
    from kimi_runtime.experts.replay import plot_hit_rates, replay, require_matplotlib
    from kimi_runtime.experts.trace import load_trace

    if args.plot:
        require_matplotlib()  # before a replay that may take minutes
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    bad = [n for n in names if n not in policy_names()]
    if bad:
        raise ValueError(f"unknown policies {bad}; choose from {', '.join(policy_names())}")
    if any(n in cachesim_adapter.LCS_POLICIES for n in names) and not cachesim_adapter.available():
        raise ValueError("libCacheSim policies need the libcachesim package: pip install libcachesim")
    if "belady" not in names:
        names.append("belady")  # the optimum is always printed alongside
    t0 = time.perf_counter()
    trace = load_trace(args.file)
    n_acc = len(trace.accesses()[0])
    results = replay(trace, names, args.slots, scope=args.scope,
                     prefetch=False if args.no_prefetch else None)
    elapsed = time.perf_counter() - t0
    if args.json:
        for res in results:
            print(json.dumps(res.to_dict()))
    else:
        opt = {r.slots: r for r in results if r.policy == "belady"}
        print(f"{args.file}: {trace.n_records} records, {n_acc} accesses, scope={args.scope}")
        print(f"{'policy':<12}{'slots':>7}{'hit rate':>10}{'of MIN':>8}{'GB moved':>11}"
              f"{'pf hits':>9}{'time s':>8}")
        for res in results:
            best = opt[res.slots].hit_rate
            frac = f"{res.hit_rate / best:.2f}" if best > 0 else "-"
            pf = str(res.prefetch_hits) if res.policy.endswith("+pf") else ""
            print(f"{res.policy:<12}{res.slots:>7}{res.hit_rate:>10.4f}{frac:>8}"
                  f"{res.bytes_moved / 1e9:>11.3f}{pf:>9}{res.seconds:>8.2f}")
        print(f"replayed {n_acc} accesses x {len(results)} runs in {elapsed:.2f} s")
    if args.plot:
        plot_hit_rates(results, args.plot, title=f"{args.file} ({args.scope})")
        print(f"wrote {args.plot}")
    return 0


DEFAULT_REPORT_POLICIES = "lru,fifo,lfu,lfu-aged,slru,hot"
DEFAULT_LCS_POLICIES = "arc,s3fifo,sieve,lirs,wtinylfu,2q,lecar,cacheus"


def run_report(args: argparse.Namespace) -> int:
    from kimi_runtime.experts import cachesim_adapter
    from kimi_runtime.experts.policies import policy_names
    from kimi_runtime.experts.replay import require_matplotlib
    from kimi_runtime.experts.report import write_report
    from kimi_runtime.experts.trace import load_trace

    require_matplotlib("trace report")
    spec = args.policies or (DEFAULT_REPORT_POLICIES + ("," + DEFAULT_LCS_POLICIES
                                                        if cachesim_adapter.available() else ""))
    names = [n.strip() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if n not in policy_names()]
    if bad:
        raise ValueError(f"unknown policies {bad}; choose from {', '.join(policy_names())}")
    trace = load_trace(args.file)
    slots = args.slots or [s for s in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32) if s < trace.n_experts]
    t0 = time.perf_counter()
    paths = write_report(trace, args.out, names, slots, title=args.title)
    print(f"wrote {len(paths)} files to {args.out} in {time.perf_counter() - t0:.1f} s "
          f"(open {paths[-1]})")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from kimi_runtime.experts.trace import load_trace, trace_stats

    st = trace_stats(load_trace(args.file))
    if args.json:
        print(json.dumps(st))
        return 0
    print(f"{args.file}: {st['records']} records, {st['steps']} steps, {st['tokens']} token rows, "
          f"{st['accesses']} accesses; {st['n_layers']} layers x {st['n_experts']} experts, "
          f"top-{st['top_k']}")
    if "prediction_recall" in st:
        print(f"prediction recall: {st['prediction_recall']:.3f}")
    print(f"{'layer':>6}{'accesses':>10}{'distinct':>10}{'top10%':>8}{'reuse':>8}")
    for layer, d in st["layers"].items():
        print(f"{layer:>6}{d['accesses']:>10}{d['distinct']:>10}{d['top10pct_share']:>8.3f}{d['reuse']:>8.3f}")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from kimi_runtime.experts.trace import DEFAULT_EXPERT_BYTES, save_trace, synthetic_trace

    if not 0 <= args.persistence <= 1:
        raise ValueError("--persistence must be in [0, 1]")
    if not 0 < args.top_k <= args.experts:
        raise ValueError("--top-k must be in 1..--experts")
    t = synthetic_trace(args.steps, args.layers, args.experts, args.top_k, skew=args.skew,
                        persistence=args.persistence, pred_accuracy=args.pred_accuracy,
                        expert_bytes=args.expert_bytes or DEFAULT_EXPERT_BYTES, seed=args.seed)
    save_trace(t, args.out)
    print(f"wrote {args.out}: {t.n_records} records, {len(t.accesses()[0])} accesses")
    return 0
