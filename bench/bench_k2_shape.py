"""kimi-runtime vs ik_llama.cpp vs llama.cpp on one Kimi-K2-shaped file: prompt tok/s (80- and 512-token
prompts) and decode tok/s (32 steps after each prompt), 2 threads, each runtime in its own worker process,
rounds alternating between them, medians and ratios, plus each decode's share of the bandwidth roofline
(weight bytes read per decode token / streaming-read bandwidth measured in the same run).

    python bench/bench_k2_shape.py --model FILE.gguf [--prompts 80,512 --decode 32 --threads 2 --repeat 3]
    python bench/bench_k2_shape.py --layers 4 --experts 384 --recipe ud-iq1_s   # writes the k2-slice once

Peers are optional: ik_llama.cpp (`pip install ik-llama-cpp-python==0.1.5`, mla 3 + flash attention)
and llama.cpp (`llama-cpp-python`, flash attention); a peer that does not import, or whose worker dies,
is reported and skipped. Workers are separate processes because both peers ship their own libggml.so
and one process can hold only one of them. The order of the runtimes rotates from round to round,
and each round reports the GB its worker read from storage (/proc/self/io): on a machine whose page
cache cannot hold the file, such a round measures the disk. Results: a table on stdout and bench/results/k2_shape.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

LABELS = {"kimi": "kimi-runtime", "ik": "ik_llama.cpp (mla 3, fa)", "llama": "llama.cpp (fa)"}
UBATCH = 512


# ---- the runtimes (inside a worker process)

class KimiRunner:
    def __init__(self, path: str, threads: int, n_ctx: int) -> None:
        from kimi_runtime.engine import Engine

        self.eng = Engine.from_gguf(path, threads=threads, n_ctx=n_ctx, report=False)

    def reset(self) -> None:
        self.eng.reset()

    def prefill(self, ids: Sequence[int]) -> None:
        self.eng.prefill(list(ids))

    def decode(self, tok: int) -> None:
        self.eng.decode(tok)


class IkRunner:
    """ik_llama.cpp through the wheel's ctypes API (its high-level class cannot set MLA)."""

    def __init__(self, path: str, threads: int, n_ctx: int) -> None:
        from ik_llama_cpp import _ctypes_api as C
        from ik_llama_cpp import _internals as I

        self.C, self.I = C, I
        C.llama_backend_init()
        mp = C.llama_model_default_params()
        mp.use_mmap, mp.mla, mp.flash_attn = True, 3, True
        self.model = C.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            raise RuntimeError(f"ik_llama.cpp could not load {path}")
        cp = C.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, UBATCH, UBATCH
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn, cp.mla_attn = True, 3
        self.ctx = C.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("ik_llama.cpp could not create a context")
        self.settings = {"mla_attn": 3, "flash_attn": True, "fused_moe_up_gate": bool(cp.fused_moe_up_gate),
                         "n_ubatch": UBATCH}
        self.pos = 0

    def reset(self) -> None:
        self.C.llama_kv_cache_clear(self.ctx)
        self.pos = 0

    def _run(self, batch: Any) -> None:
        rc = self.C.llama_decode(self.ctx, batch)
        self.C.llama_batch_free(batch)
        if rc != 0:
            raise RuntimeError(f"ik_llama.cpp llama_decode returned {rc}")

    def prefill(self, ids: Sequence[int]) -> None:
        ids = list(ids)
        for i in range(0, len(ids), UBATCH):
            chunk = ids[i:i + UBATCH]
            self._run(self.I.make_batch_range(chunk, pos_start=self.pos, logits_last=i + UBATCH >= len(ids)))
            self.pos += len(chunk)

    def decode(self, tok: int) -> None:
        self._run(self.I.make_batch_single(tok, self.pos))
        self.pos += 1


