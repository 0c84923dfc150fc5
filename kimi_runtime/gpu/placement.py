"""GPU placement defaults: non-expert weights and the KV cache in VRAM, the CUDA context and kernel
workspace reserved, and whatever VRAM is left for expert slots. The integrator wires gpu_budget into
kimi_runtime.experts.placement (auto_fit already places a Budget with gpu_bytes > 0 that way)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kimi_runtime.experts.placement import Budget

MiB = 1 << 20
CONTEXT_RESERVE = 600 * MiB  # CUDA context + cuBLAS handles + torch's allocator slack (measured typical)
STAGING_BUFFERS = 4


@dataclass(frozen=True)
class GpuMemory:
    total: int
    free: int


def query_memory(device: int = 0) -> GpuMemory:
    from kimi_runtime._native import C_cuda

    free, total = C_cuda.mem_info(device)
    return GpuMemory(int(total), int(free))


def kernel_workspace_bytes(n_embd: int, n_ff: int, k: int, ubatch: int) -> int:
    """Device workspace of the GPU kernels for one micro-batch: q8 activations (40 bytes per 32 values),
    the MoE route table and its h / y buffers (mirrors csrc/cuda/ops_bind_cuda.cu's moe_layout)."""
    routes = ubatch * k
    q8 = lambda n: n // 32 * 40  # noqa: E731
    return (routes * 48 + q8(ubatch * n_embd) + q8(routes * n_ff) + 4 * routes * n_ff + 4 * routes * n_embd
            + 5 * 256)


def gpu_budget(mem: GpuMemory, ram_bytes: int = 0, ctx: int = 4096, ubatch: int = 512, n_embd: int = 7168,
               n_ff: int = 2048, k: int = 8, limit: Optional[int] = None) -> Budget:
    """A placement Budget for a GPU: what is free now (or `limit`, if smaller), minus the context
    reserve, the kernel workspace and the pinned staging ring's device-side share (none: staging is
    host memory, but the reserve covers the copy engine's descriptors)."""
    usable = mem.free if limit is None else min(mem.free, int(limit))
    reserve = CONTEXT_RESERVE + kernel_workspace_bytes(n_embd, n_ff, k, ubatch)
    return Budget(gpu_bytes=max(0, usable), ram_bytes=ram_bytes, ctx=ctx, ubatch=ubatch, gpu_reserve=reserve)


def staging_host_bytes(expert_bytes: int, n_staging: int = STAGING_BUFFERS) -> int:
    """Pinned host memory of the staging ring (counted against RAM, not VRAM)."""
    return n_staging * expert_bytes


def plan_gpu(fp, mem: GpuMemory, ram_bytes: int = 0, ctx: int = 4096, ubatch: int = 512, rules=(),
             limit: Optional[int] = None):
    """Placement on a GPU machine (experts.placement.auto_fit with this module's Budget): non-expert
    weights and the KV cache in VRAM, the context and kernel workspace reserved, slots for the rest."""
    from kimi_runtime.experts.placement import auto_fit

    cfg = fp.config
    b = gpu_budget(mem, ram_bytes=ram_bytes, ctx=ctx, ubatch=ubatch, n_embd=cfg.n_embd, n_ff=cfg.n_ff_exp,
                   k=cfg.n_expert_used, limit=limit)
    return auto_fit(fp, b, rules)
