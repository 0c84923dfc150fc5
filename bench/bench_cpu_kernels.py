"""GB/s of quantized weight bytes streamed by the fused CPU gemv, per format, at 1 and all threads,
next to the streaming-read bandwidth measured in the same run (the roofline), plus weights/s.

    python bench/bench_cpu_kernels.py [--formats Q8_0,Q4_K] [--mb 256] [--threads 1,0] [--repeat 3]

The matrix (>= --mb MB, larger than L3) is random valid blocks with 7168 columns (Kimi's n_embd);
x is one token. The read bandwidth is probed again right before each (format, threads) point and
the ratio uses that adjacent probe, so load from other processes on a shared box affects both
alike. Results: a table on stdout and bench/results/cpu_kernels.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from kimi_runtime import kernels
from kimi_runtime._native import C

FORMATS = ["Q8_0", "Q4_K", "Q2_K", "Q6_K", "Q3_K", "Q5_K", "IQ1_S", "TQ1_0", "IQ2_XXS", "IQ4_XS",
           "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "MXFP4", "TQ2_0", "IQ1_M", "IQ2_XS", "IQ2_S",
           "IQ3_XXS", "IQ3_S", "F16", "BF16", "F32"]
# f16 scale offsets per block; random bytes there could be inf/nan (the rest may be anything).
F16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q2_K": [80, 82],
              "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ2_XXS": [0], "IQ2_XS": [0],
              "IQ2_S": [0], "IQ3_XXS": [0], "IQ3_S": [0], "IQ1_S": [0], "IQ4_NL": [0], "IQ4_XS": [0],
              "TQ1_0": [52], "TQ2_0": [64]}
COLS = 7168


def make_matrix(name: str, mb: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Random valid weights of at least mb MiB: (flat uint8 bytes, rows)."""
    qt = T[name]
    bs, ts = GGML_QUANT_SIZES[qt]
    rb = COLS // bs * ts
    rows = -(-(mb << 20) // rb)
    rng = np.random.default_rng(seed)
    raw = np.frombuffer(rng.bytes(rows * rb), dtype=np.uint8).copy()
    if name in ("F16", "BF16", "F32"):  # keep exponents sane: small random normals
        dt = {"F16": np.float16, "F32": np.float32}.get(name)
        vals = rng.standard_normal(1 << 20).astype(np.float32)
        src = vals.astype(dt).view(np.uint8) if dt else (vals.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        raw = np.resize(src, rows * rb)
    blocks = raw.reshape(-1, ts)
    for off in F16_FIELDS.get(name, []):
        blocks[:, off:off + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    if name == "MXFP4":
        blocks[:, 0] = 120
    return raw, rows


def time_gemv(raw: np.ndarray, name: str, rows: int, repeat: int) -> float:
    x = np.random.default_rng(1).standard_normal((1, COLS)).astype(np.float32)
    out = np.empty((1, rows), np.float32)
    C.gemm(raw, int(T[name]), rows, COLS, x, out)  # warm-up (page faults, pool wake-up)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        C.gemm(raw, int(T[name]), rows, COLS, x, out)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default=",".join(FORMATS), help="comma-separated GGUF type names")
    ap.add_argument("--mb", type=int, default=256, help="matrix size in MiB (keep > L3)")
    ap.add_argument("--threads", default="1,0", help="thread counts to run; 0 = all cores")
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per point (best is kept)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "cpu_kernels.json"))
    args = ap.parse_args()
    threads = [int(t) if int(t) > 0 else (os.cpu_count() or 1) for t in args.threads.split(",")]
    formats = [f.strip().upper() for f in args.formats.split(",") if f.strip()]
    old = kernels.num_threads()
    results = {"isa": kernels.isa(), "cols": COLS, "mb": args.mb, "threads": threads, "membw_gbs": {}, "formats": []}
    try:
        for t in threads:
            kernels.set_num_threads(t)
            results["membw_gbs"][t] = C.membw_read_gbs(args.mb << 20, max(3, args.repeat))
        hdr = f"{'format':8} {'path':18} {'bpw':>6} " + " ".join(
            f"{'GB/s@' + str(t):>9} {'rdbw':>5} {'%bw':>5} {'Gw/s':>6}" for t in threads)
        print("read bandwidth at start: " + ", ".join(f"{t} thr {results['membw_gbs'][t]:.1f} GB/s" for t in threads))
        print(hdr)
        for name in formats:
            raw, rows = make_matrix(name, args.mb)
            bs, ts = GGML_QUANT_SIZES[T[name]]
            rec = {"format": name, "path": kernels.kernel_path(name), "bpw": 8.0 * ts / bs, "bytes": raw.nbytes,
                   "rows": rows, "cols": COLS, "runs": {}}
            line = f"{name:8} {rec['path']:18} {rec['bpw']:6.3f} "
            for t in threads:
                kernels.set_num_threads(t)
                bw = C.membw_read_gbs(args.mb << 20, max(3, args.repeat))
                dt = time_gemv(raw, name, rows, args.repeat)
                gbs = raw.nbytes / dt / 1e9
                frac = gbs / bw
                gws = rows * COLS / dt / 1e9
                rec["runs"][t] = {"seconds": dt, "gbs": gbs, "read_bw_gbs": bw, "frac_of_read_bw": frac,
                                  "gweights_per_s": gws}
                line += f"{gbs:9.1f} {bw:5.1f} {100 * frac:4.0f}% {gws:6.2f} "
            print(line, flush=True)
            results["formats"].append(rec)
            del raw
    finally:
        kernels.set_num_threads(old)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
