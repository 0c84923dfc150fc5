"""`kimi-runtime plan`: placement and the decode roofline for a model on a machine, from headers only
(a GGUF file, or a known model with a quant recipe). CPU speeds use the kernels' measured throughput
per weight format on this machine, not bandwidth alone; hit rates a cache of the planned size
cannot reach are marked."""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

GB = 1e9
UNREACHABLE_SLACK = 0.005  # rounding of the replayed optimum


# Spelled out so that building the parser imports nothing heavy (tests check they match
# known_models.KNOWN_MODELS / RECIPES).
KNOWN_NAMES = ("kimi-k2", "kimi-k2-thinking", "kimi-k2.5", "deepseek-v3", "deepseek-r1")
RECIPE_NAMES = ("UD-TQ1_0", "UD-IQ1_S", "UD-Q2_K_XL", "UD-Q4_K_XL")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="placement and predicted decode speed for a model on a machine (headers only)",
                       description=__doc__)
    p.add_argument("model", nargs="?", help="GGUF file (first part of a split); or use --known")
    p.add_argument("-m", "--model", dest="model_file", default=None, metavar="FILE", help="the same, as in run")
    p.add_argument("--known", choices=KNOWN_NAMES, help="plan a model without its file")
    p.add_argument("--recipe", "--quant", dest="recipe", default=None, metavar="NAME",
                   help=f"with --known: per-projection types, one of {', '.join(RECIPE_NAMES)} (default UD-Q2_K_XL)")
    p.add_argument("--expert-type", default=None,
                   help="with --known: one ggml type for every routed expert instead of a recipe (e.g. Q2_K)")
    p.add_argument("--gpu-budget", "--vram", dest="gpu_budget", default="24GiB",
                   help="GPU memory budget (0: CPU only). Sizes: 24GiB, 24GB, 512MiB; a bare number is GiB")
    p.add_argument("--ram-budget", "--ram", dest="ram_budget", default="256GiB",
                   help="system RAM budget (same units)")
    p.add_argument("-c", "--ctx-size", "--ctx", dest="ctx", type=int, default=32768,
                   help="context length to reserve the KV cache for")
    p.add_argument("--bandwidths", default="", help="GB/s overrides: vram=1000,pcie=25,ram=70,nvme=6")
    p.add_argument("-ot", "--override-tensor", action="append", default=[], metavar="REGEX=DEVICE",
                   help="place matching tensors on gpu|cpu|cache (first match wins)")
    p.add_argument("--cpu-moe", action="store_true", help="all routed experts computed on the CPU")
    p.add_argument("--n-cpu-moe", type=int, default=0, help="routed experts of the first N layers on the CPU")
    p.add_argument("--hit-rates", default="0,0.25,0.5,0.75,0.9,1", help="cache hit rates to predict for")
    p.add_argument("--routing-trace", default=None, metavar="FILE",
                   help="a trace from `run --trace`: bound reachable hit rates by Belady's optimum on it "
                        "(default: on synthetic routing)")
    p.add_argument("--no-kernel-measure", action="store_true",
                   help="assume CPU kernels run at full RAM bandwidth (do not time them)")
    p.add_argument("--remeasure", action="store_true",
                   help="time the CPU kernels again instead of reading the cached rates")
    p.add_argument("--no-disk-measure", action="store_true",
                   help="for a file larger than RAM + VRAM: use --bandwidths nvme= instead of timing cold "
                        "O_DIRECT reads of the file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def build_footprint(args: argparse.Namespace):
    from kimi_runtime.experts.placement import Footprint

    if args.known:
        from kimi_runtime.known_models import KNOWN_MODELS, recipe_for, uniform_recipe

        cfg = KNOWN_MODELS[args.known]
        if args.expert_type:
            import gguf

            if args.recipe:
                raise ValueError("give --recipe or --expert-type, not both")
            try:
                q = gguf.GGMLQuantizationType[args.expert_type.upper()]
            except KeyError:
                raise ValueError(f"unknown ggml type {args.expert_type!r}") from None
            return Footprint.from_config(cfg, uniform_recipe(q)), f"{args.known} ({q.name} experts)"
        r = recipe_for(args.recipe or "UD-Q2_K_XL")
        return Footprint.from_config(cfg, r.type_for(cfg)), f"{args.known} {r.name}"
    model = args.model or args.model_file
    if args.model and args.model_file and args.model != args.model_file:
        raise ValueError(f"two models given: {args.model!r} and -m {args.model_file!r}")
    if not model:
        raise ValueError("give a GGUF file or --known MODEL")
    if args.recipe or args.expert_type:
        raise ValueError("--recipe / --expert-type apply to --known models; a file has its own types")
    from kimi_runtime.commands.common import check_gguf_path
    from kimi_runtime.gguf import open_gguf

    check_gguf_path(model)
    with open_gguf(model) as m:
        return Footprint.from_gguf(m), model


def cpu_read_types(fp: Any, placement: Any) -> set[str]:
    """Formats the CPU kernels read: CPU-placed tensors, cache misses, and everything without a GPU."""
    return {t.ggml_type.name for t in fp.tensors
            if placement.tier == "host" or placement.devices[t.name] in ("cpu", "cache")}


def run(args: argparse.Namespace) -> int:
    from kimi_runtime.commands.plan_hits import hit_ceiling
    from kimi_runtime.experts.placement import (Bandwidths, Budget, auto_fit, moe_rules, parse_override,
                                                parse_size, predict)

    if args.ctx < 1:
        raise ValueError(f"-c/--ctx-size must be >= 1, got {args.ctx}")
    fp, label = build_footprint(args)
    cfg = fp.config
    rules = [parse_override(r) for r in args.override_tensor] + moe_rules(cfg, args.cpu_moe, args.n_cpu_moe)
    budget = Budget(gpu_bytes=parse_size(args.gpu_budget), ram_bytes=parse_size(args.ram_budget), ctx=args.ctx)
    bw = Bandwidths.parse(args.bandwidths)
    placement = auto_fit(fp, budget, rules)
    try:
        rates = sorted({float(x) for x in args.hit_rates.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--hit-rates {args.hit_rates!r}: give numbers in [0, 1] separated by commas") from None
    if not rates or rates[0] < 0 or rates[-1] > 1:
        raise ValueError(f"--hit-rates {args.hit_rates!r}: give numbers in [0, 1] separated by commas")
    if not placement.n_cacheable:
        rates = [0.0]  # nothing goes through a cache: one row, hit rates do not apply
    kr = None
    if not args.no_kernel_measure:
        from kimi_runtime.commands.plan_kernels import kernel_rates

        kr = kernel_rates(cpu_read_types(fp, placement), refresh=args.remeasure)
    eff = kr.efficiency if kr is not None else None
    ceiling = hit_ceiling(placement.slot_fraction, cfg.n_expert, cfg.n_expert_used, args.routing_trace) \
        if placement.n_slots and placement.n_cacheable else None
    preds = []
    for h in rates:
        pr = predict(fp, placement, bw, h, budget.ram_bytes, eff)
        if placement.n_cacheable and (ceiling is not None and h > ceiling.belady + UNREACHABLE_SLACK
                                      or not placement.n_slots and h > 0):
            pr = replace(pr, reachable=False)
        preds.append(pr)
    disk = None
    if budget.ram_bytes + budget.gpu_bytes < fp.total_bytes and placement.n_cacheable:
        disk = disk_tier_prediction(args, fp, budget, rules, bw, eff)
    moe = fp.moe_layers
    facts = {
        "model": label,
        "file_bytes": fp.total_bytes,
        "non_expert_bytes": fp.non_expert_bytes,
        "expert_bytes": fp.expert_bytes_total,
        "bytes_by_type": _bytes_by_type(fp),
        "bytes_per_expert": {str(l): fp.expert_bytes(l) for l in moe[:1] + moe[-1:]},
        "expert_bytes_per_token": fp.expert_bytes_per_token,
        "non_expert_bytes_per_token": fp.non_expert_bytes_per_token(),
        "fits": {"disk+ram+vram_needed": fp.total_bytes,
                 "ram+vram": budget.ram_bytes + budget.gpu_bytes,
                 "all_in_memory": budget.ram_bytes + budget.gpu_bytes >= fp.total_bytes},
        "placement": {"slots": placement.n_slots, "slot_bytes": placement.slot_bytes,
                      "cacheable_experts": placement.n_cacheable, "kv_bytes": placement.kv_bytes,
                      "resident_bytes": placement.gpu_resident, "cpu_resident_bytes": placement.cpu_resident,
                      "cpu_expert_bytes": placement.cpu_expert_bytes, "workspace_bytes": placement.workspace,
                      "gpu_reserve_bytes": placement.gpu_reserve, "vram_used_bytes": placement.vram_used,
                      "expert_ram_bytes": placement.expert_ram_bytes,
                      "ram_free_for_experts": min(placement.ram_free_for_experts, 1 << 60),
                      "spill_fraction": placement.spill_fraction, "tier": placement.tier},
        "bandwidths_GBps": {k: getattr(bw, k) / GB for k in ("vram", "pcie", "ram", "nvme")},
        "cpu_kernels": kr.as_dict() if kr is not None else None,
        "hit_ceiling": ceiling.__dict__ if ceiling is not None else None,
        "predictions": [p.__dict__ for p in preds],
        "disk_tier": disk,
    }
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(render(facts, fp, placement, preds, kr, ceiling))
    return 0


def disk_tier_prediction(args: argparse.Namespace, fp: Any, budget: Any, rules: list, bw: Any,
                         eff: Any) -> dict:
    """Decode on the disk tier (experts streamed by O_DIRECT readers into RAM slots, overlapped with
    compute) for a file larger than RAM + VRAM. The disk rate is the file's own cold read rate when the
    file is given (experts.disk_model.cold_read_rate), else --bandwidths nvme=; the compute rate is
    this plan's in-memory prediction (measured kernel speeds) at full hit rate."""
    from kimi_runtime.experts.disk_model import compute_bps_from_run, predict_disk_decode
    from kimi_runtime.experts.placement import PlacementError, auto_fit, predict

    source = "nvme bandwidth (--bandwidths)"
    disk_bps = bw.nvme
    path = args.model or args.model_file
    if path and not args.no_disk_measure:
        from kimi_runtime.experts.disk_model import cold_read_rate
        from kimi_runtime.gguf import open_gguf

        with open_gguf(path) as m:
            r = cold_read_rate(m)
        disk_bps, source = float(r["bytes_per_s"]), "cold O_DIRECT reads of this file"
    roomy = replace(budget, ram_bytes=1 << 62)
    in_memory = predict(fp, auto_fit(fp, roomy, rules), bw, 1.0, roomy.ram_bytes, eff)
    try:
        d = predict_disk_decode(fp, budget.ram_bytes, disk_bps, ctx=budget.ctx,
                                compute_bps=compute_bps_from_run(fp, in_memory.tok_per_s)).as_dict()
    except PlacementError as e:  # the runtime's own memory on top of the non-expert part does not fit
        d = {"error": str(e).splitlines()[0]}
    d.update(disk_bps=disk_bps, disk_source=source)
    return d


def _bytes_by_type(fp: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in fp.tensors:
        out[t.ggml_type.name] = out.get(t.ggml_type.name, 0) + t.nbytes
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def render(facts: dict, fp: Any, placement: Any, preds: list, kr: Any, ceiling: Any) -> str:
    cfg = fp.config
    L = [f"model: {facts['model']}: {cfg.n_layer} layers, {cfg.n_expert} experts ({cfg.n_expert_used} active), "
         f"{fp.total_bytes / GB:.1f} GB ({fp.non_expert_bytes / GB:.2f} GB non-expert)"]
    L.append("bytes by type: " + ", ".join(f"{k} {v / GB:.1f} GB" for k, v in facts["bytes_by_type"].items()
                                           if v >= 0.001 * fp.total_bytes))
    moe = fp.moe_layers
    e0 = fp.expert_bytes(moe[0]) if moe else 0
    L.append(f"one expert: {e0:,} B; routed experts per token: {fp.expert_bytes_per_token / GB:.2f} GB; "
             f"non-expert per token: {fp.non_expert_bytes_per_token() / GB:.2f} GB")
    fit = "yes" if facts["fits"]["all_in_memory"] else "no: the rest pages in from disk (mmap)"
    L.append(f"RAM + VRAM >= file size? {fit}")
    L.append(placement.summary())
    L.append("")
    L.append("bandwidths GB/s: " + ", ".join(f"{k} {v:g}" for k, v in facts["bandwidths_GBps"].items()))
    if kr is not None and kr.gbs:
        L.append(f"CPU kernels ({kr.source} on this machine, {kr.machine}), GB/s and share of the read "
                 "bandwidth: " + ", ".join(f"{f} {kr.gbs[f]:.1f} ({100 * kr.efficiency(f):.0f}%)" for f in sorted(kr.gbs)))
    elif kr is None:
        L.append("CPU kernels: assumed to run at full RAM bandwidth (--no-kernel-measure)")
    if ceiling is not None:
        L.append(f"reachable hit rate with {ceiling.slots_per_layer} slots per layer "
                 f"({100 * placement.slot_fraction:.1f}% of the experts): at most {100 * ceiling.belady:.0f}% "
                 f"(Belady's optimum), LRU {100 * ceiling.lru:.0f}%, on {ceiling.source}")
    L.append(f"{'hit rate':>8} {'VRAM GB/tok':>12} {'RAM GB/tok':>11} {'PCIe GB/tok':>12} {'disk GB/tok':>12} "
             f"{'miss path':>9} {'tok/s':>8}")
    for p in preds:
        note = "" if p.reachable else "  unreachable with this cache"
        hr = f"{p.hit_rate:8.2f}" if placement.n_cacheable else f"{'-':>8}"
        L.append(f"{hr} {p.gpu_bytes / GB:12.3f} {p.ram_bytes / GB:11.3f} {p.pcie_bytes / GB:12.3f} "
                 f"{p.disk_bytes / GB:12.3f} {p.miss_path:>9} {p.tok_per_s:8.2f}{note}")
    d = facts.get("disk_tier")
    if d and "error" in d:
        L.append(f"disk tier: {d['error']}")
    elif d:
        L.append(f"disk tier (--ram-budget below the file; {d['disk_source']}: {d['disk_bps'] / GB:.2f} GB/s): "
                 f"{d['slots']:,} RAM slots, hit rate {d['hit_rate']:.2f}, {d['disk_bytes_per_token'] / GB:.3f} GB "
                 f"read per token, {d['tok_per_s']:.2f} tok/s ({d['bound']}-bound; {d['tok_per_s_serial']:.2f} "
                 f"tok/s if reads waited on compute, as mmap page faults do)")
    return "\n".join(L)
