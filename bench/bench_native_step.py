"""The native layer step against the Python layers on one file, in one process, rounds alternating:
prompt tok/s, decode tok/s, and the share of decode time spent outside native calls (wall time of
Engine.decode minus the time inside the native step's calls, timed around each call from Python:
the layer loop and the output projection). Also the peak RSS of one long prompt (--long N).

    python bench/bench_native_step.py --model FILE.gguf [--prompt 80 --decode 32 --threads 2 --repeat 3]
    python bench/bench_native_step.py --model FILE.gguf --modes native --long 8192 --ubatch 512
    python bench/bench_native_step.py --model FILE.gguf --halves --repeat 6
    python bench/bench_native_step.py --model FILE.gguf --interleave   # engines alternate per token
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import threading
import time

import torch


def _engine(path: str, mode: str, args: argparse.Namespace):
    """mode: native, python (the reference layers) or default (the Engine's defaults: also runs on
    checkouts that predate the native step, for before/after figures)."""
    import inspect

    from kimi_runtime.engine import Engine

    kw = dict(threads=args.threads, n_ctx=args.n_ctx, report=False, cache_type=args.cache_type, ubatch=args.ubatch)
    if mode != "default":
        kw["native"] = mode == "native"
    accepted = {**inspect.signature(Engine.__init__).parameters, **inspect.signature(Engine.from_gguf).parameters}
    dropped = [k for k in kw if k not in accepted]
    if dropped:
        print(f"{mode}: this checkout's Engine takes no {', '.join(dropped)}", file=sys.stderr)
    return Engine.from_gguf(path, **{k: v for k, v in kw.items() if k in accepted})


def _round(eng, ids: list[int], n_decode: int) -> dict[str, float]:
    eng.reset()
    step = getattr(eng.model, "native", None)
    t0 = time.perf_counter()
    eng.prefill(ids)
    t1 = time.perf_counter()
    before = step.native_seconds if step is not None else 0.0
    tok = ids[-1]
    for i in range(n_decode):
        eng.decode((tok + 17 * i) % eng.config.n_vocab)
    t2 = time.perf_counter()
    inside = (step.native_seconds - before) if step is not None else float("nan")
    dec = t2 - t1
    return {"prompt_tok_s": len(ids) / (t1 - t0), "decode_tok_s": n_decode / dec,
            "outside_share": (dec - inside) / dec if step is not None else float("nan")}


def _rss_anon_gib() -> float:
    """Anonymous resident memory (heap, scratch, KV cache; not the mmapped weight pages)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


class _PeakAnon:
    """Samples RssAnon every 20 ms in a thread; .peak after stop()."""

    def __init__(self) -> None:
        self.peak = _rss_anon_gib()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_anon_gib())

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_anon_gib())
        return self.peak


def _interleaved(engines: dict, ids: list[int], args: argparse.Namespace) -> int:
    """Decode steps alternate between the engines one token at a time (the same page cache and the
    same moment's load for both), medians per step; prompts alternate per round."""
    steps: dict[str, list[float]] = {m: [] for m in engines}
    prompts: dict[str, list[float]] = {m: [] for m in engines}
    for _ in range(args.repeat):
        for m, e in engines.items():
            e.reset()
            t0 = time.perf_counter()
            e.prefill(ids)
            prompts[m].append(len(ids) / (time.perf_counter() - t0))
        for i in range(args.decode):
            for m, e in engines.items():
                t0 = time.perf_counter()
                e.decode((ids[-1] + 17 * i) % e.config.n_vocab)
                steps[m].append(time.perf_counter() - t0)
    print(f"{args.model}: prompt {len(ids)}, {args.decode} decode steps x {args.repeat}, interleaved per token, "
          f"threads {args.threads}, cache {args.cache_type}")
    for m in engines:
        med = statistics.median(steps[m])
        print(f"  {m:7s} prompt {statistics.median(prompts[m]):8.2f} tok/s  decode {1 / med:7.3f} tok/s "
              f"(median step {1000 * med:.1f} ms)")
    return 0


