"""Numbers as people read them: bytes in decimal units ("418 MB"), durations, rates, and engine
statistics as short labelled lines instead of raw dumps (no `4.18161e+08`, no `inf tokens`)."""
from __future__ import annotations

import math
from typing import Any, Mapping


def fmt_bytes(n: float) -> str:
    """418161000 -> '418 MB'; three significant digits, decimal units (as disks and HF list sizes)."""
    n = float(n)
    if not math.isfinite(n):
        return "unlimited" if n > 0 else "n/a"
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" or abs(n) >= 100 else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"  # pragma: no cover - the loop returns


def fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "never"
    if s == 0:
        return "0 s"
    if s < 1e-3:
        return f"{s * 1e6:.3g} us"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s" if s < 100 else f"{s:.0f} s"


def fmt_num(v: float) -> str:
    """Counts as integers with separators, other floats to three significant digits; inf -> 'never'."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if not math.isfinite(v):
        return "never" if v > 0 else "n/a"
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:.3g}"


def fmt_rate(tokens: int, seconds: float) -> str:
    return f"{tokens / seconds:.1f} tok/s" if seconds > 0 and tokens else "- tok/s"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _field(key: str, v: Any) -> str:
    """One statistic by its name's convention: *_bytes/bytes_* sizes, *_s/*seconds durations,
    *_gbs rates, *rate/*accuracy/*precision fractions."""
    if isinstance(v, float) and not math.isfinite(v):
        return "never"
    if "bytes" in key:
        return fmt_bytes(v)
    if key.endswith("_s") or key.endswith("seconds"):
        return fmt_seconds(v)
    if key.endswith("_gbs"):
        return f"{v:.3g} GB/s"
    if key.endswith(("rate", "accuracy", "precision")):
        return _pct(v)
    return fmt_num(v)


def stats_lines(stats: Mapping[str, Any]) -> list[str]:
    """Engine.stats() as a handful of readable lines (per-layer rows are summarised, not dumped)."""
    s = dict(stats)
    lines: list[str] = []
    for k in ("prefill", "decode"):
        n, t = s.pop(f"{k}_tokens", None), s.pop(f"{k}_s", None)
        s.pop(f"{k}_tok_s", None)
        if n is not None and t is not None:
            lines.append(f"{k}: {n:,} tokens in {fmt_seconds(t)} ({fmt_rate(n, t)})")
    if "n_past" in s or "kv_cache_bytes" in s:
        lines.append(f"context: {s.pop('n_past', 0):,} positions, KV cache {fmt_bytes(s.pop('kv_cache_bytes', 0))}")
    layers = s.pop("layers", None)
    if "cache_slots" in s:
        hits, misses = s.pop("cache_hits", 0), s.pop("cache_misses", 0)
        line = (f"expert cache: {s.pop('cache_slots'):,} slots, hit rate {_pct(s.pop('hit_rate', 0.0))} "
                f"({hits:,} hits, {misses:,} misses")
        if "cpu_misses" in s:
            line += f": {s.pop('cpu_misses'):,} on the CPU, {s.pop('fetched', 0):,} fetched"
        lines.append(line + ")")
        moves = [f"{_field(k, s.pop(k))} {label}" for k, label in
                 (("bytes_loaded", "loaded"), ("evictions", "evictions"), ("admitted", "admitted"),
                  ("prefetch_hits", "prefetch hits"), ("stall_seconds", "stalled")) if k in s]
        if moves:
            lines.append("  " + ", ".join(moves))
        if layers:
            lines.append(f"  over {len(layers)} MoE layers")
    if "prefetch_predictions" in s:
        lines.append(f"prefetch: {s.pop('prefetch_predictions'):,} guesses, accuracy "
                     f"{_pct(s.pop('prefetch_accuracy', 0.0))}, precision {_pct(s.pop('prefetch_precision', 0.0))}")
    cm = s.pop("cost_model", None)
    if isinstance(cm, Mapping):
        lines.append(cost_model_line(cm))
    for k, v in s.items():  # anything newer than this formatter, still readable
        if isinstance(v, (int, float)):
            lines.append(f"{k.replace('_', ' ')}: {_field(k, v)}")
    return lines


def cost_model_line(c: Mapping[str, Any]) -> str:
    be = c.get("breakeven_tokens", math.inf)
    pays = "never" if not math.isfinite(be) else f"from {be:.3g} tokens per expert"
    return (f"cost model ({c.get('source', '?')}): CPU kernel {_field('cpu_gbs', c.get('cpu_gbs', 0.0))}, "
            f"load {_field('load_gbs', c.get('load_gbs', 0.0))}, slot kernel {_field('dev_gbs', c.get('dev_gbs', 0.0))}; "
            f"fetching pays {pays}")
