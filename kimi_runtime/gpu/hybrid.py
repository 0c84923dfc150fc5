"""The hybrid MoE provider: experts in device slots run on the GPU (the grouped MoE kernel over slot
pointers) while the others run on the CPU from the mmapped file (kernels.moe_ffn) at the same time.
Per layer the lane split (lanes.split_lanes) decides which misses are worth uploading for this
micro-batch (each selected expert once, whatever its token count); the GPU lane is enqueued first
(asynchronous on CUDA), the CPU lane runs meanwhile, and the partial sums meet on the device. The next
layer's likely experts (its router on this layer's input) are prefetched into slots."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kimi_runtime import kernels
from kimi_runtime.gpu.lanes import LaneRates, needs_from_routing, predict_next_layer, split_lanes


@dataclass
class HybridStats:
    layers: int = 0
    gpu_experts: int = 0
    cpu_experts: int = 0
    uploads: int = 0
    prefetches: int = 0
    predicted_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class HybridProvider:
    """ExpertProvider (model.moe) over a backend (CudaBackend / EmuBackend), an ExpertStore and n_slots
    device slots (0: every expert on the CPU). `types`: layer -> (gate, up, down) ggml type ids."""

    def __init__(self, backend, store, types: dict, n_embd: int, n_ff: int, n_expert_used: int, n_slots: int,
                 rates: LaneRates, prefetch: bool = True, n_staging: int = 4, n_readers: int = 2) -> None:
        self.backend, self.store, self.types = backend, store, types
        self.n_embd, self.n_ff, self.k, self.rates = n_embd, n_ff, n_expert_used, rates
        self.pool = backend.make_pool(store, n_slots, n_staging, n_readers) if n_slots > 0 else None
        self.prefetch = prefetch
        self.routers: dict[int, Any] = {}  # layer -> router weight on the device (set by to_gpu)
        self.stats = HybridStats()
        self._refs: dict[tuple[int, int], Any] = {}
        self._layout: dict[tuple[int, int], tuple[int, int, int]] = {}

    def layout(self, layer: int, e: int) -> tuple[int, int, int]:
        key = (layer, e)
        if key not in self._layout:
            self._layout[key] = tuple(int(r[2]) for r in self.store.ranges(layer, e))
        return self._layout[key]

    def _cpu_ref(self, layer: int, e: int):
        key = (layer, e)
        if key not in self._refs:
            nb = self.layout(layer, e)
            addr = [(self.store.mapped_address(layer, e, w), nb[w]) for w in range(3)]
            self._refs[key] = kernels.expert_ref(*addr, tuple(int(t) for t in self.types[layer]), self.n_ff,
                                                 self.n_embd)
        return self._refs[key]

    def run(self, layer: int, x, ids, weights):
        """x [T, D] on the backend's device; ids, weights [T, K]. Returns [T, D] on the same device."""
        import torch

        ids_n = ids.detach().cpu().numpy().astype(np.int64)  # the split needs the choices on the host
        w_n = weights.detach().cpu().numpy().astype(np.float32)
        T, K = ids_n.shape
        pool = self.pool
        chosen = sorted({int(e) for e in ids_n.reshape(-1) if e >= 0})
        n_exp = chosen[-1] + 1 if chosen else 0
        nbytes = [sum(self.layout(layer, e)) if e in chosen else 0 for e in range(n_exp)]
        resident = [pool is not None and e in chosen and pool.contains(layer, e) for e in range(n_exp)]
        needs = needs_from_routing(ids_n.tolist(), nbytes, resident)
        room = (pool.capacity - pool.pinned_slots() - sum(resident)) if pool is not None else 0
        plan = split_lanes(self.rates, needs, allow_upload=pool is not None, max_uploads=max(0, room))
        gpu = sorted(needs[i].key for i in plan.gpu_hits + plan.uploads)
        ups = [needs[i].key for i in plan.uploads]
        cpu = sorted(needs[i].key for i in plan.cpu)
        # The CPU lane's input is copied before the GPU lane is enqueued (a later copy would wait for it).
        xc = x.detach().to("cpu").contiguous().numpy() if cpu else None
        out = torch.zeros((T, self.n_embd), dtype=torch.float32, device=x.device)
        stream = self.backend.stream(pool) if pool is not None else 0
        hits = sorted(needs[i].key for i in plan.gpu_hits)
        if hits:  # resident: the compute stream only waits on ready events, the host does not
            self.backend.moe_from_slots(pool, stream, layer, hits, self.layout, self.types[layer], x, ids_n, w_n,
                                        self.n_ff, out)
        if ups:  # after the hits are pinned, so these loads cannot evict them
            pool.prefetch(layer, ups)
        if cpu:  # the CPU lane runs while the GPU works
            index = {e: i for i, e in enumerate(cpu)}
            sel = np.full((T, K), -1, np.int32)
            for t in range(T):
                for j in range(K):
                    sel[t, j] = index.get(int(ids_n[t, j]), -1)
            yc = kernels.moe_ffn(xc, [self._cpu_ref(layer, e) for e in cpu], sel, w_n)
            out += torch.from_numpy(yc).to(x.device)
        if ups:  # acquired after the CPU lane, when their reads are most likely issued
            self.backend.moe_from_slots(pool, stream, layer, sorted(ups), self.layout, self.types[layer], x, ids_n,
                                        w_n, self.n_ff, out)
        if pool is not None and self.prefetch and (layer + 1) in self.routers:  # after this layer's pins
            nxt = [e for e in predict_next_layer(x, self.routers[layer + 1], self.k)
                   if not pool.contains(layer + 1, e)]
            if nxt:
                self.stats.prefetches += pool.prefetch(layer + 1, nxt)
        if gpu:
            pool.release(layer, gpu, stream)  # hits and uploads, each acquired once; last use recorded on the stream
        s = self.stats
        s.layers += 1
        s.gpu_experts += len(gpu)
        s.cpu_experts += len(cpu)
        s.uploads += len(ups)
        s.predicted_s += plan.total_s
        return out
