"""The cache study on real routing: record routing traces of the shipped trained model and of a random
model of the same architecture over the held-out text, write `trace report` for each, and print the
locality comparison (the numbers in NOTES_trained.md / the README).

    PYTHONPATH=. python scripts/trace_study.py --out docs/trained

Trace = the held-out text in 128-token windows (the training length), each a 16-token prompt (one
prefill batch) then one-token decode steps teacher-forced through the rest, then 112 sampled tokens; next-layer router guesses are recorded (prefetch
on, misses fetched) so the report shows their accuracy. Deterministic (seed 0)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 128  # the training sequence length
PROMPT = 16
FREE = WINDOW - PROMPT


def record(gguf: Path, ids: list[int], out: Path, slots: int, seed: int = 0) -> dict[str, Any]:
    import torch

    from kimi_runtime.engine import Engine

    eng = Engine.from_gguf(str(gguf), cache_slots=slots, prefetch=True, miss_policy="fetch", trace=str(out),
                           report=False, threads=1)
    t0 = time.perf_counter()
    nll, n = 0.0, 0
    # windows of the training length (the model never saw positions beyond it); the expert cache
    # persists across windows, only the KV cache restarts
    for w0 in range(0, len(ids) - PROMPT, WINDOW):
        win = ids[w0:w0 + WINDOW]
        eng.reset()
        logits = eng.prefill(win[:PROMPT])
        for t in win[PROMPT:]:
            nll -= float(torch.log_softmax(logits.float().reshape(-1), -1)[t])
            n += 1
            logits = eng.decode(t)
    g = torch.Generator().manual_seed(seed)
    eng.reset()
    logits = eng.prefill(ids[:PROMPT])
    for _ in range(FREE):
        p = torch.softmax(logits.float().reshape(-1) / 0.8, -1)
        logits = eng.decode(int(torch.multinomial(p, 1, generator=g)))
    st = eng.stats()
    eng.close()
    return {"tokens": len(ids) + FREE, "seconds": round(time.perf_counter() - t0, 1),
            "teacher_forced_ppl": float(np.exp(nll / max(1, n))), "engine_stats": {
                k: v for k, v in st.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}


def locality(trace_path: Path, slots: int) -> dict[str, Any]:
    from kimi_runtime.experts.replay import replay
    from kimi_runtime.experts.trace import load_trace, trace_stats

    tr = load_trace(trace_path)
    st = trace_stats(tr)
    res = {r.policy: r.hit_rate for r in replay(tr, ["lru", "lfu", "belady"], [slots], prefetch=False)}
    layers = st["layers"].values()
    return {"reuse": float(np.mean([d["reuse"] for d in layers])),
            "top10pct_share": float(np.mean([d["top10pct_share"] for d in layers])),
            "prediction_recall": st.get("prediction_recall"), "slots": slots,
            "lru": res["lru"], "lfu": res["lfu"], "belady": res["belady"], "share_cached": slots / tr.n_experts}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "trained")
    ap.add_argument("--traces", type=Path, default=ROOT / "build" / "traces")
    ap.add_argument("--recipe", default="q8_0", help="which shipped GGUF to trace")
    ap.add_argument("--no-report", action="store_true")
    a = ap.parse_args(argv)

    from kimi_runtime import synth
    from kimi_runtime import trained_model as tm
    from kimi_runtime.commands.trace import DEFAULT_LCS_POLICIES, DEFAULT_REPORT_POLICIES
    from kimi_runtime.experts import cachesim_adapter
    from kimi_runtime.experts.report import kimi_equivalent_slots, write_report
    from kimi_runtime.experts.trace import load_trace
    from kimi_runtime.text.tokenizer import Tokenizer

    a.traces.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    trained = tm.asset_path(a.recipe)
    random_gguf = a.traces / f"random-{a.recipe}.gguf"
    if not random_gguf.exists():
        synth.write_synthetic(tm.CONFIG, random_gguf, recipe=a.recipe, seed=0, progress=False)
    from kimi_runtime.gguf.reader import open_gguf

    with open_gguf(trained) as g:
        tok = Tokenizer.from_gguf_metadata(g.tokenizer_metadata)
    ids = tok.encode(tm.heldout_text())
    slots = kimi_equivalent_slots(tm.CONFIG.n_expert)
    policies = DEFAULT_REPORT_POLICIES + ("," + DEFAULT_LCS_POLICIES if cachesim_adapter.available() else "")
    summary: dict[str, Any] = {"held_out_tokens": len(ids), "kimi_equivalent_slots": slots}
    for name, gguf in (("trained", trained), ("random", random_gguf)):
        tp = a.traces / f"{name}.trace.npz"
        info = record(gguf, ids, tp, slots)
        info["locality"] = locality(tp, slots)
        summary[name] = info
        print(name, json.dumps(info), flush=True)
        if not a.no_report:
            t0 = time.perf_counter()
            write_report(load_trace(tp), a.out / f"report-{name}", policies.split(","),
                         [s for s in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)],
                         title=f"Expert cache study: {name} tiny Kimi over held-out Shakespeare")
            print(f"report-{name} in {time.perf_counter() - t0:.0f} s", flush=True)
    (a.out / "locality.json").write_text(json.dumps(summary, indent=1) + "\n")
    t, r = summary["trained"]["locality"], summary["random"]["locality"]
    print(f"| model | reuse (prev token) | top-10% experts' share | LRU @{slots} | LFU @{slots} | "
          f"Belady @{slots} | router-guess recall |")
    print("|---|---|---|---|---|---|---|")
    for n, d in (("trained", t), ("random", r)):
        rec = f"{d['prediction_recall']:.3f}" if d["prediction_recall"] is not None else "-"
        print(f"| {n} | {d['reuse']:.3f} | {d['top10pct_share']:.3f} | {d['lru']:.3f} | {d['lfu']:.3f} | "
              f"{d['belady']:.3f} | {rec} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
