"""torch faces of the CUDA kernels: every call passes torch's current stream and the tensors' device
to _C_cuda (which runs its own CUDA runtime and selects that device), and takes workspace from torch's
allocator. Inputs are validated here (ValueError); the native layer checks sizes again."""
from __future__ import annotations

from typing import Optional, Sequence

from kimi_runtime._native import C_cuda
from kimi_runtime.gpu.status import require_cuda
from kimi_runtime.quant import QTypeLike, qtype_info


def _mod():
    require_cuda()
    return C_cuda


def _stream(t) -> int:
    import torch

    return torch.cuda.current_stream(t.device).cuda_stream


def _check_cuda(t, what: str, dtype=None) -> None:
    import torch

    if not isinstance(t, torch.Tensor) or t.device.type != "cuda":
        raise ValueError(f"{what} must be a CUDA tensor")
    if not t.is_contiguous():
        raise ValueError(f"{what} must be contiguous")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{what} must be {dtype}, got {t.dtype}")


def gemv(w, qtype: QTypeLike, rows: int, cols: int, x):
    """x [n, cols] float32 (CUDA) @ W^T for raw quantized W (uint8 CUDA tensor) -> [n, rows] float32."""
    import torch

    m = _mod()
    q = qtype_info(qtype)
    _check_cuda(w, "w", torch.uint8)
    _check_cuda(x, "x", torch.float32)
    if x.ndim != 2 or x.shape[1] != cols:
        raise ValueError(f"x must be [n, {cols}]")
    if w.device != x.device:
        raise ValueError("w and x are on different devices")
    n = x.shape[0]
    out = torch.empty((n, rows), dtype=torch.float32, device=x.device)
    ws = torch.empty(max(1, m.gemv_workspace_bytes(n, cols)), dtype=torch.uint8, device=x.device)
    m.gemv(w.data_ptr(), w.numel(), q.id, rows, cols, x.data_ptr(), n, out.data_ptr(), out.numel() * 4,
           ws.data_ptr(), ws.numel(), _stream(x), x.device.index)
    return out


def moe(x, ptrs, types, weights, n_ff: int, out: Optional["object"] = None, accumulate: bool = False):
    """Grouped MoE on the GPU: x [T, D] float32 CUDA; ptrs [T*K, 3] device addresses of each (token, k)
    slot's gate/up/down (0 = skipped), types [T*K, 3], weights [T, K] (host arrays). Returns [T, D]."""
    import numpy as np
    import torch

    m = _mod()
    _check_cuda(x, "x", torch.float32)
    T, D = x.shape
    w = np.ascontiguousarray(np.asarray(weights, dtype=np.float32).reshape(-1))
    K = w.size // max(T, 1)
    if out is None:
        out = torch.zeros((T, D), dtype=torch.float32, device=x.device) if accumulate else \
            torch.empty((T, D), dtype=torch.float32, device=x.device)
    _check_cuda(out, "out", torch.float32)
    ws = torch.empty(m.moe_workspace_bytes(T, K, D, n_ff), dtype=torch.uint8, device=x.device)
    m.moe(x.data_ptr(), T, D, n_ff, K, np.ascontiguousarray(ptrs, dtype=np.uint64).reshape(-1, 3),
          np.ascontiguousarray(types, dtype=np.int32).reshape(-1, 3), w, out.data_ptr(), out.numel() * 4,
          bool(accumulate), ws.data_ptr(), ws.numel(), _stream(x), x.device.index)
    return out


def dequant_matmul(x, w, qtype: QTypeLike, rows: int, cols: int, tile_rows: int = 4096):
    """Prompt GEMM: x [n, cols] @ W^T with W dequantized tile by tile to bf16 (never whole), each tile
    multiplied by torch (cuBLAS). Returns float32 [n, rows]."""
    import torch

    m = _mod()
    q = qtype_info(qtype)
    _check_cuda(w, "w", torch.uint8)
    _check_cuda(x, "x")
    out = torch.empty((x.shape[0], rows), dtype=torch.float32, device=x.device)
    xb = x.to(torch.bfloat16)
    tile = torch.empty((min(tile_rows, rows), cols), dtype=torch.bfloat16, device=x.device)
    for r0 in range(0, rows, tile_rows):
        r1 = min(rows, r0 + tile_rows)
        t = tile[: r1 - r0]
        m.dequant_tile(w.data_ptr(), w.numel(), q.id, rows, cols, r0, r1, t.data_ptr(), t.numel() * 2, 2,
                       _stream(x), x.device.index)
        out[:, r0:r1] = (xb @ t.T).float()
    return out


def supported(qtype: QTypeLike) -> bool:
    """Whether the GPU kernels have an integer path for this format (any machine: pure table lookup)."""
    from kimi_runtime._native import C

    return bool(C.emu_gpu_supported(qtype_info(qtype).id))


def gpu_formats() -> Sequence[str]:
    """The formats with a GPU integer GEMV, in order of importance for Kimi / DeepSeek files."""
    names = ["Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q2_K", "Q3_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S",
             "IQ3_XXS", "IQ3_S", "IQ4_XS", "TQ1_0", "TQ2_0", "Q4_0"]
    return [n for n in names if supported(n)]
