"""`kimi-runtime inspect FILE.gguf [--json]`: what a GGUF holds and what it needs to run: config, bytes
by ggml type, expert vs non-expert bytes, bytes per expert, bytes touched per token, and the memory
rule from Unsloth's guides (disk + RAM + VRAM >= file size; RAM + VRAM >= file size to run fast)."""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show a GGUF model's config, bytes by type and memory needs")
    p.add_argument("file", help="a .gguf file (or the first part of a split set)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def summarize(m: Any) -> dict[str, Any]:
    """Everything `inspect` prints, as plain data. `m` is an open GGUFModel."""
    from kimi_runtime.config import ARCH
    from kimi_runtime.gguf import names

    by_type: dict[str, dict[str, int]] = defaultdict(lambda: {"tensors": 0, "bytes": 0, "params": 0})
    expert_bytes = expert_params = 0
    for t in m.tensors.values():
        e = by_type[t.ggml_type.name]
        e["tensors"] += 1
        e["bytes"] += t.nbytes
        e["params"] += t.n_elements
        if names.is_expert_tensor(t.name):
            expert_bytes += t.nbytes
            expert_params += t.n_elements
    tensor_bytes = sum(t.nbytes for t in m.tensors.values())
    params = sum(t.n_elements for t in m.tensors.values())
    md = m.metadata
    out: dict[str, Any] = {
        "files": [str(p) for p in m.paths],
        "file_bytes": m.file_bytes,
        "gguf_version": m.version,
        "architecture": m.architecture,
        "name": md.get("general.name"),
        "synthetic": {k.rsplit(".", 1)[1]: v for k, v in md.items() if k.startswith("kimi_runtime.synth.")} or None,
        "tensor_count": len(m.tensors),
        "tensor_bytes": tensor_bytes,
        "params": params,
        "bytes_by_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1]["bytes"])),
        "expert_bytes": expert_bytes,
        "non_expert_bytes": tensor_bytes - expert_bytes,
        "tokenizer": {"model": md.get("tokenizer.ggml.model"), "pre": md.get("tokenizer.ggml.pre"),
                      "tokens": len(md.get("tokenizer.ggml.tokens", []))},
    }
    if m.architecture != ARCH:
        return out
    cfg = m.config
    out["config"] = cfg.to_dict()
    out["attention_layout"] = m.attn_layout
    ex = m.experts
    layers = []
    for layer in ex.layers:
        sl = ex.slices(layer, 0)
        layers.append({"layer": layer, "expert_bytes": ex.expert_bytes(layer),
                       "types": {s.which: s.ggml_type.name for s in sl},
                       "bytes": {s.which: s.nbytes for s in sl}})
    routed_per_token = sum(cfg.n_expert_used * ex.expert_bytes(layer) for layer in ex.layers)
    embd = m.tensors.get(names.TOKEN_EMBD)
    # every non-expert weight is read once per decode token, except the embedding (one row)
    dense_per_token = out["non_expert_bytes"] - (embd.nbytes - embd.row_bytes if embd is not None else 0)
    kv_bytes_per_token = cfg.n_layer * cfg.kv_cache_dim * 2  # MLA latent + rope key, f16
    active = params - expert_params + (expert_params * cfg.n_expert_used // cfg.n_expert if cfg.n_expert else 0)
    out["experts"] = {
        "moe_layers": len(ex.layers), "n_expert": cfg.n_expert, "n_expert_used": cfg.n_expert_used,
        "n_expert_shared": cfg.n_expert_shared, "per_layer": layers,
        "routed_bytes_per_token": routed_per_token,
    }
    out["active_params"] = active
    out["memory"] = {
        "file_bytes": m.file_bytes,
        "rule": "disk + RAM + VRAM >= file size to run at all (mmap pages experts in from disk); "
                "RAM + VRAM >= file size to run at memory speed",
        "resident_non_expert_bytes": out["non_expert_bytes"],
        "routed_expert_bytes": expert_bytes,
        "bytes_read_per_token": dense_per_token + routed_per_token,
        "non_expert_bytes_per_token": dense_per_token,
        "routed_expert_bytes_per_token": routed_per_token,
        "kv_cache_bytes_per_token_f16": kv_bytes_per_token,
    }
    return out


def _b(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def _p(n: float) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def render(s: dict[str, Any]) -> str:
    L: list[str] = []
    files = s["files"]
    L.append(f"file:          {files[0]}" + (f"  (+{len(files) - 1} more parts)" if len(files) > 1 else ""))
    L.append(f"size:          {_b(s['file_bytes'])} ({s['file_bytes']:,} bytes), GGUF v{s['gguf_version']}")
    L.append(f"architecture:  {s['architecture']}   name: {s['name']}")
    if s["synthetic"]:
        L.append("synthetic:     " + ", ".join(f"{k}={v}" for k, v in s["synthetic"].items()))
    tk = s["tokenizer"]
    if tk["model"]:
        L.append(f"tokenizer:     {tk['model']} / {tk['pre']}, {tk['tokens']} tokens")
    if "config" in s:
        c = s["config"]
        rs = c["rope_scaling"]
        L.append(f"config:        {c['n_layer']} layers ({c['n_leading_dense']} dense), hidden {c['n_embd']}, "
                 f"{c['n_head']} heads, vocab {c['n_vocab']}, ctx {c['context_length']}")
        L.append(f"  attention:   MLA q_lora {c['q_lora_rank']}, kv_lora {c['kv_lora_rank']}, nope "
                 f"{c['qk_nope_head_dim']}, rope {c['qk_rope_head_dim']}, v {c['v_head_dim']}, layout "
                 f"{s['attention_layout']}; rope theta {c['rope_theta']:g}"
                 + (f", yarn x{rs['factor']:g} from {rs['original_context_length']}" if rs["type"] == "yarn" else ""))
        L.append(f"  experts:     {c['n_expert']} routed ({c['n_expert_used']} per token, {c['gating']} "
                 f"gating, groups {c['n_group']}/{c['topk_group']}, scale {c['routed_scaling_factor']:.4g}), "
                 f"{c['n_expert_shared']} shared, moe_ff {c['n_ff_exp']}, dense ff {c['n_ff']}")
    L.append(f"tensors:       {s['tensor_count']}, {_b(s['tensor_bytes'])}, {_p(s['params'])} parameters"
             + (f" ({_p(s['active_params'])} active per token)" if "active_params" in s else ""))
    L.append("bytes by type:")
    for name, e in s["bytes_by_type"].items():
        pct = 100.0 * e["bytes"] / max(1, s["tensor_bytes"])
        bpw = 8.0 * e["bytes"] / max(1, e["params"])
        L.append(f"  {name:8s} {e['tensors']:5d} tensors  {_b(e['bytes']):>12s}  {pct:5.1f}%  {bpw:6.3f} bits/weight")
    tb = max(1, s["tensor_bytes"])
    L.append(f"routed experts: {_b(s['expert_bytes'])} ({100.0 * s['expert_bytes'] / tb:.1f}%),  "
             f"non-expert: {_b(s['non_expert_bytes'])} ({100.0 * s['non_expert_bytes'] / tb:.1f}%)")
    if "experts" in s:
        ex = s["experts"]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for e in ex["per_layer"]:
            groups[(e["expert_bytes"], tuple(e["types"].items()))].append(e["layer"])
        L.append(f"bytes per expert ({ex['moe_layers']} MoE layers x {ex['n_expert']} experts):")
        for (nb, types), lays in groups.items():
            ts = " ".join(f"{w}:{t}" for w, t in types)
            span = f"{lays[0]}-{lays[-1]}" if len(lays) > 1 and lays == list(range(lays[0], lays[-1] + 1)) \
                else ",".join(map(str, lays))
            L.append(f"  layers {span}: {_b(nb)} per expert ({ts}), {_b(nb * ex['n_expert'])} per layer")
        mem = s["memory"]
        L.append("memory:")
        L.append(f"  run at all:      disk + RAM + VRAM >= {_b(mem['file_bytes'])} (the file; mmap pages experts in)")
        L.append(f"  run fast:        RAM + VRAM >= {_b(mem['file_bytes'])}; keep the {_b(mem['resident_non_expert_bytes'])}"
                 f" of non-expert weights (+ KV cache) in VRAM, experts in RAM or an expert cache")
        L.append(f"  per token:       {ex['n_expert_used']} experts x {ex['moe_layers']} layers = "
                 f"{_b(mem['routed_expert_bytes_per_token'])} routed + {_b(mem['non_expert_bytes_per_token'])} "
                 f"non-expert = {_b(mem['bytes_read_per_token'])} read per decode token")
        L.append(f"  KV cache (f16):  {_b(mem['kv_cache_bytes_per_token_f16'])} per token "
                 f"({_b(mem['kv_cache_bytes_per_token_f16'] * 4096)} per 4096 tokens)")
    return "\n".join(L)


def run(args: argparse.Namespace) -> int:
    from kimi_runtime.commands.common import check_gguf_path

    check_gguf_path(args.file)  # a directory or a text file: one clear line, before any parsing
    from kimi_runtime.gguf import open_gguf

    with open_gguf(args.file) as m:
        s = summarize(m)
    print(json.dumps(s, indent=2) if args.json else render(s))
    return 0
