"""Our fused quantized matmul vs ik_llama.cpp's (its wheel's libggml, `ggml_mul_mat` on the CPU) on the
same weight bytes: a [rows, 7168] matrix of random valid blocks (>= --mb MiB, larger than L3) times
N activation rows, per format, N = 1 (decode) and a few tokens (an expert's prompt rows), 1 thread by
default, the two alternating, medians. Reports GB/s of weights streamed, ours / ik, and each side's error against float64 (gguf-py's
dequantization) on the first 64 rows: max |out - exact| / max |exact|.

    python bench/bench_kernels_vs_ik.py [--formats IQ1_S,IQ2_XXS] [--tokens 1,4,8] [--threads 1] [--mb 96]

ik_llama.cpp is optional (`pip install ik-llama-cpp-python==0.1.5`); without it only our figures are
printed, next to the streaming-read bandwidth. The wheel is an AVX2 build (no AVX-512 kernels).
Results: a table on stdout and bench/results/kernels_vs_ik.json.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

FORMATS = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS", "TQ1_0", "TQ2_0",
           "Q2_K", "Q3_K", "Q4_K", "Q6_K", "Q8_0"]
COLS = 7168


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class IkGgml:
    """The few ggml calls a mul_mat needs, from ik_llama.cpp's libggml.so."""

    def __init__(self) -> None:
        import ik_llama_cpp  # noqa: F401  (locates the wheel)

        lib_dir = Path(ik_llama_cpp.__file__).parent / "lib"
        g = ctypes.CDLL(str(lib_dir / "libggml.so"))
        g.ggml_init.argtypes, g.ggml_init.restype = [_InitParams], ctypes.c_void_p
        g.ggml_free.argtypes = [ctypes.c_void_p]
        g.ggml_new_tensor_2d.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        g.ggml_new_tensor_2d.restype = ctypes.c_void_p
        g.ggml_mul_mat.argtypes, g.ggml_mul_mat.restype = [ctypes.c_void_p] * 3, ctypes.c_void_p
        g.ggml_new_graph.argtypes, g.ggml_new_graph.restype = [ctypes.c_void_p], ctypes.c_void_p
        g.ggml_build_forward_expand.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        g.ggml_graph_compute_with_ctx.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        g.ggml_graph_compute_with_ctx.restype = ctypes.c_int
        g.ggml_get_data.argtypes, g.ggml_get_data.restype = [ctypes.c_void_p], ctypes.c_void_p
        g.ggml_type_name.argtypes, g.ggml_type_name.restype = [ctypes.c_int], ctypes.c_char_p
        self.g = g
        self.ctx: Optional[int] = None

    def has(self, name: str) -> bool:
        """ik's type ids follow ggml's up to IQ1_M but it has no TQ1_0 / TQ2_0 (ids 34/35 are unused)."""
        got = self.g.ggml_type_name(int(T[name]))
        return got is not None and got.decode().lower() == name.lower()

    def setup(self, raw: np.ndarray, qtype: int, rows: int, x: np.ndarray) -> None:
        self.close()
        n = x.shape[0]
        mem = raw.nbytes + 4 * (x.size + rows * n) + (64 << 20)  # weights, x, out, graph and work buffer
        self.ctx = self.g.ggml_init(_InitParams(mem, None, False))
        if not self.ctx:
            raise RuntimeError("ggml_init failed")
        a = self.g.ggml_new_tensor_2d(self.ctx, qtype, COLS, rows)
        b = self.g.ggml_new_tensor_2d(self.ctx, 0, COLS, n)  # GGML_TYPE_F32
        ctypes.memmove(self.g.ggml_get_data(a), raw.ctypes.data, raw.nbytes)
        ctypes.memmove(self.g.ggml_get_data(b), x.ctypes.data, x.nbytes)
        self.c = self.g.ggml_mul_mat(self.ctx, a, b)
        self.gf = self.g.ggml_new_graph(self.ctx)
        self.g.ggml_build_forward_expand(self.gf, self.c)
        self.rows, self.n = rows, n

    def run(self, threads: int) -> None:
        rc = self.g.ggml_graph_compute_with_ctx(self.ctx, self.gf, threads)
        if rc != 0:
            raise RuntimeError(f"ggml_graph_compute returned {rc}")

    def out(self) -> np.ndarray:
        p = self.g.ggml_get_data(self.c)
        return np.ctypeslib.as_array((ctypes.c_float * (self.rows * self.n)).from_address(p)).reshape(self.n, self.rows)

    def close(self) -> None:
        if self.ctx:
            self.g.ggml_free(self.ctx)
            self.ctx = None


