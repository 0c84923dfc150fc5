"""Cost of grammar-constrained sampling (llguidance) on a Kimi-sized vocabulary: building the
llguidance tokenizer once, compiling a JSON-Schema grammar and a tool-call grammar per request, and
the per-token mask + accept on random logits (the overhead each constrained token adds to decode).

    python bench/bench_grammar.py [--vocab 163840] [--tokens 200]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from kimi_runtime.synth_vocab import build_synthetic_vocab
from kimi_runtime.text import Tokenizer
from kimi_runtime.text import grammar

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4}},
    "required": ["name", "age", "tags"], "additionalProperties": False}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": SCHEMA}}


def run(tok: Tokenizer, g: str, n: int, seed: int) -> tuple[list[float], int]:
    c = grammar.Constraint(tok, g)
    rng = torch.Generator().manual_seed(seed)
    times, made = [], 0
    for _ in range(n):
        logits = torch.randn(tok.n_vocab, generator=rng) * 4
        t0 = time.perf_counter()
        t = int(torch.argmax(c.mask(logits)))
        if t in tok.eog_ids:
            break
        c.accept(t)
        times.append(time.perf_counter() - t0)
        made += 1
    return times, made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=163840, help="vocabulary size (Kimi K2: 163840)")
    ap.add_argument("--tokens", type=int, default=200, help="constrained tokens per run at most")
    args = ap.parse_args()

    t0 = time.perf_counter()
    tok = Tokenizer.from_gguf_metadata(build_synthetic_vocab(args.vocab))
    print(f"vocabulary: {tok.n_vocab} tokens (synthetic, built in {time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    grammar.ll_tokenizer(tok)
    print(f"llguidance tokenizer: {time.perf_counter() - t0:.2f} s, once per model")
    for name, build in (("json_schema", lambda: grammar.json_grammar(tok, SCHEMA)),
                        ("tool call", lambda: grammar.tool_call_grammar(tok, [TOOL], 0))):
        t0 = time.perf_counter()
        g = build()
        grammar.Constraint(tok, g)
        compile_ms = (time.perf_counter() - t0) * 1e3
        all_times: list[float] = []
        for seed in range(3):
            times, _ = run(tok, g, args.tokens, seed)
            all_times += times
        med = statistics.median(all_times) * 1e3
        p90 = sorted(all_times)[int(0.9 * len(all_times))] * 1e3
        print(f"{name:12s} grammar + matcher {compile_ms:6.1f} ms per request; mask+accept per token: "
              f"median {med:.2f} ms, p90 {p90:.2f} ms over {len(all_times)} tokens")


if __name__ == "__main__":
    main()
