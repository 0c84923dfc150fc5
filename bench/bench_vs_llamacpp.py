"""kimi-runtime vs llama.cpp (llama-cpp-python) on the medium synthetic model (Q4_K_M, ~1.9 GB, the shape of
REFERENCE.md section 8): prompt tok/s on a 512-token prompt and decode tok/s, same file, same run, 2 threads.

    python bench/bench_vs_llamacpp.py [--prompt 512 --decode 32 --threads 2 --repeat 2 --model FILE.gguf]

The model is generated once into $KIMI_RUNTIME_CACHE/bench (default ~/.cache/kimi-runtime/bench).
Results: a table with ratios on stdout and bench/results/vs_llamacpp.json.
"""
from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

PRESET, RECIPE, SEED = "medium", "q4_k_m", 0


def ensure_medium(path: Optional[str]) -> Path:
    """`path`, or the cached medium/q4_k_m model (shared with the demo's cache, written on first use)."""
    if path:
        return Path(path)
    from kimi_runtime.commands.demo import ensure_model

    return ensure_model(PRESET, SEED, sys.stderr, recipe=RECIPE)


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class LlamaRunner:
    """llama.cpp through llama-cpp-python with its defaults (F16 KV cache), flash attention on or off."""

    def __init__(self, path: Path, threads: int, n_ctx: int, n_batch: int, flash_attn: bool) -> None:
        import llama_cpp

        kw: dict[str, Any] = dict(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                                  n_threads=threads, n_threads_batch=threads, seed=0, verbose=False)
        params = inspect.signature(llama_cpp.Llama.__init__).parameters
        if "flash_attn_type" in params:  # newer bindings: an enum whose default is "auto"
            kw["flash_attn_type"] = 1 if flash_attn else 0
        else:
            kw["flash_attn"] = flash_attn
        self.llm = llama_cpp.Llama(**kw)

    def reset(self) -> None:
        self.llm.reset()

    def prefill(self, ids: Sequence[int]) -> None:
        self.llm.eval(list(ids))

    def decode(self, token: int) -> None:
        self.llm.eval([token])

    def close(self) -> None:
        self.llm.close()


class KimiRunner:
    """kimi-runtime's Engine over the same file (quantized kernels, mmapped experts)."""

    def __init__(self, path: Path, threads: int, n_ctx: int) -> None:
        from kimi_runtime.engine import Engine

        self.eng = Engine.from_gguf(str(path), threads=threads, n_ctx=n_ctx)

    def reset(self) -> None:
        self.eng.reset()

    def prefill(self, ids: Sequence[int]) -> None:
        self.eng.prefill(list(ids))

    def decode(self, token: int) -> None:
        self.eng.decode(token)

    def close(self) -> None:
        del self.eng


def warm_up(runner: Any, prompt: Sequence[int], decode_ids: Sequence[int]) -> None:
    """Pages the file in and lets the runtime allocate its buffers."""
    runner.reset()
    runner.prefill(prompt[:16])
    runner.decode(decode_ids[0])


def one_round(runner: Any, prompt: Sequence[int], decode_ids: Sequence[int]) -> tuple[float, float]:
    """Seconds for the whole prompt, then for len(decode_ids) single-token steps after it."""
    runner.reset()
    tp = _timed(lambda: runner.prefill(prompt))
    td = _timed(lambda: [runner.decode(t) for t in decode_ids])
    return tp, td


LABELS = {"llama": "llama.cpp", "llama-fa": "llama.cpp, flash attention", "kimi": "kimi-runtime"}


