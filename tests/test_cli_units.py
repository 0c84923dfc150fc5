"""Human-readable numbers and stats lines, the page-cache warm-up and when its progress bar shows."""
from __future__ import annotations

import io
import math

from kimi_runtime.commands.loading import LARGE_FILE, show_progress, warm_files, warm_model
from kimi_runtime.commands.units import cost_model_line, fmt_bytes, fmt_num, fmt_seconds, stats_lines


def test_formatters() -> None:
    assert fmt_bytes(4.18161e8) == "418 MB"
    assert fmt_bytes(512) == "512 B" and fmt_bytes(1536) == "1.54 kB" and fmt_bytes(2.5e12) == "2.5 TB"
    assert fmt_seconds(math.inf) == "never" and fmt_seconds(0.0123) == "12.3 ms" and fmt_seconds(2.5) == "2.5 s"
    assert fmt_num(math.inf) == "never" and fmt_num(12345) == "12,345" and fmt_num(0.123456) == "0.123"


def test_stats_lines_are_short_and_readable() -> None:
    stats = {"prefill_tokens": 30, "prefill_s": 0.2, "prefill_tok_s": 150.0, "decode_tokens": 12, "decode_s": 0.5,
             "decode_tok_s": 24.0, "n_past": 42, "kv_cache_bytes": 15_728_640,
             "layers": [{"layer": 1}, {"layer": 2}], "cache_slots": 64, "cache_hits": 120, "cache_misses": 146,
             "hit_rate": 120 / 266, "bytes_loaded": 4.18161e8, "evictions": 12, "stall_seconds": 0.0,
             "cpu_misses": 100, "fetched": 46, "admitted": 3, "prefetch_hits": 7,
             "prefetch_predictions": 50, "prefetch_accuracy": 0.5, "prefetch_precision": 0.25,
             "cost_model": {"cpu_gbs": 12.3, "load_gbs": 4.5, "dev_gbs": 30.0, "breakeven_tokens": math.inf,
                            "source": "measured"}, "some_new_bytes": 2e9}
    lines = stats_lines(stats)
    text = "\n".join(lines)
    assert "decode: 12 tokens in 500 ms (24.0 tok/s)" in lines
    assert "418 MB loaded" in text and "hit rate 45.1%" in text and "64 slots" in text
    assert "fetching pays never" in text and "some new bytes: 2 GB" in text
    assert "e+" not in text and "inf" not in text and "[{" not in text
    assert len(lines) <= 10 and max(map(len, lines)) < 120
    assert "pays from 3.5 tokens" in cost_model_line({"breakeven_tokens": 3.5})


def test_progress_bar_only_for_terminals_or_large_files() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert not show_progress(10 << 20, io.StringIO())
    assert show_progress(10 << 20, Tty())
    assert show_progress(LARGE_FILE, io.StringIO())


def test_warm_reads_every_part(tmp_path) -> None:
    parts = []
    for i, n in enumerate((3 << 20, 17 << 20)):  # one part spans two read chunks
        p = tmp_path / f"p{i}"
        p.write_bytes(b"x" * n)
        parts.append(str(p))
    seen = []
    assert warm_files(parts, seen.append) == 20 << 20 and sum(seen) == 20 << 20
    err = io.StringIO()
    assert warm_model(parts, 20 << 20, err, ram=None) is None and err.getvalue() == ""  # quiet: no tty
    note = warm_model(parts, 20 << 20, err, ram=1 << 20)
    assert note is not None and "not pre-reading" in note and "21 MB > 1.05 MB" in note