class LlamaRunner:
    def __init__(self, path: str, threads: int, n_ctx: int) -> None:
        import inspect

        import llama_cpp

        kw: dict[str, Any] = dict(model_path=path, n_ctx=n_ctx, n_batch=UBATCH, n_ubatch=UBATCH, n_threads=threads,
                                  n_threads_batch=threads, seed=0, verbose=False)
        if "flash_attn_type" in inspect.signature(llama_cpp.Llama.__init__).parameters:
            kw["flash_attn_type"] = 1
        else:
            kw["flash_attn"] = True
        self.llm = llama_cpp.Llama(**kw)

    def reset(self) -> None:
        self.llm.reset()

    def prefill(self, ids: Sequence[int]) -> None:
        self.llm.eval(list(ids))

    def decode(self, tok: int) -> None:
        self.llm.eval([tok])


RUNNERS = {"kimi": KimiRunner, "ik": IkRunner, "llama": LlamaRunner}
IMPORTS = {"kimi": "kimi_runtime", "ik": "ik_llama_cpp", "llama": "llama_cpp"}


def read_bytes() -> int:
    """Bytes this process made the kernel fetch from storage (page faults on the mmapped model count):
    a round that had to read the file again measured the disk, not the runtime."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def worker(kind: str, path: str, threads: int, n_ctx: int) -> None:
    """Load one runtime, then answer one JSON line per request: {"prompt": ids, "decode": ids} ->
    {"prompt_s", "decode_s", "steps_ms", "prompt_read_gb", "decode_read_gb"} (the prompt, then each
    decode step after it; GB read from storage during each)."""
    # the protocol gets its own copy of fd 1; fd 1 itself goes to stderr, so that C libraries' chatter
    # (printf from ggml) cannot corrupt it
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    t0 = time.perf_counter()
    r = RUNNERS[kind](path, threads, n_ctx)
    out.write(json.dumps({"ready": time.perf_counter() - t0, "settings": getattr(r, "settings", {})}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        r.reset()
        rb0 = read_bytes()
        t0 = time.perf_counter()
        r.prefill(req["prompt"])
        tp = time.perf_counter() - t0
        rb1 = read_bytes()
        steps = []
        for tok in req["decode"]:
            t1 = time.perf_counter()
            r.decode(tok)
            steps.append(time.perf_counter() - t1)
        out.write(json.dumps({"prompt_s": tp, "decode_s": float(sum(steps)), "steps_ms": [1e3 * s for s in steps],
                              "prompt_read_gb": (rb1 - rb0) / 1e9, "decode_read_gb": (read_bytes() - rb1) / 1e9})
                  + "\n")
        out.flush()


# ---- the orchestrator

class Worker:
    def __init__(self, kind: str, path: Path, threads: int, n_ctx: int) -> None:
        self.kind = kind
        cmd = [sys.executable, __file__, "--worker", kind, "--model", str(path), "--threads", str(threads),
               "--n-ctx", str(n_ctx)]
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line:
            rc = self.p.wait()
            raise RuntimeError(f"{LABELS[self.kind]} worker exited (rc {rc})")
        return json.loads(line)

    def round(self, prompt: list[int], decode: list[int]) -> dict[str, Any]:
        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps({"prompt": prompt, "decode": decode}) + "\n")
        self.p.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            if self.p.poll() is None and self.p.stdin is not None:
                self.p.stdin.write('{"quit": true}\n')
                self.p.stdin.flush()
            self.p.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.p.kill()
            self.p.wait()


def importable(kind: str) -> Optional[str]:
    """None when the runtime's package imports here, else the reason (checked in a subprocess so a
    peer's libggml.so never lands in this process)."""
    r = subprocess.run([sys.executable, "-c", f"import {IMPORTS[kind]}"], capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["import failed"])[-1]


