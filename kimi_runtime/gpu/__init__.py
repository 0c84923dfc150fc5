"""The GPU tier: CUDA kernels (quantized GEMV, grouped MoE, dequantize tiles) through _C_cuda, VRAM
expert slots, the hybrid GPU+CPU MoE layer and GPU placement. Nothing here falls back to the host
silently: asking for a GPU where there is none raises GpuUnavailable with the reason."""
from __future__ import annotations

from kimi_runtime.gpu.status import GpuUnavailable, cuda_status, require_cuda

__all__ = ["GpuUnavailable", "cuda_status", "require_cuda"]
