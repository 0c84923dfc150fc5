"""Execution backends of the GPU tier. CudaBackend runs the CUDA kernels (through _C_cuda) on torch
CUDA tensors and keeps expert slots in VRAM. EmuBackend runs the same kernels' bodies through the
host emulator on CPU tensors with the emulated-device slot pool: the whole GPU engine path (weight
upload, kernel choice, slot acquire/release, lane split, next-layer prefetch) is then exercised on a
machine without a GPU (tests/test_gpu_engine_emulated.py)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from kimi_runtime._native import C
from kimi_runtime.quant import qtype_info

FEW_TOKENS = 8  # the GEMV kernels' token limit per launch; longer runs dequantize tiles + matmul


def gemv_ok(qtype: Any) -> bool:
    return bool(C.emu_gpu_supported(qtype_info(qtype).id))


class CudaBackend:
    name = "cuda"

    def __init__(self, device: Optional[int] = None) -> None:
        import torch

        from kimi_runtime.gpu.status import require_cuda

        self.index = require_cuda(device)
        self.device = torch.device("cuda", self.index)

    def upload(self, raw: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(raw).reshape(-1).view(np.uint8)).to(self.device)

    def linear(self, w, qtype, rows: int, cols: int, x):
        from kimi_runtime.gpu import ops

        x = x.contiguous()
        if x.shape[0] <= FEW_TOKENS and gemv_ok(qtype) and cols % 256 == 0:
            return ops.gemv(w, qtype, rows, cols, x)
        return ops.dequant_matmul(x, w, qtype, rows, cols)

    def make_pool(self, store, n_slots: int, n_staging: int = 4, n_readers: int = 2):
        from kimi_runtime._native import C_cuda

        return C_cuda.VramSlotPool(store, n_slots, self.index, n_staging, n_readers)

    def stream(self, pool) -> int:
        import torch

        return torch.cuda.current_stream(self.device).cuda_stream

    def moe_from_slots(self, pool, stream: int, layer: int, experts: Sequence[int], layout, types, x, ids, weights,
                       n_ff: int, out):
        """out += routed sum over the (token, k) whose expert is in `experts` (all in slots)."""
        from kimi_runtime.gpu import ops

        addrs = dict(zip(experts, pool.acquire(layer, list(experts), stream)))  # stream waits on the loads
        T, K = ids.shape
        ptrs = np.zeros((T * K, 3), np.uint64)
        tys = np.zeros((T * K, 3), np.int32)
        w = np.zeros((T, K), np.float32)
        for t in range(T):
            for j in range(K):
                e = int(ids[t, j])
                if e in addrs:
                    g, u, _ = layout(layer, e)
                    ptrs[t * K + j] = (addrs[e], addrs[e] + g, addrs[e] + g + u)
                    tys[t * K + j] = types
                    w[t, j] = weights[t, j]
        ops.moe(x.contiguous(), ptrs, tys, w, n_ff, out=out, accumulate=True)


class EmuBackend:
    """CPU tensors; kernels through the host emulator of the CUDA kernels; slots in the emulated device."""

    name = "emu"

    def __init__(self, seed: int = 1, max_delay_us: int = 50) -> None:
        import torch

        self.device = torch.device("cpu")
        self.seed, self.max_delay_us = seed, max_delay_us
        self._streams: dict[int, int] = {}

    def upload(self, raw: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(raw).reshape(-1).view(np.uint8).copy())

    def linear(self, w, qtype, rows: int, cols: int, x):
        import torch

        q = qtype_info(qtype)
        xn = x.detach().contiguous().numpy()
        wn = w.numpy()
        if x.shape[0] <= FEW_TOKENS and gemv_ok(q.id) and cols % 256 == 0:
            return torch.from_numpy(C.emu_gemv(wn, q.id, rows, cols, xn))
        tile = C.emu_dequant_tile(wn, q.id, rows, cols, 0, rows, 2)  # bf16 bits, as the GPU tiles
        wt = torch.from_numpy(tile.view(np.int16)).view(torch.bfloat16)
        return (x.to(torch.bfloat16) @ wt.T).float()

    def make_pool(self, store, n_slots: int, n_staging: int = 4, n_readers: int = 2):
        return C.EmuDevicePool(store, n_slots, n_staging, n_readers, self.seed, self.max_delay_us)

    def stream(self, pool) -> int:
        key = id(pool)
        if key not in self._streams:
            self._streams[key] = pool.new_stream()
        return self._streams[key]

    def moe_from_slots(self, pool, stream: int, layer: int, experts: Sequence[int], layout, types, x, ids, weights,
                       n_ff: int, out):
        import torch

        slots = pool.acquire(layer, list(experts), stream)
        refs, index = [], {}
        for e, s in zip(experts, slots):
            g, u, d = layout(layer, e)
            b = np.frombuffer(pool.read_slot(s, g + u + d, stream), np.uint8)  # in stream order: after the load
            index[e] = len(refs)
            refs.append((b[:g], b[g:g + u], b[g + u:], int(types[0]), int(types[1]), int(types[2])))
        T, K = ids.shape
        sel = np.full((T, K), -1, np.int32)
        for t in range(T):
            for j in range(K):
                sel[t, j] = index.get(int(ids[t, j]), -1)
        y = C.emu_moe(x.detach().contiguous().numpy(), refs, sel, np.asarray(weights, np.float32), n_ff)
        out += torch.from_numpy(y)