def ensure_model(args: argparse.Namespace) -> Path:
    if args.model:
        return Path(args.model)
    from kimi_runtime.synth import write_synthetic

    cache = Path(os.environ.get("KIMI_RUNTIME_CACHE", Path.home() / ".cache" / "kimi-runtime")) / "bench"
    path = cache / f"k2-{args.layers}L-{args.experts}E-{args.recipe}.gguf"
    if not path.exists():
        tmp = path.with_suffix(".partial.gguf")
        write_synthetic("k2-slice", tmp, recipe=args.recipe, n_layer=args.layers, n_expert=args.experts)
        tmp.rename(path)
    return path


def measure_bandwidth(threads: int) -> float:
    from kimi_runtime import kernels
    from kimi_runtime._native import C

    kernels.set_num_threads(threads)
    return float(C.membw_read_gbs(256 << 20, 3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="GGUF file; without it a k2-slice of --layers/--experts/--recipe is written")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=384)
    ap.add_argument("--recipe", default="ud-iq1_s")
    ap.add_argument("--prompts", default="80,512", help="prompt lengths, comma separated")
    ap.add_argument("--decode", type=int, default=32, help="decode steps after each prompt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="rounds per prompt length (medians reported)")
    ap.add_argument("--only", default="kimi,ik,llama", help="comma list of: kimi, ik, llama")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "k2_shape.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--n-ctx", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.threads, args.n_ctx)
        return
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    for k in keys:
        if k not in LABELS:
            raise SystemExit(f"--only: unknown runtime {k!r}; choose from {', '.join(LABELS)}")
    prompts = [int(p) for p in args.prompts.split(",")]

    from bench_engine import decode_bytes, loadavg  # bench/ is the script's directory

    from kimi_runtime.gguf import open_gguf
    from kimi_runtime.model.weights import GGUFSource

    path = ensure_model(args)
    src = GGUFSource(str(path))
    cfg, nbytes = src.config, decode_bytes(src)
    del src
    rng = np.random.default_rng(0)
    vocab_hi = cfg.n_vocab - 16  # below the special tokens
    inputs = {p: (rng.integers(0, vocab_hi, p).tolist(), rng.integers(0, vocab_hi, args.decode).tolist())
              for p in prompts}
    n_ctx = 1 << (max(prompts) + args.decode + 16).bit_length()
    with open_gguf(str(path)) as m:
        synth = {k: m.metadata.get(f"kimi_runtime.synth.{k}") for k in ("preset", "recipe")}

    workers: dict[str, Worker] = {}
    skipped: dict[str, str] = {}
    for k in keys:
        why = importable(k)
        if why:
            skipped[k] = why
            print(f"skipping {LABELS[k]}: {why}", flush=True)
            continue
        try:
            workers[k] = Worker(k, path, args.threads, n_ctx)
            print(f"{LABELS[k]}: loaded in {workers[k].hello['ready']:.1f} s {workers[k].hello['settings'] or ''}",
                  flush=True)
        except RuntimeError as e:
            skipped[k] = str(e)
            print(f"skipping {LABELS[k]}: {e}", flush=True)

    samples: dict[tuple[str, int], list[dict[str, Any]]] = {(k, p): [] for k in workers for p in prompts}
    loads: list[float] = []
    try:
        for w in list(workers.values()):  # warm: page the file in, let each runtime allocate
            try:
                w.round(inputs[prompts[0]][0][:16], inputs[prompts[0]][1][:2])
            except RuntimeError as e:
                skipped[w.kind] = str(e)
                print(f"dropping {LABELS[w.kind]}: {e}", flush=True)
                workers.pop(w.kind).close()
        for rnd in range(args.repeat):
            for p in prompts:
                # the first runtime of a round is the likeliest to find pages evicted by other
                # processes, so the order rotates from round to round
                order = list(workers.items())
                order = order[rnd % len(order):] + order[:rnd % len(order)] if order else order
                for k, w in order:
                    if k not in workers:
                        continue
                    try:
                        s = w.round(*inputs[p])
                    except RuntimeError as e:
                        skipped[k] = f"{e} (prompt {p}, round {rnd + 1})"
                        print(f"dropping {LABELS[k]}: {skipped[k]}", flush=True)
                        workers.pop(k).close()
                        continue
                    samples[(k, p)].append(s)
                    loads.append(os.getloadavg()[0])
                    print(f"round {rnd + 1} {LABELS[k]:26s} prompt {p:4d}: {p / s['prompt_s']:7.2f} tok/s, decode "
                          f"{len(inputs[p][1]) / s['decode_s']:6.2f} tok/s (load {loads[-1]:.1f}, read from disk "
                          f"{s['prompt_read_gb']:.2f} + {s['decode_read_gb']:.2f} GB)", flush=True)
    finally:
        for w in workers.values():
            w.close()

    bw = measure_bandwidth(args.threads)
    roofline = bw * 1e9 / nbytes["total"]
    rows = []
    for (k, p), ss in samples.items():
        if not ss:
            continue
        med_p = float(np.median([s["prompt_s"] for s in ss]))
        med_d = float(np.median([s["decode_s"] for s in ss]))
        dec = args.decode / med_d
        rows.append({"runtime": k, "label": LABELS[k], "prompt_tokens": p, "rounds": len(ss),
                     "prompt_tok_s": p / med_p, "decode_tok_s": dec, "roofline_share": dec / roofline,
                     "prompt_s": [s["prompt_s"] for s in ss], "decode_s": [s["decode_s"] for s in ss],
                     "prompt_read_gb": [s["prompt_read_gb"] for s in ss],
                     "decode_read_gb": [s["decode_read_gb"] for s in ss]})
    by = {(r["runtime"], r["prompt_tokens"]): r for r in rows}
    for r in rows:
        kimi = by.get(("kimi", r["prompt_tokens"]))
        if kimi and r["runtime"] != "kimi":
            r["kimi_over_this"] = {"prompt": kimi["prompt_tok_s"] / r["prompt_tok_s"],
                                   "decode": kimi["decode_tok_s"] / r["decode_tok_s"]}

    print(f"\n{path.name} ({synth['preset'] or 'file'}, {synth['recipe'] or '?'}), {args.threads} threads, "
          f"{args.decode} decode steps, medians of {args.repeat} alternating rounds; shared machine "
          f"(load avg {min(loads, default=0):.1f}-{max(loads, default=0):.1f})")
    print(f"decode reads {nbytes['total'] / 1e9:.3f} GB/token ({nbytes['dense'] / 1e9:.3f} non-expert + "
          f"{nbytes['experts'] / 1e9:.3f} routed experts); read bandwidth {bw:.1f} GB/s -> roofline "
          f"{roofline:.2f} tok/s")
    print("| runtime | prompt | prompt tok/s | decode tok/s | roofline share | kimi/this prompt | kimi/this decode "
          "| GB read from disk (all rounds) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["prompt_tokens"], list(LABELS).index(r["runtime"]))):
        q = r.get("kimi_over_this")
        rp, rd = (f"{q['prompt']:.2f}", f"{q['decode']:.2f}") if q else ("-", "-")
        print(f"| {r['label']} | {r['prompt_tokens']} | {r['prompt_tok_s']:.2f} | {r['decode_tok_s']:.2f} | "
              f"{100 * r['roofline_share']:.1f}% | {rp} | {rd} | "
              f"{sum(r['prompt_read_gb']) + sum(r['decode_read_gb']):.2f} |")
    for k, why in skipped.items():
        print(f"(skipped {LABELS[k]}: {why})")

    res = {"model": str(path), "file_bytes": path.stat().st_size, **{f"synth_{k}": v for k, v in synth.items()},
           "threads": args.threads, "decode_steps": args.decode, "repeat": args.repeat,
           "decode_bytes": nbytes, "read_gbs": bw, "roofline_tok_s": roofline, "rows": rows, "skipped": skipped,
           "loadavg": loads, "loadavg_end": loadavg(), "cpu_count": os.cpu_count(),
           "cpu": platform.processor() or platform.machine(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
