"""`-ngl` from the CLI: put a loaded Engine on the GPU tier (gpu.engine.to_gpu) with as many VRAM expert
slots as the device's free memory leaves after the non-expert weights, the KV cache, the CUDA context
and the kernel workspace (gpu.placement.plan_gpu). Layers are not split: any -ngl > 0 moves every
layer's dense part, as -ngl 99 does in llama.cpp, and the routed experts run hybrid (VRAM hits, CPU
misses in parallel).

KR_GPU_BACKEND=emu runs the same path through the host emulator of the CUDA kernels, so that the
wiring is tested on machines without a GPU; it is slow and meant for tests only."""
from __future__ import annotations

import os
from typing import Any, Optional

from kimi_runtime.gpu.status import GpuUnavailable


def emulated() -> bool:
    """KR_GPU_BACKEND=emu: the GPU path through the host emulator (tests on machines without a GPU)."""
    return os.environ.get("KR_GPU_BACKEND", "cuda") == "emu"


def _backend() -> Any:
    if emulated():
        from kimi_runtime.gpu.backend import EmuBackend

        return EmuBackend()
    from kimi_runtime.gpu.backend import CudaBackend

    return CudaBackend()


def vram_slots(engine: Any, backend: Any, gpu_budget: Optional[int] = None) -> tuple[int, str]:
    """Expert slots for the device, and the placement line that explains them."""
    from kimi_runtime.experts.placement import Footprint
    from kimi_runtime.gpu.placement import GpuMemory, plan_gpu, query_memory

    fp = Footprint.from_gguf(engine.model.src.model)
    if backend.name == "emu":  # no device to ask: the budget given, else room for a quarter of the experts
        n = fp.config.n_expert * len(fp.config.moe_layers)
        per = max(fp.expert_bytes(layer) for layer in fp.moe_layers)
        free = int(gpu_budget) if gpu_budget else fp.non_expert_bytes + (n // 4) * per + (2 << 30)
        mem = GpuMemory(free, free)
    else:
        mem = query_memory(backend.index)
    p = plan_gpu(fp, mem, ctx=engine.n_ctx, limit=gpu_budget)
    return p.n_slots, p.summary().splitlines()[0]


def attach_gpu(engine: Any, n_gpu_layers: int, gpu_budget: Any = None) -> list[str]:
    """Convert `engine` in place when -ngl asks for it; returns the lines to report. `gpu_budget`: bytes
    or a size string ("20GiB", a bare number is GiB). Raises GpuUnavailable (with the reason) when no
    usable device is there."""
    if not n_gpu_layers or n_gpu_layers <= 0:
        return []
    if isinstance(gpu_budget, str):
        from kimi_runtime.experts.placement import parse_size

        gpu_budget = parse_size(gpu_budget)
    from kimi_runtime.gpu.engine import make_provider, to_gpu

    backend = _backend()
    n_slots, why = vram_slots(engine, backend, gpu_budget)
    lines = [f"gpu ({backend.name}): every layer's dense part and the KV cache on the device; "
             f"{n_slots} VRAM expert slots, misses on the CPU in parallel; {why}"]
    if n_gpu_layers < engine.config.n_layer:
        lines.append(f"-ngl {n_gpu_layers} < {engine.config.n_layer} layers: layers are not split, all of them "
                     "run on the GPU tier")
    to_gpu(engine, backend, make_provider(engine, backend, n_slots=max(n_slots, 0)))
    engine.n_gpu_layers = int(n_gpu_layers)
    return lines


__all__ = ["GpuUnavailable", "attach_gpu", "emulated", "vram_slots"]
