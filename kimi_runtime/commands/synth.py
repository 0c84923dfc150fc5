"""`kimi-runtime synth PRESET OUT [--recipe R] [--layers N] [--experts E] [--hf-dir D] [--split N] [--seed S]
[--legacy-kv-b]`:
write a seeded synthetic DeepSeek-V3-architecture model (GGUF, optionally an HF copy)."""
from __future__ import annotations

import argparse


# Spelled out so that building the parser imports nothing heavy (a test checks synth_recipes.RECIPES).
RECIPE_NAMES = ("bf16", "default", "f16", "f32", "iq1_s", "mxfp4", "q2_k", "q4_k_m", "q8_0", "tq1_0",
                "ud-iq1_s", "ud-q2_k_xl", "ud-tq1_0")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic model (GGUF, optional HF copy)")
    p.add_argument("preset", help="tiny | tiny-dsv3 | small | medium | k2-slice (Kimi K2's dimensions)")
    p.add_argument("out", help="output .gguf path (split parts are named <stem>-0000i-of-0000N.gguf)")
    p.add_argument("--recipe", default="default", help=f"per-tensor types: {', '.join(RECIPE_NAMES)}")
    p.add_argument("--layers", type=int, help="number of layers (the first stays dense)")
    p.add_argument("--experts", type=int, help="routed experts per layer")
    p.add_argument("--hf-dir", help="also write a Hugging Face copy (config.json + float32 safetensors) here")
    p.add_argument("--split", type=int, help="write N parts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--legacy-kv-b", action="store_true", help="write attn_kv_b instead of attn_k_b/attn_v_b")
    p.add_argument("--fused-gate-up", action="store_true", help="write ffn_gate_up_exps instead of gate/up")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kimi_runtime.synth import write_synthetic

    path = write_synthetic(args.preset, args.out, recipe=args.recipe, hf_dir=args.hf_dir, split=args.split,
                           seed=args.seed, legacy_kv_b=args.legacy_kv_b, fused_gate_up=args.fused_gate_up,
                           progress=not args.quiet, n_layer=args.layers, n_expert=args.experts)
    print(path)
    return 0
