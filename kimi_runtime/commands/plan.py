"""`kimi-runtime plan`: placement and the decode roofline for a model on a machine, from headers only."""
from __future__ import annotations

import argparse
import json

GB = 1e9


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="placement and predicted decode speed for a model on a machine (headers only)")
    p.add_argument("model", nargs="?", help="GGUF file (first part of a split); or use --known")
    p.add_argument("--known", help="plan a model without its file: kimi-k2 | deepseek-v3")
    p.add_argument("--expert-type", default="Q2_K", help="with --known: ggml type of the routed experts")
    p.add_argument("--vram", default="24GiB", help="GPU memory budget (0 for CPU-only)")
    p.add_argument("--ram", default="256GiB", help="system RAM budget")
    p.add_argument("--ctx", type=int, default=32768, help="context length to reserve KV cache for")
    p.add_argument("--bandwidths", default="", help="GB/s overrides: vram=1000,pcie=25,ram=70,nvme=6")
    p.add_argument("-ot", "--override-tensor", action="append", default=[], metavar="REGEX=DEVICE",
                   help="place matching tensors on gpu|cpu|cache (first match wins)")
    p.add_argument("--cpu-moe", action="store_true", help="all routed experts computed on the CPU")
    p.add_argument("--n-cpu-moe", type=int, default=0, help="routed experts of the first N layers on the CPU")
    p.add_argument("--hit-rates", default="0,0.25,0.5,0.75,0.9,1", help="cache hit rates to predict for")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def build_footprint(args: argparse.Namespace):
    import gguf

    from kimi_runtime.experts.placement import Footprint

    if args.known:
        from kimi_runtime.known_models import KNOWN_MODELS, uniform_recipe

        if args.known not in KNOWN_MODELS:
            raise ValueError(f"unknown model {args.known!r}; known: {', '.join(KNOWN_MODELS)}")
        try:
            q = gguf.GGMLQuantizationType[args.expert_type.upper()]
        except KeyError:
            raise ValueError(f"unknown ggml type {args.expert_type!r}") from None
        return Footprint.from_config(KNOWN_MODELS[args.known], uniform_recipe(q)), f"{args.known} ({q.name} experts)"
    if not args.model:
        raise ValueError("give a GGUF file or --known MODEL")
    from kimi_runtime.gguf import open_gguf

    with open_gguf(args.model) as m:
        return Footprint.from_gguf(m), args.model


def run(args: argparse.Namespace) -> int:
    from kimi_runtime.experts.placement import (Bandwidths, Budget, auto_fit, moe_rules, parse_override,
                                                parse_size, predict)

    fp, label = build_footprint(args)
    cfg = fp.config
    rules = [parse_override(r) for r in args.override_tensor] + moe_rules(cfg, args.cpu_moe, args.n_cpu_moe)
    budget = Budget(gpu_bytes=parse_size(args.vram), ram_bytes=parse_size(args.ram), ctx=args.ctx)
    bw = Bandwidths.parse(args.bandwidths)
    placement = auto_fit(fp, budget, rules)
    rates = [float(x) for x in args.hit_rates.split(",") if x.strip()]
    preds = [predict(fp, placement, bw, h, budget.ram_bytes) for h in rates]
    moe = fp.moe_layers
    facts = {
        "model": label,
        "file_bytes": fp.total_bytes,
        "non_expert_bytes": fp.non_expert_bytes,
        "expert_bytes": fp.expert_bytes_total,
        "bytes_per_expert": {str(l): fp.expert_bytes(l) for l in moe[:1] + moe[-1:]},
        "expert_bytes_per_token": fp.expert_bytes_per_token,
        "non_expert_bytes_per_token": fp.non_expert_bytes_per_token(),
        "fits": {"disk+ram+vram_needed": fp.total_bytes,
                 "ram+vram": budget.ram_bytes + budget.gpu_bytes,
                 "all_in_memory": budget.ram_bytes + budget.gpu_bytes >= fp.total_bytes},
        "placement": {"slots": placement.n_slots, "slot_bytes": placement.slot_bytes,
                      "cacheable_experts": placement.n_cacheable, "kv_bytes": placement.kv_bytes,
                      "resident_bytes": placement.gpu_resident, "cpu_resident_bytes": placement.cpu_resident,
                      "workspace_bytes": placement.workspace, "tier": placement.tier},
        "bandwidths_GBps": {k: getattr(bw, k) / GB for k in ("vram", "pcie", "ram", "nvme")},
        "predictions": [p.__dict__ for p in preds],
    }
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(f"model: {label}: {cfg.n_layer} layers, {cfg.n_expert} experts ({cfg.n_expert_used} active), "
          f"{fp.total_bytes / GB:.1f} GB ({fp.non_expert_bytes / GB:.2f} GB non-expert)")
    e0 = fp.expert_bytes(moe[0]) if moe else 0
    print(f"one expert: {e0:,} B; routed experts per token: {fp.expert_bytes_per_token / GB:.2f} GB; "
          f"non-expert per token: {fp.non_expert_bytes_per_token() / GB:.2f} GB")
    fit = "yes" if facts["fits"]["all_in_memory"] else "no: the rest pages in from disk (mmap)"
    print(f"RAM + VRAM >= file size? {fit}")
    print(placement.summary())
    print(f"\nbandwidths GB/s: " + ", ".join(f"{k} {v:g}" for k, v in facts["bandwidths_GBps"].items()))
    print(f"{'hit rate':>8} {'VRAM GB/tok':>12} {'RAM GB/tok':>11} {'PCIe GB/tok':>12} {'disk GB/tok':>12} "
          f"{'miss path':>9} {'tok/s':>8}")
    for p in preds:
        print(f"{p.hit_rate:8.2f} {p.gpu_bytes / GB:12.3f} {p.ram_bytes / GB:11.3f} {p.pcie_bytes / GB:12.3f} "
              f"{p.disk_bytes / GB:12.3f} {p.miss_path:>9} {p.tok_per_s:8.2f}")
    return 0
