"""Bad models and impossible contexts fail fast: before torch is imported, in well under a second,
with one error line. Run in a fresh interpreter, since this test process has torch loaded already."""
from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r"""
import contextlib, io, json, sys, time
from kimi_runtime.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    out.append({"rc": rc, "s": time.perf_counter() - t0, "torch": "torch" in sys.modules,
                "err": err.getvalue()})
print(json.dumps(out))
"""

# Generous against a loaded CI box: bench/bench_cli_fastfail.py measured 0.1-0.8 s per case on the
# 2-core dev box at load average 13 (most of it importing numpy + gguf where a header is parsed).
BOUND_S = 2.0


def test_bad_inputs_fail_before_torch(tiny_gguf: str, tmp_path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("these are not weights\n")
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(b"GGUF" + b"\0" * 20)
    with open(tiny_gguf, "rb") as f:
        head = f.read(4096)
    cut = tmp_path / "cut.gguf"  # a real header cut short
    cut.write_bytes(head)
    tmpl = tmp_path / "bad.jinja"
    tmpl.write_text("{% if %}")
    cases = [
        (["run", str(tmp_path), "-p", "x"], "is a directory"),
        (["run", str(text), "-p", "x"], "not a GGUF file"),
        (["run", str(trunc), "-p", "x"], str(trunc)),
        (["chat", str(cut)], str(cut)),
        (["serve", str(tmp_path / "missing.gguf")], "no such file"),
        (["run", tiny_gguf, "-p", "x", "-c", "100000000"], "exceeds this model's maximum context"),
        (["run", tiny_gguf, "-p", "x", "--chat-template-file", str(tmpl)], "--chat-template-file"),
        (["run", "-m", tiny_gguf, "-p", "x", "-t", "0"], "must be >= 1"),
    ]
    r = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps([a for a, _ in cases])], env=dict(os.environ),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for (argv, needle), res in zip(cases, json.loads(r.stdout)):
        assert res["rc"] == 2, (argv, res)
        assert needle in res["err"], (argv, res["err"])
        assert not res["torch"], f"{argv}: torch was imported before the failure"
        assert res["s"] < BOUND_S, (argv, res["s"])
        assert "Traceback" not in res["err"]
