"""kimi-runtime vs llama.cpp (llama-cpp-python) on the medium synthetic model (Q4_K_M, ~1.9 GB, the shape of
REFERENCE.md section 8): prompt tok/s on a 512-token prompt and decode tok/s, same file, same run, 2 threads.

    python bench/bench_vs_llamacpp.py [--prompt 512 --decode 32 --threads 2 --model FILE.gguf]

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
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

PRESET, RECIPE, SEED = "medium", "q4_k_m", 0


def ensure_medium(path: Optional[str]) -> Path:
    """The benchmark file: `path` if given, else the cached medium/q4_k_m model (written on first use)."""
    if path:
        return Path(path)
    from kimi_runtime import synth
    from kimi_runtime.commands.demo import cache_dir

    out = cache_dir() / "bench" / f"{PRESET}-{RECIPE}-seed{SEED}.gguf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
        print(f"writing {out} (once, ~1.9 GB)", flush=True)
        try:
            synth.write_synthetic(PRESET, tmp, recipe=RECIPE, seed=SEED, progress=True)
            os.replace(tmp, out)  # an interrupted run leaves no half-written cache entry
        finally:
            if tmp.exists():
                tmp.unlink()
    return out


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


def measure(runner: Any, prompt: Sequence[int], decode_ids: Sequence[int], repeat: int) -> dict[str, float]:
    """Best of `repeat` rounds (noise on a shared machine only slows things down): prompt tok/s over the
    whole prompt, then decode tok/s over len(decode_ids) single-token steps after it. A short warm-up
    first pages the file in and lets each runtime allocate its buffers."""
    runner.reset()
    runner.prefill(prompt[:16])
    runner.decode(decode_ids[0])
    best_p = best_d = float("inf")
    for _ in range(repeat):
        runner.reset()
        best_p = min(best_p, _timed(lambda: runner.prefill(prompt)))
        best_d = min(best_d, _timed(lambda: [runner.decode(t) for t in decode_ids]))
    return {"prompt_tok_s": len(prompt) / best_p, "decode_tok_s": len(decode_ids) / best_d,
            "prompt_s": best_p, "decode_s": best_d}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a GGUF to use instead of the cached medium/q4_k_m model")
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens")
    ap.add_argument("--decode", type=int, default=32, help="decoded tokens (after the prompt)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="rounds per runtime (best is kept)")
    ap.add_argument("--only", default="llama,llama-fa,kimi", help="comma list of: llama, llama-fa, kimi")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "vs_llamacpp.json"))
    args = ap.parse_args()

    path = ensure_medium(args.model)
    from kimi_runtime.gguf import open_gguf

    cfg = open_gguf(str(path)).config
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, cfg.n_vocab, args.prompt).tolist()
    decode_ids = rng.integers(0, cfg.n_vocab, max(1, args.decode)).tolist()
    n_ctx = 1 << (args.prompt + len(decode_ids) + 16).bit_length()

    makers: dict[str, Callable[[], Any]] = {
        "llama": lambda: LlamaRunner(path, args.threads, n_ctx, args.prompt, flash_attn=False),
        "llama-fa": lambda: LlamaRunner(path, args.threads, n_ctx, args.prompt, flash_attn=True),
        "kimi": lambda: KimiRunner(path, args.threads, n_ctx),
    }
    labels = {"llama": "llama.cpp", "llama-fa": "llama.cpp, flash attention", "kimi": "kimi-runtime"}
    results: dict[str, dict[str, float]] = {}
    for key in [k.strip() for k in args.only.split(",") if k.strip()]:
        if key not in makers:
            raise SystemExit(f"--only: unknown runtime {key!r}; choose from {', '.join(makers)}")
        try:
            runner = makers[key]()
        except ImportError as e:
            print(f"skipping {labels[key]}: {e}")
            continue
        try:
            results[key] = measure(runner, prompt, decode_ids, args.repeat)
        finally:
            runner.close()
            gc.collect()
        r = results[key]
        print(f"{labels[key]:28s} prompt {r['prompt_tok_s']:8.1f} tok/s   decode {r['decode_tok_s']:7.2f} tok/s",
              flush=True)

    print(f"\n{os.path.basename(path)}, {args.prompt}-token prompt, {len(decode_ids)} decoded tokens, "
          f"{args.threads} threads (shared machine: figures are noisy; compare ratios from one run)")
    print(f"| runtime | prompt tok/s | decode tok/s | kimi/this prompt | kimi/this decode |")
    print("|---|---|---|---|---|")
    kimi = results.get("kimi")
    for key, r in results.items():
        ratio_p = f"{kimi['prompt_tok_s'] / r['prompt_tok_s']:.2f}" if kimi else "-"
        ratio_d = f"{kimi['decode_tok_s'] / r['decode_tok_s']:.2f}" if kimi else "-"
        print(f"| {labels[key]} | {r['prompt_tok_s']:.1f} | {r['decode_tok_s']:.2f} | {ratio_p} | {ratio_d} |")

    llama_version = None
    try:
        import llama_cpp

        llama_version = llama_cpp.__version__
    except ImportError:
        pass
    out = {"model": str(path), "preset": PRESET if not args.model else None, "recipe": RECIPE if not args.model else None,
           "file_bytes": path.stat().st_size, "prompt_tokens": args.prompt, "decode_tokens": len(decode_ids),
           "threads": args.threads, "repeat": args.repeat, "llama_cpp_python": llama_version,
           "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor(), "python": platform.python_version()},
           "results": {labels[k]: v for k, v in results.items()},
           "ratios_kimi_over": {labels[k]: {"prompt": kimi["prompt_tok_s"] / v["prompt_tok_s"],
                                            "decode": kimi["decode_tok_s"] / v["decode_tok_s"]}
                                for k, v in results.items() if kimi and k != "kimi"}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
