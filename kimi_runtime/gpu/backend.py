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


def grouped_expert(backend, x, ids, weights, e: int, parts, types, n_ff: int, out) -> None:
    """out[tokens of e] += w * down(silu(gate x) * up x) for a prompt micro-batch: the expert's three
    matrices dequantized to bf16 once (tiles) and multiplied for all its tokens (mul_mat_id-like)."""
    import torch

    tok, j = np.nonzero(ids == e)
    if tok.size == 0:
        return
    D = x.shape[1]
    t = torch.as_tensor(tok, device=x.device)
    xe = x[t].contiguous()
    gw = backend.tile(parts[0], int(types[0]), n_ff, D)
    uw = backend.tile(parts[1], int(types[1]), n_ff, D)
    dw = backend.tile(parts[2], int(types[2]), D, n_ff)
    xb = xe.to(torch.bfloat16)
    h = (torch.nn.functional.silu((xb @ gw.T).float()) * (xb @ uw.T).float()).to(torch.bfloat16)
    y = (h @ dw.T).float() * torch.as_tensor(weights[tok, j], device=x.device)[:, None]
    out.index_add_(0, t, y)


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

    def tile(self, part, qtype: int, rows: int, cols: int):
        """A whole matrix at a device address (addr, nbytes) dequantized to a bf16 tensor."""
        import torch

        from kimi_runtime._native import C_cuda

        addr, nbytes = part
        t = torch.empty((rows, cols), dtype=torch.bfloat16, device=self.device)
        C_cuda.dequant_tile(int(addr), int(nbytes), qtype, rows, cols, 0, rows, t.data_ptr(), t.numel() * 2, 2,
                            torch.cuda.current_stream(self.device).cuda_stream, self.index)
        return t

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
        if T > FEW_TOKENS:  # prompt: each expert's weights read once for all its tokens
            for e in experts:
                g, u, d = layout(layer, e)
                base = addrs[e]
                parts = [(base, g), (base + g, u), (base + g + u, d)]
                grouped_expert(self, x, ids, weights, e, parts, types, n_ff, out)
            return
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

    def tile(self, part, qtype: int, rows: int, cols: int):
        import torch

        b = C.emu_dequant_tile(part, qtype, rows, cols, 0, rows, 2)
        return torch.from_numpy(b.view(np.int16)).view(torch.bfloat16)

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
        if ids.shape[0] > FEW_TOKENS:
            for e, s in zip(experts, slots):
                g, u, d = layout(layer, e)
                b = np.frombuffer(pool.read_slot(s, g + u + d, stream), np.uint8)
                grouped_expert(self, x, ids, weights, e, [b[:g], b[g:g + u], b[g + u:]], types, n_ff, out)
            return
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