def _halves(path: str, args: argparse.Namespace) -> int:
    """Each layer half on its own, native vs the Python layers alternating in one process: decode (one
    token) after a 40-token prompt, layers 0..2, medians of --repeat (after 2 warm-ups)."""
    from kimi_runtime.model.attention import rms_norm
    from kimi_runtime.model.moe import MoE

    args.n_ctx = 256
    e = _engine(path, "native", args)
    st, m = e.model.native, e.model
    ids = torch.randint(0, e.config.n_vocab, (40,), generator=torch.Generator().manual_seed(1))
    e.prefill(ids)
    start = e.cache.length
    h0 = m.embed.rows(ids[:1])
    res: dict[tuple[str, int], list[float]] = {}
    layers = range(min(3, e.config.n_layer))
    for rep in range(args.repeat + 2):
        for i in layers:
            b = m.blocks[i]
            st.hidden[:1] = h0
            t0 = time.perf_counter()
            st.plan.attention(i, 1, start)
            t1 = time.perf_counter()
            st.plan.ffn(i, 1)
            t2 = time.perf_counter()
            pos = torch.arange(start, start + 1)
            h = h0 + b.attn(rms_norm(h0, b.attn_norm, b.eps), pos, e.cache, start, True)
            x = rms_norm(h, b.ffn_norm, b.eps)
            t3 = time.perf_counter()
            _ = b.ffn(x, pos) if isinstance(b.ffn, MoE) else b.ffn(x)
            t4 = time.perf_counter()
            if rep >= 2:
                for k, v in ((("native attention", i), t1 - t0), (("native ffn", i), t2 - t1),
                             (("python attention", i), t3 - t2), (("python ffn", i), t4 - t3)):
                    res.setdefault(k, []).append(v)
    print(f"{path}: layer halves at decode (40 cached positions), medians of {args.repeat}, threads {args.threads}")
    for (name, i), v in sorted(res.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        kind = "MoE" if e.config.is_moe_layer(i) else "dense"
        print(f"  layer {i} ({kind:5s}) {name:17s} {1000 * statistics.median(v):7.2f} ms")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", type=int, default=80)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default="native,python", help="comma list of: native, python, default")
    ap.add_argument("--cache-type", default="f16", choices=["f16", "f32"])
    ap.add_argument("--ubatch", type=int, default=512)
    ap.add_argument("--n-ctx", type=int, default=None)
    ap.add_argument("--halves", action="store_true", help="time each layer half, native vs Python layers")
    ap.add_argument("--interleave", action="store_true", help="alternate the engines per decode token")
    ap.add_argument("--long", type=int, default=0, help="instead: one prompt of this many tokens; peak RSS")
    args = ap.parse_args(argv)
    if args.halves:
        return _halves(args.model, args)
    modes = [m for m in args.modes.split(",") if m]
    if args.long:
        args.n_ctx = args.n_ctx or args.long + 8
        eng = _engine(args.model, modes[0], args)
        anon0 = _rss_anon_gib()
        ids = torch.randint(0, eng.config.n_vocab, (args.long,), generator=torch.Generator().manual_seed(0)).tolist()
        peak = _PeakAnon()
        t0 = time.perf_counter()
        eng.prefill(ids)
        dt = time.perf_counter() - t0
        anon = peak.stop()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{modes[0]}: {args.long}-token prompt in {dt:.1f} s ({args.long / dt:.2f} tok/s), ubatch {args.ubatch}, "
              f"cache {args.cache_type} ({eng.cache.nbytes / 2**20:.0f} MiB); peak anonymous RSS {anon:.2f} GiB "
              f"(after load {anon0:.2f} GiB); peak RSS {rss:.2f} GiB including the mmapped weight pages touched")
        return 0
    args.n_ctx = args.n_ctx or args.prompt + args.decode + 8
    engines = {m: _engine(args.model, m, args) for m in modes}
    for m, e in engines.items():
        if m == "native" and getattr(e.model, "native", None) is None:
            print(f"native step unavailable: {e.model.native_off_reason}", file=sys.stderr)
            return 1
    ids = torch.randint(0, engines[modes[0]].config.n_vocab, (args.prompt,),
                        generator=torch.Generator().manual_seed(1)).tolist()
    for e in engines.values():  # warm-up: page in the weights this prompt touches
        _round(e, ids, 2)
    if args.interleave:
        return _interleaved(engines, ids, args)
    res: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for _ in range(args.repeat):
        for m, e in engines.items():
            res[m].append(_round(e, ids, args.decode))
    print(f"{args.model}: prompt {args.prompt}, decode {args.decode}, threads {args.threads}, "
          f"cache {args.cache_type}, medians of {args.repeat} alternating rounds")
    for m in modes:
        med = {k: statistics.median(r[k] for r in res[m]) for k in res[m][0]}
        share = med["outside_share"]
        extra = f", outside native calls {100 * share:.1f}% of decode" if share == share else ""
        print(f"  {m:7s} prompt {med['prompt_tok_s']:8.2f} tok/s  decode {med['decode_tok_s']:7.2f} tok/s{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
