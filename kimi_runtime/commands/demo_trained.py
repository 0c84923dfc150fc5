"""The demo on the shipped trained model: continue a prompt, then score the held-out text."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from kimi_runtime.commands.run import load_generator, print_speed, stream_events


def _info(path: Any) -> dict[str, Any]:
    from kimi_runtime.gguf.reader import open_gguf

    with open_gguf(path, check_model=False) as g:
        raw = g.metadata.get("kimi_runtime.trained.info")
    try:
        return json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        return {}


def run_trained(args: argparse.Namespace, cache_kw: dict[str, Any]) -> int:
    from kimi_runtime import trained_model as tm
    from kimi_runtime.commands.demo import print_cache_stats
    from kimi_runtime.text import SamplingParams

    err = sys.stderr
    path = tm.asset_path(args.recipe)
    kw = dict(cache_kw)
    if args.threads:
        kw["threads"] = args.threads
    gen = load_generator(str(path), err, **kw)
    info = _info(path)
    trained = f", {info['steps']} steps, {info['train_tokens_seen'] / 1e3:.0f}k tokens seen" if info else ""
    print(f"model: tiny Kimi-architecture MoE trained on Shakespeare ({path.name}, "
          f"{path.stat().st_size / 1e6:.1f} MB{trained}); it writes pseudo-Shakespeare, not answers", file=err)
    ids = gen.encode_prompt(args.prompt)
    n = gen.check_budget(len(ids), min(args.max_tokens, gen.n_ctx - len(ids)))
    params = SamplingParams(temperature=0.8, top_k=40, seed=args.seed, max_tokens=n)
    sys.stdout.write(args.prompt)
    last, _ = stream_events(gen.generate(ids, params), sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    print_speed(last, err, getattr(args, "verbose", False))
    stats = gen.engine.stats() if hasattr(gen.engine, "stats") else None
    print_cache_stats(stats, err)
    if not args.no_perplexity:
        _perplexity(gen, str(path), args.no_llamacpp, err)
    return 0


def _perplexity(gen: Any, path: str, no_llamacpp: bool, err: Any) -> None:
    from kimi_runtime import trained_model as tm
    from kimi_runtime.perplexity import DEFAULT_WINDOW, engine_perplexity, llamacpp_available, llamacpp_perplexity

    ids = gen.tokenizer.encode(tm.heldout_text(), parse_special=False)
    t0 = time.perf_counter()
    ours = engine_perplexity(gen.engine, ids)
    print(f"perplexity on held-out text ({len(ids)} tokens of The Tempest, {DEFAULT_WINDOW}-token windows): "
          f"{ours:.2f} (kimi-runtime, {time.perf_counter() - t0:.1f} s); a uniform guess scores "
          f"{gen.engine.config.n_vocab}", file=err)
    if no_llamacpp:
        return
    if not llamacpp_available():
        print("llama.cpp perplexity: skipped (pip install 'kimi-runtime[ref-llamacpp]' to compare)", file=err)
        return
    t0 = time.perf_counter()
    ref = llamacpp_perplexity(path, ids)
    print(f"perplexity under llama.cpp on the same file and tokens: {ref:.2f} "
          f"({(ours / ref - 1) * 100:+.3f}% from ours, {time.perf_counter() - t0:.1f} s)", file=err)
