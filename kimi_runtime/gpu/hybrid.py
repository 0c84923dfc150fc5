"""The hybrid MoE layer: experts resident in VRAM slots run on the GPU (grouped MoE kernel over slot
pointers) while the rest run on the CPU from the mmapped file (kernels.moe_ffn) at the same time; the
lane split (lanes.split_lanes) picks which misses are worth uploading this micro-batch. The GPU work
is enqueued first (asynchronous), the CPU lane runs on the host meanwhile, and the two partial sums
meet on the GPU. Next-layer prefetch fills slots while this layer computes.

Needs a GPU: it is compiled and its decisions are tested (test_gpu_lanes.py), the layer itself runs
only in the requires_cuda tests / scripts/gpu_check.sh."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from kimi_runtime import kernels
from kimi_runtime.gpu import ops
from kimi_runtime.gpu.lanes import LaneRates, needs_from_routing, split_lanes
from kimi_runtime.gpu.status import require_cuda


@dataclass
class HybridStats:
    layers: int = 0
    gpu_experts: int = 0
    cpu_experts: int = 0
    uploads: int = 0
    prefetches: int = 0
    predicted_s: float = 0.0
    per_layer: list = field(default_factory=list)


class HybridMoE:
    """One object for all MoE layers of a model.

    store: C.ExpertStore over the GGUF parts (gate|up|down per (layer, expert));
    types: per layer, the (gate, up, down) ggml type ids; n_embd, n_ff: expert shape;
    n_slots: VRAM slots (0 = CPU only); rates: LaneRates (measured by gpu_check / bench)."""

    def __init__(self, store, types: Sequence[Sequence[int]], n_embd: int, n_ff: int, n_slots: int,
                 rates: LaneRates, device: Optional[int] = None, n_staging: int = 4, n_readers: int = 2) -> None:
        from kimi_runtime._native import C_cuda

        self.device = require_cuda(device)
        self.store, self.types, self.n_embd, self.n_ff, self.rates = store, types, n_embd, n_ff, rates
        self.pool = C_cuda.VramSlotPool(store, n_slots, self.device, n_staging, n_readers) if n_slots > 0 else None
        self.stats = HybridStats()
        self._cpu_refs: dict[tuple[int, int], object] = {}

    def _cpu_ref(self, layer: int, e: int):
        key = (layer, e)
        ref = self._cpu_refs.get(key)
        if ref is None:
            nb = [r[2] for r in self.store.ranges(layer, e)]
            addr = [(self.store.mapped_address(layer, e, w), nb[w]) for w in range(3)]
            ref = kernels.expert_ref(*addr, tuple(self.types[layer]), self.n_ff, self.n_embd)
            self._cpu_refs[key] = ref
        return ref

    def resident(self, layer: int, e: int) -> bool:
        return self.pool is not None and self.pool.contains(layer, e)

    def __call__(self, layer: int, x, ids: np.ndarray, weights: np.ndarray, prefetch_next: Sequence[int] = ()):
        """x [T, D] float32 CUDA; ids, weights [T, K] host arrays. Returns [T, D] float32 CUDA."""
        import torch

        ids = np.asarray(ids, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float32)
        T, K = ids.shape
        nbytes = {int(e): int(self.store.expert_bytes(layer, int(e))) for e in np.unique(ids) if e >= 0}
        n_exp = max(nbytes) + 1 if nbytes else 0
        nb_arr = [nbytes.get(e, 0) for e in range(n_exp)]
        res = [self.resident(layer, e) for e in range(n_exp)]
        needs = needs_from_routing(ids.tolist(), nb_arr, res)
        free = self.pool.capacity - self.pool.pinned_slots() if self.pool is not None else 0
        plan = split_lanes(self.rates, needs, allow_upload=self.pool is not None, max_uploads=max(0, free - len(
            [n for n in needs if n.resident])))
        gpu_set = {needs[i].key for i in plan.gpu_hits + plan.uploads}
        up_set = [needs[i].key for i in plan.uploads]
        stream = torch.cuda.current_stream(x.device).cuda_stream
        out = torch.zeros((T, self.n_embd), dtype=torch.float32, device=x.device)
        acquired: list[int] = []
        cpu_keys = {needs[i].key for i in plan.cpu}
        # The CPU lane's input comes over before the GPU lane is enqueued: copying it later would
        # wait for the GPU lane and serialise the two.
        xc = x.detach().to("cpu").numpy() if cpu_keys else None
        if self.pool is not None and up_set:
            self.pool.prefetch(layer, up_set)  # readers + copy stream start now
        if self.pool is not None and gpu_set:
            acquired = sorted(gpu_set)
            addrs = dict(zip(acquired, self.pool.acquire(layer, acquired, stream)))  # orders stream after loads
            ptrs = np.zeros((T * K, 3), np.uint64)
            types = np.zeros((T * K, 3), np.int32)
            w_gpu = np.zeros((T, K), np.float32)
            sizes = None
            for t in range(T):
                for j in range(K):
                    e = int(ids[t, j])
                    if e in gpu_set:
                        if sizes is None or sizes[0] != e:
                            r = self.store.ranges(layer, e)
                            sizes = (e, r[0][2], r[1][2])
                        base = addrs[e]
                        ptrs[t * K + j] = (base, base + sizes[1], base + sizes[1] + sizes[2])
                        types[t * K + j] = self.types[layer]
                        w_gpu[t, j] = weights[t, j]
            ops.moe(x, ptrs, types, w_gpu, self.n_ff, out=out, accumulate=True)  # asynchronous
        if self.pool is not None and prefetch_next:
            self.stats.prefetches += self.pool.prefetch(layer + 1, list(prefetch_next))
        if cpu_keys:  # the CPU lane runs while the GPU works
            experts = sorted(cpu_keys)
            index = {e: i for i, e in enumerate(experts)}
            sel = np.full((T, K), -1, np.int32)
            for t in range(T):
                for j in range(K):
                    e = int(ids[t, j])
                    if e in index:
                        sel[t, j] = index[e]
            yc = kernels.moe_ffn(xc, [self._cpu_ref(layer, e) for e in experts], sel, weights)
            out += torch.from_numpy(yc).to(x.device, non_blocking=True)
        if acquired:
            self.pool.release(layer, acquired, stream)
        self.stats.layers += 1
        self.stats.gpu_experts += len(gpu_set)
        self.stats.cpu_experts += len(cpu_keys)
        self.stats.uploads += len(up_set)
        self.stats.predicted_s += plan.total_s
        return out