def run_thread_count(keys: Sequence[str], path: Path, threads: int, n_ctx: int, prompt: list[int],
                     decode_ids: list[int], repeat: int) -> dict[str, dict[str, float]]:
    """All runtimes at one thread count, loaded side by side and measured round-robin, `repeat` rounds,
    best kept: on a shared machine other processes come and go, and interleaving spreads that noise over
    every runtime instead of penalising whichever ran during a busy minute. The 1-minute load average
    is recorded with each figure (other work on the 2 cores slows spin-waiting thread pools most)."""
    makers: dict[str, Callable[[], Any]] = {
        "llama": lambda: LlamaRunner(path, threads, n_ctx, len(prompt), flash_attn=False),
        "llama-fa": lambda: LlamaRunner(path, threads, n_ctx, len(prompt), flash_attn=True),
        "kimi": lambda: KimiRunner(path, threads, n_ctx),
    }
    runners: dict[str, Any] = {}
    for k in keys:
        try:
            runners[k] = makers[k]()
        except ImportError as e:
            print(f"skipping {LABELS[k]}: {e}")
    best = {k: [float("inf"), float("inf"), 0.0] for k in runners}
    try:
        for r in runners.values():
            warm_up(r, prompt, decode_ids)
        for _ in range(repeat):
            for k, r in runners.items():
                tp, td = one_round(r, prompt, decode_ids)
                b = best[k]
                b[0], b[1], b[2] = min(b[0], tp), min(b[1], td), max(b[2], os.getloadavg()[0])
    finally:
        for r in runners.values():
            r.close()
        gc.collect()
    out = {}
    for k, (tp, td, load) in best.items():
        out[k] = {"prompt_tok_s": len(prompt) / tp, "decode_tok_s": len(decode_ids) / td, "prompt_s": tp,
                  "decode_s": td, "loadavg_1m_max": load}
        print(f"{LABELS[k]:28s} {threads} thr  prompt {out[k]['prompt_tok_s']:8.1f} tok/s   decode "
              f"{out[k]['decode_tok_s']:7.2f} tok/s   (load avg up to {load:.1f})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a GGUF to use instead of the cached medium/q4_k_m model")
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens")
    ap.add_argument("--decode", type=int, default=32, help="decoded tokens (after the prompt)")
    ap.add_argument("--threads", default="2", help="thread counts, comma separated (e.g. 1,2)")
    ap.add_argument("--repeat", type=int, default=2, help="round-robin rounds (best per runtime is kept)")
    ap.add_argument("--only", default="llama,llama-fa,kimi", help="comma list of: llama, llama-fa, kimi")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "vs_llamacpp.json"))
    args = ap.parse_args()
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    for k in keys:
        if k not in LABELS:
            raise SystemExit(f"--only: unknown runtime {k!r}; choose from {', '.join(LABELS)}")
    thread_counts = [int(t) for t in args.threads.split(",")]

    path = ensure_medium(args.model)
    from kimi_runtime.gguf import open_gguf

    cfg = open_gguf(str(path)).config
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, cfg.n_vocab, args.prompt).tolist()
    decode_ids = rng.integers(0, cfg.n_vocab, max(1, args.decode)).tolist()
    n_ctx = 1 << (args.prompt + len(decode_ids) + 16).bit_length()

    rows: list[dict[str, Any]] = []
    for threads in thread_counts:
        res = run_thread_count(keys, path, threads, n_ctx, prompt, decode_ids, args.repeat)
        kimi = res.get("kimi")
        for k, r in res.items():
            row = {"runtime": LABELS[k], "threads": threads, **r}
            if kimi and k != "kimi":
                row["kimi_over_this"] = {"prompt": kimi["prompt_tok_s"] / r["prompt_tok_s"],
                                         "decode": kimi["decode_tok_s"] / r["decode_tok_s"]}
            rows.append(row)

    print(f"\n{os.path.basename(path)}, {args.prompt}-token prompt, {len(decode_ids)} decoded tokens "
          f"(shared machine: figures are noisy; compare ratios from one run)")
    print("| runtime | threads | prompt tok/s | decode tok/s | kimi / this, prompt | kimi / this, decode | load avg (max) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r.get("kimi_over_this")
        rp, rd = (f"{ratio['prompt']:.2f}", f"{ratio['decode']:.2f}") if ratio else ("-", "-")
        print(f"| {r['runtime']} | {r['threads']} | {r['prompt_tok_s']:.1f} | {r['decode_tok_s']:.2f} | {rp} | {rd} "
              f"| {r['loadavg_1m_max']:.1f} |")

    llama_version = None
    try:
        import llama_cpp

        llama_version = llama_cpp.__version__
    except ImportError:
        pass
    out = {"model": str(path), "preset": None if args.model else PRESET, "recipe": None if args.model else RECIPE,
           "file_bytes": path.stat().st_size, "prompt_tokens": args.prompt, "decode_tokens": len(decode_ids),
           "repeat": args.repeat, "llama_cpp_python": llama_version,
           "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor(),
                       "python": platform.python_version()},
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
