"""`kimi-runtime demo`: the README's run command. By default it loads the tiny Kimi-architecture MoE
trained on Shakespeare that ships in the package (kimi_runtime/assets, no download), with an expert
cache holding a quarter of the experts, continues a prompt, and prints the text, speed, cache
statistics and the perplexity on held-out text (The Tempest, never trained on), next to llama.cpp's
on the same file when llama-cpp-python is installed. `--preset` (or `--model synthetic`) runs a
seeded random synthetic model instead, generated once into a cache directory."""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from kimi_runtime.commands.run import engine_accepts, load_generator, print_speed, stream_events

DEMO_PROMPT = "Hello! In two sentences, what are you?"
CACHE_FRACTION = 0.25


def cache_dir() -> Path:
    """$KIMI_RUNTIME_CACHE, else ~/.cache/kimi-runtime."""
    env = os.environ.get("KIMI_RUNTIME_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kimi-runtime"


def synthetic_path(preset: str, seed: int, recipe: str = "default") -> Path:
    """One file per (preset, recipe, seed, generator version): a changed generator never reuses stale files."""
    from kimi_runtime import __version__, synth

    ver = getattr(synth, "SYNTH_VERSION", None) or getattr(synth, "__version__", None) or __version__
    tag = f"{preset}|{seed}|{ver}" if recipe == "default" else f"{preset}|{recipe}|{seed}|{ver}"
    key = hashlib.sha256(tag.encode()).hexdigest()[:12]
    return cache_dir() / "synthetic" / f"{preset}-{key}.gguf"


def ensure_model(preset: str, seed: int, err: Any = None, recipe: str = "default") -> Path:
    """The cached synthetic model, generated (with a progress bar) on first use. The demo and the
    benchmarks share it."""
    from kimi_runtime import synth

    err = err or sys.stderr
    path = synthetic_path(preset, seed, recipe)
    if path.exists():
        print(f"using the cached synthetic model {path}", file=err)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"generating the {preset!r} synthetic model (once) into {path}", file=err, flush=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    t0 = time.perf_counter()
    try:
        synth.write_synthetic(preset, str(tmp), recipe=recipe, seed=seed, progress=True)
        os.replace(tmp, path)  # atomic: an interrupted run leaves no half-written cache entry
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"generated in {time.perf_counter() - t0:.1f} s ({path.stat().st_size / 1e6:.1f} MB)", file=err)
    return path


TRAINED_PROMPT = "PROSPERO.\nNow, my good lord,"
TRAINED_RECIPES = ("f16", "q8_0", "q4_k_m", "ud_lowbit")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the shipped trained tiny model (or a synthetic one): text, speed, "
                                    "cache statistics, perplexity", description=__doc__)
    p.add_argument("--max-tokens", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("--model", choices=["trained", "synthetic"], default=None,
                   help="trained: the shipped Shakespeare model (default); synthetic: a random model")
    p.add_argument("--recipe", choices=TRAINED_RECIPES, default="q4_k_m",
                   help="which shipped GGUF of the trained model (default q4_k_m)")
    p.add_argument("--prompt", default=TRAINED_PROMPT, help="text the trained model continues")
    p.add_argument("--no-perplexity", action="store_true", help="skip the held-out perplexity")
    p.add_argument("--no-llamacpp", action="store_true",
                   help="skip llama.cpp's perplexity even when llama-cpp-python is installed")
    p.add_argument("--preset", default=None, help="synthetic model size: tiny, small (default), medium")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights and sampling")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--no-cache", action="store_true", help="run without the expert cache")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(func=main)


def _cache_kwargs(no_cache: bool, err: Any) -> dict[str, Any]:
    if no_cache:
        print("expert cache: off (--no-cache)", file=err)
        return {}
    if engine_accepts("cache_fraction"):
        # On a CPU-only machine a slot is no faster than the page-cached file, so the cost model
        # alone would leave the cache empty; admitting misses and prefetching shows it at work.
        print(f"expert cache: on, {CACHE_FRACTION:.0%} of the experts, misses admitted in the "
              f"background, next-layer prefetch on", file=err)
        kw: dict[str, Any] = {"cache_fraction": CACHE_FRACTION, "admit": True, "prefetch": True}
        if engine_accepts("cache_policy"):
            # with next-layer prefetch LRU beats the demand-paging default LFU (cache study on the trained
            # model's routing, NOTES_trained.md): prefetched experts must survive until used
            kw["cache_policy"] = "lru"
        return kw
    print("expert cache: off (this engine has no expert cache option yet)", file=err)
    return {}


def print_cache_stats(stats: Any, err: Any) -> None:
    """Totals over layers of whatever per-layer counters the engine reports."""
    if not isinstance(stats, dict):
        return
    rows = stats.get("layers") or stats.get("per_layer") or stats.get("cache_layers")
    if isinstance(rows, dict):
        rows = list(rows.values())
    if rows:
        tot: dict[str, float] = {}
        for r in rows:
            for k, v in (r or {}).items():
                if k != "layer" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    tot[k] = tot.get(k, 0) + v
        hits, misses = tot.get("hits", 0), tot.get("misses", 0)
        rate = f", hit rate {hits / (hits + misses):.1%}" if hits + misses else ""
        print(f"cache over {len(rows)} layers: " + ", ".join(f"{k} {v:g}" for k, v in tot.items()) + rate,
              file=err)
    scal = {k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if scal:
        print("engine: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in scal.items()), file=err)


def main(args: argparse.Namespace) -> int:
    if args.max_tokens < 1:
        raise ValueError("--max-tokens must be >= 1")
    if args.model == "trained" and args.preset:
        raise ValueError("--preset picks a synthetic model; drop it or use --model synthetic")
    if args.model == "synthetic" or args.preset:
        return _synthetic(args)
    from kimi_runtime.commands.demo_trained import run_trained

    return run_trained(args, _cache_kwargs(args.no_cache, sys.stderr))


def _synthetic(args: argparse.Namespace) -> int:
    from kimi_runtime.text import SamplingParams

    args.preset = args.preset or "small"
    err = sys.stderr
    path = ensure_model(args.preset, args.seed, err)
    kw: dict[str, Any] = _cache_kwargs(args.no_cache, err)
    if args.threads:
        kw["threads"] = args.threads
    gen = load_generator(str(path), err, **kw)
    print("note: the synthetic model has random weights, so its text is gibberish; watch the numbers.",
          file=err)
    print(f"> {DEMO_PROMPT}", file=err, flush=True)
    params = SamplingParams.from_preset("instant", seed=args.seed, max_tokens=args.max_tokens)
    ids = gen.render_chat([{"role": "user", "content": DEMO_PROMPT}])
    params.max_tokens = max(1, min(params.max_tokens, gen.n_ctx - len(ids)))
    last, _ = stream_events(gen.generate(ids, params, extra_stops=gen.chat_stops), sys.stdout)
    print_speed(last, err, getattr(args, "verbose", False))
    stats = gen.engine.stats() if hasattr(gen.engine, "stats") else None
    print_cache_stats(stats, err)
    return 0
