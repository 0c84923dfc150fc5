"""Measured CPU kernel throughput per weight format, for `plan`'s roofline.

A fused dequant-dot kernel reads a format at some fraction of the memory bandwidth: near 1 for
Q8_0 on many cores, much less for grid i-quants whose decode is compute-heavy. `plan` times the
native one-token gemv (kimi_runtime.kernels, as bench/bench_cpu_kernels.py does at length) on a
matrix larger than the last-level cache for each format the model uses, next to a streaming-read
probe of the same size, and scales the CPU tier's bandwidth by the ratio. Results are cached per
machine (ISA, thread count) in $KIMI_RUNTIME_CACHE/kernel_rates.json (default ~/.cache/kimi-runtime),
so a plan after the first costs nothing."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

COLS = 7168  # Kimi's / DeepSeek's n_embd: the rows the experts' gate/up read
DEFAULT_MB = 64  # above the 32 MiB L3 of the dev box; small enough to take ~10-100 ms per format
FLOAT_FORMATS = ("F32", "F16", "BF16")
# Byte offsets of f16 scales per block: random bytes there could be inf/nan (the rest may be anything).
F16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q2_K": [80, 82],
              "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ2_XXS": [0], "IQ2_XS": [0],
              "IQ2_S": [0], "IQ3_XXS": [0], "IQ3_S": [0], "IQ1_S": [0], "IQ1_M": [], "IQ4_NL": [0],
              "IQ4_XS": [0], "TQ1_0": [52], "TQ2_0": [64]}


def cache_path() -> Path:
    base = os.environ.get("KIMI_RUNTIME_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kimi-runtime")
    return Path(base) / "kernel_rates.json"


@dataclass
class KernelRates:
    """Per format: GB/s of weight bytes the one-token kernel streams and the fraction of the read
    bandwidth measured beside it. Formats not measured count as reaching the full bandwidth."""

    machine: str
    gbs: dict[str, float] = field(default_factory=dict)
    read_gbs: dict[str, float] = field(default_factory=dict)
    source: str = "measured"

    def efficiency(self, fmt: str) -> float:
        if fmt not in self.gbs or not self.read_gbs.get(fmt):
            return 1.0
        return max(1e-3, min(1.0, self.gbs[fmt] / self.read_gbs[fmt]))

    def as_dict(self) -> dict:
        return {"machine": self.machine, "source": self.source,
                "formats": {f: {"gbs": self.gbs[f], "read_gbs": self.read_gbs[f], "efficiency": self.efficiency(f)}
                            for f in sorted(self.gbs)}}


def machine_key() -> str:
    from kimi_runtime import kernels

    return f"{kernels.isa()}/{kernels.num_threads()}t/{os.cpu_count()}cpu"


def _matrix(fmt: str, mb: int, seed: int = 0):
    """Random valid blocks of `fmt` with COLS columns, at least `mb` MiB: (bytes, rows)."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

    bs, ts = GGML_QUANT_SIZES[T[fmt]]
    rb = COLS // bs * ts
    rows = max(1, -(-(mb << 20) // rb))
    rng = np.random.default_rng(seed)
    if fmt in FLOAT_FORMATS:
        vals = (rng.standard_normal(rows * COLS // 16 + 1).astype(np.float32) * 0.02)
        src = {"F32": vals.view(np.uint8), "F16": vals.astype(np.float16).view(np.uint8),
               "BF16": (vals.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)}[fmt]
        return np.resize(src, rows * rb), rows
    raw = np.frombuffer(rng.bytes(rows * rb), dtype=np.uint8).copy()
    blocks = raw.reshape(-1, ts)
    for off in F16_FIELDS.get(fmt, []):
        blocks[:, off:off + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    if fmt == "MXFP4":
        blocks[:, 0] = 120
    return raw, rows


def measure(fmt: str, mb: int = DEFAULT_MB, repeat: int = 3) -> tuple[float, float]:
    """(kernel GB/s, read GB/s) for one format, best of `repeat`, with a warm-up call first."""
    import numpy as np
    from gguf import GGMLQuantizationType as T

    from kimi_runtime._native import C

    raw, rows = _matrix(fmt, mb)
    x = np.random.default_rng(1).standard_normal((1, COLS)).astype(np.float32)
    out = np.empty((1, rows), np.float32)
    qid = int(T[fmt])
    C.gemm(raw, qid, rows, COLS, x, out)  # page faults, thread pool wake-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        C.gemm(raw, qid, rows, COLS, x, out)
        best = min(best, time.perf_counter() - t0)
    read = float(C.membw_read_gbs(raw.nbytes, repeat))
    return raw.nbytes / best / 1e9, read


def kernel_rates(formats: Iterable[str], *, mb: int = DEFAULT_MB, path: Optional[Path] = None,
                 measure_missing: bool = True, refresh: bool = False) -> KernelRates:
    """Rates for `formats` from the cache, measuring (and caching) those it lacks (all of them with
    `refresh`, e.g. after a measurement taken while the machine was busy)."""
    from kimi_runtime import kernels

    path = path or cache_path()
    key = machine_key()
    try:
        cached = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        cached = {}  # a corrupt cache is re-measured, not fatal
    mine = cached.get(key, {}) if isinstance(cached, dict) else {}
    rates = KernelRates(key, source="cached")
    fresh = False
    for fmt in sorted(set(formats)):
        entry = None if refresh else mine.get(fmt)
        if not (isinstance(entry, dict) and "gbs" in entry and "read_gbs" in entry):
            if not measure_missing:
                continue
            try:
                kernels.kernel_path(fmt)
                g, r = measure(fmt, mb)
            except (KeyError, ValueError, RuntimeError):
                continue  # a format without a CPU kernel here: its bytes count at full bandwidth
            entry = mine[fmt] = {"gbs": g, "read_gbs": r, "mb": mb}
            fresh = True
        rates.gbs[fmt], rates.read_gbs[fmt] = float(entry["gbs"]), float(entry["read_gbs"])
    if fresh:
        rates.source = "measured"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({**(cached if isinstance(cached, dict) else {}), key: mine}, indent=1))
            tmp.replace(path)
        except OSError:
            pass  # a read-only home: measured again next time
    return rates
