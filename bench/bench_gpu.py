"""GPU tier figures in one run (scripts/gpu_check.sh calls this): device copy bandwidth, GEMV GB/s per
format against it, H2D GB/s pinned and pageable and through the VRAM slot pool, the hybrid MoE layer's
time at several cache sizes, and decode / prompt tok/s of the CUDA engine against the CPU-only engine on
the medium preset and on a K2-shaped file (K2's layer dimensions with 64 experts and 3 layers, so it is
written in a minute). Every section is timed on its own and a failure prints its error and moves on.

    python bench/bench_gpu.py [--quick] [--out bench/results/gpu.json] [--skip-engine]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FORMATS = ["Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q2_K", "Q3_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S",
           "IQ3_XXS", "IQ3_S", "IQ4_XS", "TQ1_0", "TQ2_0"]
RESULTS: dict[str, Any] = {}


def section(name: str, fn: Callable[[], Any]) -> None:
    t0 = time.time()
    print(f"\n== {name}", flush=True)
    try:
        RESULTS[name] = fn()
    except Exception as e:  # noqa: BLE001 - report and continue: one broken piece must not hide the rest
        traceback.print_exc()
        RESULTS[name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"   FAILED: {type(e).__name__}: {e}")
    print(f"   ({time.time() - t0:.1f} s)", flush=True)


def cuda_time(fn: Callable[[], Any], reps: int) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def device_info() -> dict:
    import torch

    from kimi_runtime._native import C_cuda

    free, total = C_cuda.mem_info(0)
    info = {"name": C_cuda.device_name(0), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "vram_gib": total / 2**30, "free_gib": free / 2**30, "devices": C_cuda.device_count()}
    print("  " + "  ".join(f"{k}={v}" for k, v in info.items()))
    return info


def copy_bw() -> dict:
    import torch

    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    t = cuda_time(lambda: b.copy_(a), 10)
    gbs = 2 * n / t / 1e9  # read + write
    print(f"  device copy: {gbs:.0f} GB/s (read + write of 1 GiB)")
    return {"copy_gbs": gbs}


def gemv_table(quick: bool) -> dict:
    import torch

    from kimi_runtime.gpu import ops
    from kimi_runtime.quant import qtype_info

    copy = RESULTS.get("device copy bandwidth", {}).get("copy_gbs")
    target = (256 if not quick else 128) << 20  # well past L2, so the figure is DRAM bandwidth
    cols = 7168
    out = {}
    print(f"  {'format':8} {'MB':>6} {'1 tok GB/s':>11} {'8 tok GB/s':>11} {'% of copy':>10}")
    for name in FORMATS:
        q = qtype_info(name)
        rb = cols // q.block_size * q.type_size
        rows = max(256, target // rb // 256 * 256)
        w = torch.randint(0, 256, (rows * rb,), dtype=torch.uint8, device="cuda")  # speed is data-independent
        row = {}
        for n in (1, 8):
            x = torch.randn(n, cols, device="cuda")
            t = cuda_time(lambda: ops.gemv(w, name, rows, cols, x), 20)
            row[n] = w.numel() / t / 1e9
        pct = 100 * row[1] / copy if copy else float("nan")
        out[name] = {"gbs_1": row[1], "gbs_8": row[8], "pct_copy": pct, "mb": w.numel() / 1e6}
        print(f"  {name:8} {w.numel() / 1e6:6.0f} {row[1]:11.0f} {row[8]:11.0f} {pct:9.0f}%")
        del w
    return out


def h2d() -> dict:
    import torch

    n = 256 << 20
    pinned = torch.empty(n, dtype=torch.uint8).pin_memory()
    pageable = torch.empty(n, dtype=torch.uint8)
    pageable.fill_(1)
    dst = torch.empty(n, dtype=torch.uint8, device="cuda")
    tp = cuda_time(lambda: dst.copy_(pinned, non_blocking=True), 10)
    tq = cuda_time(lambda: dst.copy_(pageable), 5)
    r = {"pinned_gbs": n / tp / 1e9, "pageable_gbs": n / tq / 1e9}
    print(f"  H2D pinned {r['pinned_gbs']:.1f} GB/s, pageable {r['pageable_gbs']:.1f} GB/s")
    return r


def k2_expert_file(d: Path, n_expert: int, n_embd: int = 7168, n_ff: int = 2048) -> tuple[Path, list]:
    """n_expert K2-shaped experts (Q4_K gate/up, Q6_K down) of random bytes, as one file + ranges."""
    from kimi_runtime.quant import qtype_info

    g = n_ff * (n_embd // 256) * qtype_info("Q4_K").type_size
    dn = n_embd * (n_ff // 256) * qtype_info("Q6_K").type_size
    path = d / "k2_experts.bin"
    rng = np.random.default_rng(0)
    ranges, off = [], 0
    with open(path, "wb") as f:
        for e in range(n_expert):
            rs = []
            for n in (g, g, dn):
                f.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
                rs.append((0, off, n))
                off += n
            ranges.append(rs)
    return path, ranges


def moe_layer(quick: bool) -> dict:
    import torch

    from kimi_runtime._native import C
    from kimi_runtime.gpu.backend import CudaBackend
    from kimi_runtime.gpu.hybrid import HybridProvider
    from kimi_runtime.gpu.lanes import LaneRates
    from kimi_runtime.quant import qtype_info

    E, K, D, F = 64, 8, 7168, 2048
    h = RESULTS.get("H2D", {})
    rates = LaneRates.from_bandwidths(cpu_gbs=40, gpu_gbs=2000, h2d_gbs=h.get("pinned_gbs", 25))
    out = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("KR_BENCH_TMP")) as td:
        path, ranges = k2_expert_file(Path(td), E)
        store = C.ExpertStore([str(path)], 1, E)
        for e, rs in enumerate(ranges):
            store.set_expert(0, e, *rs)
        types = {0: (qtype_info("Q4_K").id, qtype_info("Q4_K").id, qtype_info("Q6_K").id)}
        be = CudaBackend()
        steps = 10 if quick else 30
        rng = np.random.default_rng(1)
        routes = [rng.choice(E, K, replace=False) for _ in range(steps)]
        print(f"  K2-shaped layer ({E} experts x {sum(ranges[0][i][2] for i in range(3)) / 2**20:.1f} MiB, k={K}),"
              f" 1 token, random routing")
        for frac in (0.0, 0.10, 0.25, 0.50):
            slots = int(round(frac * E))
            prov = HybridProvider(be, store, types, D, F, K, slots, rates, prefetch=False)
            if slots:  # warm: the cache holds the first `slots` experts
                prov.pool.prefetch(0, list(range(slots)))
                prov.pool.wait_idle()
            x = torch.randn(1, D, device="cuda") * 0.02
            w = torch.full((1, K), 1.0 / K, device="cuda")
            prov.run(0, x, torch.as_tensor(routes[0][None]), w)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for r in routes:
                prov.run(0, x, torch.as_tensor(r[None]), w)
            torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) / steps * 1e3
            st = prov.stats
            out[f"{int(frac * 100)}%"] = {"ms": ms, "gpu_experts": st.gpu_experts, "cpu_experts": st.cpu_experts,
                                          "uploads": st.uploads}
            print(f"  cache {int(frac * 100):3d}% ({slots:2d} slots): {ms:7.2f} ms/layer  "
                  f"(gpu {st.gpu_experts}, cpu {st.cpu_experts}, uploads {st.uploads})")
            if slots:
                ps = prov.pool.stats()
                out[f"{int(frac * 100)}%"]["pool"] = ps
            del prov
    return out


def engine_speed(path: str, label: str, quick: bool) -> dict:
    import torch

    from kimi_runtime.engine import Engine
    from kimi_runtime.gpu.backend import CudaBackend
    from kimi_runtime.gpu.engine import make_provider, to_gpu

    n_prompt, n_dec = (64, 4) if quick else (128, 8)
    prompt = torch.randint(0, 1000, (n_prompt,), generator=torch.Generator().manual_seed(0))

    def run(eng) -> tuple[float, float]:
        eng.prefill(prompt[:8])
        eng.reset()
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        t0 = time.perf_counter()
        eng.prefill(prompt)
        sync()
        tp = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(n_dec):
            eng.decode(int(prompt[i]))
        sync()
        return n_prompt / tp, n_dec / (time.perf_counter() - t0)

    rows = {}
    cpu = Engine.from_gguf(path, report=False)
    rows["cpu"] = run(cpu)
    n_cacheable = len(cpu.config.moe_layers) * cpu.config.n_expert
    cpu.close()
    print(f"  {label}: CPU-only engine  prompt {rows['cpu'][0]:8.1f} tok/s  decode {rows['cpu'][1]:6.2f} tok/s")
    for frac in (0.0, 0.10, 0.25, 0.50):
        eng = Engine.from_gguf(path, report=False)
        be = CudaBackend()
        prov = make_provider(eng, be, n_slots=int(frac * n_cacheable))
        to_gpu(eng, be, prov)
        rows[f"cuda {int(frac * 100)}%"] = run(eng)
        p, d = rows[f"cuda {int(frac * 100)}%"]
        print(f"  {label}: CUDA engine, cache {int(frac * 100):3d}%  prompt {p:8.1f} tok/s  decode {d:6.2f} tok/s"
              f"  ({d / rows['cpu'][1]:.2f}x CPU decode)")
        eng.close()
        del eng, prov
        torch.cuda.empty_cache()
    return {k: {"prompt_tps": v[0], "decode_tps": v[1]} for k, v in rows.items()}


def engines(quick: bool) -> dict:
    from kimi_runtime.commands.demo import ensure_model
    from kimi_runtime.synth import preset_config, write_synthetic

    out = {"medium": engine_speed(str(ensure_model("medium", 0, sys.stderr, recipe="q4_k_m")), "medium", quick)}
    k2 = preset_config("medium", n_vocab=32000, n_embd=7168, n_layer=3, n_ff=18432, n_ff_exp=2048, n_head=64,
                       q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                       v_head_dim=128, n_expert=64, n_expert_used=8, n_leading_dense=1)
    d = Path(os.environ.get("KR_BENCH_TMP") or tempfile.gettempdir()) / "kr_gpu_k2"
    path = d / "k2shape.gguf"
    if not path.exists():
        t0 = time.time()
        write_synthetic(k2, path, recipe="q4_k_m", progress=False)
        print(f"  wrote the K2-shaped file {path} ({path.stat().st_size / 2**30:.1f} GiB) in {time.time() - t0:.0f} s")
    out["k2shape"] = engine_speed(str(path), "K2-shaped", quick)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu.json"))
    a = ap.parse_args()
    from kimi_runtime.gpu import require_cuda

    require_cuda()
    section("device", device_info)
    section("device copy bandwidth", copy_bw)
    section("GEMV", lambda: gemv_table(a.quick))
    section("H2D", h2d)
    section("MoE layer", lambda: moe_layer(a.quick))
    if not a.skip_engine:
        section("engines", lambda: engines(a.quick))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(RESULTS, indent=1, default=str))
    print(f"\nresults: {a.out}")


if __name__ == "__main__":
    main()
