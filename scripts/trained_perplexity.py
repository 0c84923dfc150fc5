"""The shipped trained model's figures: file sizes, held-out perplexity per recipe under kimi-runtime
and (when llama-cpp-python is installed) llama.cpp on the same file and tokens, a random model of the
same architecture, and the F16 file's logits against the training model's saved float32 logits.

    PYTHONPATH=. python scripts/trained_perplexity.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np


def main() -> int:
    from kimi_runtime import synth
    from kimi_runtime import trained_model as tm
    from kimi_runtime.engine import Engine
    from kimi_runtime.gguf.reader import open_gguf
    from kimi_runtime.perplexity import engine_perplexity, llamacpp_available, llamacpp_perplexity
    from kimi_runtime.text.tokenizer import Tokenizer

    with open_gguf(tm.asset_path("f16")) as g:
        tok = Tokenizer.from_gguf_metadata(g.tokenizer_metadata)
    ids = tok.encode(tm.heldout_text(), parse_special=False)
    z = np.load(tm.ASSETS / tm.REFERENCE_FILE)
    with Engine.from_gguf(str(tm.asset_path("f16")), report=False, cache_type="f32") as eng:
        out = eng.logits(z["ids"].tolist()).float().numpy()
    ref = z["logits"].astype(np.float32)
    print(f"F16 vs training model: max |diff| {np.abs(out - ref).max():.2e} of max |logit| {np.abs(ref).max():.2f}, "
          f"argmax agrees on {(out.argmax(-1) == ref.argmax(-1)).mean():.0%} of {len(ref)} tokens")
    print(f"held-out: {len(ids)} tokens; | recipe | MB | kimi-runtime | llama.cpp | diff |")
    for r in tm.RECIPES:
        p = tm.asset_path(r)
        with Engine.from_gguf(str(p), report=False) as eng:
            ours = engine_perplexity(eng, ids)
        ref_ppl = llamacpp_perplexity(str(p), ids) if llamacpp_available() else float("nan")
        print(f"| {r} | {p.stat().st_size / 1e6:.2f} | {ours:.2f} | {ref_ppl:.2f} | {(ours / ref_ppl - 1) * 100:+.3f}% |",
              flush=True)
    with tempfile.TemporaryDirectory() as d:
        rnd = synth.write_synthetic(tm.CONFIG, Path(d) / "random.gguf", recipe="q8_0", seed=0, progress=False)
        with Engine.from_gguf(str(rnd), report=False) as eng:
            print(f"random model (same architecture, q8_0, seed 0): {engine_perplexity(eng, ids):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
