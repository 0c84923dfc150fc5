"""How fast `kimi-runtime run/chat/serve` reject bad input, each case in a fresh interpreter:
the time inside main() (imports included) and the process's wall time, and whether torch was
imported by then (it must not be: importing it takes seconds).

    python bench/bench_cli_fastfail.py [--model TINY.gguf]

Without --model a tiny synthetic model is written to a temporary directory first."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CASE = r"""
import contextlib, io, json, sys, time
t0 = time.perf_counter()
from kimi_runtime.cli import main
err = io.StringIO()
with contextlib.redirect_stderr(err):
    rc = main(json.loads(sys.argv[1]))
print(json.dumps({"rc": rc, "s": time.perf_counter() - t0, "torch": "torch" in sys.modules,
                  "err": err.getvalue().strip().splitlines()[-1]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a small valid GGUF for the -c / -t / template cases")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        model = args.model
        if model is None:
            from kimi_runtime.synth import write_synthetic

            model = str(write_synthetic("tiny", os.path.join(d, "tiny.gguf"), progress=False))
        text = os.path.join(d, "notes.gguf")
        with open(text, "w") as f:
            f.write("not weights\n")
        trunc = os.path.join(d, "trunc.gguf")
        with open(trunc, "wb") as f:
            f.write(b"GGUF" + b"\0" * 20)
        cases = {
            "directory": ["run", d, "-p", "x"],
            "text file": ["run", text, "-p", "x"],
            "truncated GGUF": ["run", trunc, "-p", "x"],
            "missing file": ["serve", os.path.join(d, "missing.gguf")],
            "-c 100000000": ["run", model, "-p", "x", "-c", "100000000"],
            "-t 0": ["run", model, "-p", "x", "-t", "0"],
        }
        print(f"{'case':16} {'main() s':>9} {'wall s':>7} {'torch':>6}  error")
        for name, argv in cases.items():
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", CASE, json.dumps(argv)], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            res = json.loads(r.stdout)
            print(f"{name:16} {res['s']:9.3f} {wall:7.2f} {str(res['torch']):>6}  {res['err'][:90]}")


if __name__ == "__main__":
    main()
