"""Single-thread decode speed of the fused dot kernels with the weight matrix resident in L2: GB/s of
quantized bytes and G weights/s per format (best of N batches, robust on a shared, noisy box).

    python bench/bench_vecdot_l2.py [--formats IQ1_S,Q2_K] [--kb 512] [--isa auto] [--best 15] [--json out.json]

This isolates decode work from DRAM bandwidth: what a format costs per byte once the bytes are near.
With one thread the kernel runs on the calling thread, so the default clock is that thread's CPU
time (time.thread_time): being descheduled by other processes on a shared box does not count.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from kimi_runtime import kernels
from kimi_runtime._native import C

FORMATS = ["Q8_0", "Q4_K", "Q2_K", "Q3_K", "Q5_K", "Q6_K", "IQ4_XS", "TQ1_0", "TQ2_0", "IQ1_S", "IQ1_M",
           "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S"]
# Byte offsets of f16 scale fields per block (random bytes there could be inf/nan).
F16_FIELDS = {"Q8_0": [0], "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
              "IQ2_XXS": [0], "IQ2_XS": [0], "IQ2_S": [0], "IQ3_XXS": [0], "IQ3_S": [0], "IQ1_S": [0],
              "IQ4_XS": [0], "TQ1_0": [52], "TQ2_0": [64]}
COLS = 7168


def make_matrix(name: str, kb: int) -> tuple[np.ndarray, int]:
    """Random valid blocks totalling about kb KiB: (flat uint8, rows)."""
    bs, ts = GGML_QUANT_SIZES[T[name]]
    rb = COLS // bs * ts
    rows = max(1, (kb << 10) // rb)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(rows * COLS // bs, ts), dtype=np.uint8)
    for off in F16_FIELDS.get(name, []):
        raw[:, off:off + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    if name == "IQ1_M":  # f16 d = 0x2000 lives in the top nibbles of the four scale words
        raw[:, [49, 51, 53, 55]] &= 0x0F
        raw[:, 55] |= 0x20
    return raw.reshape(-1), rows


def measure(name: str, kb: int, best_of: int, inner: int, clock=time.thread_time) -> dict:
    """Best-of-N seconds per gemv call on a warm, L2-resident matrix."""
    raw, rows = make_matrix(name, kb)
    x = np.random.default_rng(1).standard_normal((1, COLS)).astype(np.float32)
    out = np.empty((1, rows), np.float32)
    qid = int(T[name])
    for _ in range(3):
        C.gemm(raw, qid, rows, COLS, x, out)
    best = float("inf")
    for _ in range(best_of):
        t0 = clock()
        for _ in range(inner):
            C.gemm(raw, qid, rows, COLS, x, out)
        best = min(best, (clock() - t0) / inner)
    return {"format": name, "path": kernels.kernel_path(name), "bytes": raw.nbytes, "seconds": best,
            "gbs": raw.nbytes / best / 1e9, "gweights_per_s": rows * COLS / best / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--kb", type=int, default=512, help="matrix size in KiB (keep inside L2)")
    ap.add_argument("--isa", default="auto", help="auto, scalar, avx2 or avx512")
    ap.add_argument("--best", type=int, default=15, help="batches timed; the fastest is kept")
    ap.add_argument("--inner", type=int, default=10, help="gemv calls per batch")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="thread CPU time or wall time")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()
    old = kernels.num_threads()
    kernels.set_num_threads(1)
    kernels.set_isa(args.isa)
    res = []
    try:
        print(f"{'format':8} {'path':18} {'GB/s':>7} {'Gw/s':>6}")
        for name in [f.strip().upper() for f in args.formats.split(",") if f.strip()]:
            clock = time.thread_time if args.clock == "cpu" else time.perf_counter
            r = measure(name, args.kb, args.best, args.inner, clock)
            res.append(r)
            print(f"{name:8} {r['path']:18} {r['gbs']:7.2f} {r['gweights_per_s']:6.2f}", flush=True)
    finally:
        kernels.set_num_threads(old)
        kernels.set_isa("auto")
    print("loadavg:", Path("/proc/loadavg").read_text().strip())
    if args.json:
        meta = {"isa": args.isa, "kb": args.kb, "clock": args.clock}
        Path(args.json).write_text(json.dumps({**meta, "results": res}, indent=1))


if __name__ == "__main__":
    main()