def make_matrix(name: str, mb: int, seed: int = 0) -> tuple[np.ndarray, int]:
    from kimi_runtime.synth_blocks import random_blocks

    qt = T[name]
    bs, ts = GGML_QUANT_SIZES[qt]
    rb = COLS // bs * ts
    rows = -(-(mb << 20) // rb)
    rows = -(-rows // 16) * 16  # whole row groups for ik's interleaved paths
    raw = random_blocks(qt, rows * (COLS // bs), 1.0 / np.sqrt(COLS), np.random.default_rng(seed))
    return np.ascontiguousarray(raw).reshape(-1), rows


def dequant_rows(raw: np.ndarray, name: str, rows: int) -> np.ndarray:
    from gguf import quants

    bs, ts = GGML_QUANT_SIZES[T[name]]
    rb = COLS // bs * ts
    return quants.dequantize(raw[:rows * rb].reshape(rows, rb), T[name]).astype(np.float64).reshape(rows, COLS)


def median_time(fn: Any, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--tokens", default="1,4,8", help="activation rows per matmul, comma separated")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mb", type=int, default=96, help="weight matrix size in MiB")
    ap.add_argument("--repeat", type=int, default=5, help="timed calls per side per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (median of all calls)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "kernels_vs_ik.json"))
    args = ap.parse_args()

    from kimi_runtime import kernels
    from kimi_runtime._native import C

    kernels.set_num_threads(args.threads)
    try:
        ik: Optional[IkGgml] = IkGgml()
    except (ImportError, OSError) as e:
        ik = None
        print(f"ik_llama.cpp not available ({e}): our figures only")
    bw = float(C.membw_read_gbs(256 << 20, 3))
    print(f"{args.threads} thread(s), read bandwidth {bw:.1f} GB/s, isa {kernels.isa()}; shared machine, "
          f"load avg {os.getloadavg()[0]:.1f}")
    rows_out = []
    print("| format | tokens | ours GB/s | ik GB/s | ours / ik | ours err | ik err |")
    print("|---|---|---|---|---|---|---|")
    for name in [f.strip() for f in args.formats.split(",") if f.strip()]:
        raw, rows = make_matrix(name, args.mb)
        for n in [int(t) for t in args.tokens.split(",")]:
            x = np.random.default_rng(1).standard_normal((n, COLS)).astype(np.float32)
            out = np.empty((n, rows), np.float32)
            ours = lambda: C.gemm(raw, int(T[name]), rows, COLS, x, out)  # noqa: E731
            ours()
            # error of both against float64 on the first 64 rows: max |out - exact| / max |exact|
            exact = x.astype(np.float64) @ dequant_rows(raw, name, 64).T
            err = lambda o: float(np.max(np.abs(o[:, :64] - exact)) / np.max(np.abs(exact)))  # noqa: E731
            t_ours, t_ik, e_ik = [], [], float("nan")
            use_ik = ik is not None and ik.has(name)
            if use_ik:
                ik.setup(raw, int(T[name]), rows, x)
                ik.run(args.threads)
                e_ik = err(ik.out())
            for _ in range(args.rounds):
                t_ours.append(median_time(ours, args.repeat))
                if use_ik:
                    t_ik.append(median_time(lambda: ik.run(args.threads), args.repeat))
            go = raw.nbytes / float(np.median(t_ours)) / 1e9
            gi = raw.nbytes / float(np.median(t_ik)) / 1e9 if t_ik else float("nan")
            rows_out.append({"format": name, "tokens": n, "ours_gbs": go, "ik_gbs": gi, "ratio": go / gi,
                             "ours_err": err(out), "ik_err": e_ik, "matrix_bytes": raw.nbytes})
            ikcol = f"{gi:.2f} | {go / gi:.2f}" if use_ik else "(no such type) | -"
            print(f"| {name} | {n} | {go:.2f} | {ikcol} | {err(out):.1e} | {e_ik:.1e} |", flush=True)
        if ik is not None:
            ik.close()
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"threads": args.threads, "read_gbs": bw, "isa": kernels.isa(),
                                    "rows": rows_out, "time": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
