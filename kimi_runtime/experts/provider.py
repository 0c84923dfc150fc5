"""CachedExpertProvider: the model's ExpertProvider over the expert cache. Per MoE layer the scheduler
splits the batch's experts into hits, fetches and CPU misses; hits and fetches run from their slots, CPU
misses from the mmapped file, through the very kernel calls the direct provider makes (its own chunking,
the shared expert fused in the same call), so the logits are identical; the next layer's guessed
experts load while this layer computes."""
from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from kimi_runtime.experts.cache import ExpertCache, store_from_model
from kimi_runtime.experts.placement import (Budget, Footprint, Placement, PlacementError, auto_fit, moe_rules,
                                            parse_override, parse_size)
from kimi_runtime.experts.prefetch import NextLayerPrefetcher
from kimi_runtime.experts.scheduler import (CostModel, ExpertScheduler, LayerPlan, measure_cost_model,
                                            measure_disk_read, spread_ranges)
from kimi_runtime.experts.tiers import (READ_MODES, RamReserve, keep_experts_out_of_page_cache, lock_resident,
                                        ram_reserve, tier_stats)
from kimi_runtime.model.linear import QLinear, kernels
from kimi_runtime.model.moe import MLP, DirectExpertProvider, expert_groups
from kimi_runtime.model.weights import WeightSource

# T = tokens, D = n_embd, K = experts per token

OnPredict = Callable[[int, list[int]], None]


class CachedExpertProvider(DirectExpertProvider):
    """ExpertProvider that runs hits from cache slots and decides misses with an ExpertScheduler.

    A DirectExpertProvider underneath: its file-side views, refs and kernel calls are reused, only the
    weight pointers of slotted experts change (so MoE fuses the shared expert here too).
    src: the GGUF weight source the cache's store was built from. prefetcher: optional
    NextLayerPrefetcher; on_predict(layer, ids) sees each guess (trace files). With the host tier the
    slot kernel is the CPU kernel reading slot bytes, so everything runs and is tested on a CPU.
    """

    def __init__(self, src: WeightSource, cache: ExpertCache, scheduler: ExpertScheduler,
                 prefetcher: Optional[NextLayerPrefetcher] = None, on_predict: Optional[OnPredict] = None,
                 *, slots_only: bool = False) -> None:
        super().__init__(src)
        self.cache = cache
        # The disk tier: every expert runs from a slot (the file is read with O_DIRECT, never through
        # the mapping); a batch needing more experts than half the slots runs in windows.
        self.slots_only = bool(slots_only)
        self.scheduler = scheduler
        self.prefetcher = prefetcher
        self.on_predict = on_predict
        self._slot_refs: dict[int, tuple[int, int, Any]] = {}  # slot -> (layer, expert, ExpertRef)
        self._views: dict[int, np.ndarray] = {}

    @property
    def direct(self) -> DirectExpertProvider:
        """The file-side provider (this object: slots only replace pointers)."""
        return self

    # ---- slot-side handles
    def _slot_ref(self, slot: int, layer: int, e: int) -> Any:
        hit = self._slot_refs.get(slot)
        if hit is not None and hit[0] == layer and hit[1] == e:
            return hit[2]
        lay = self.cache.layout(layer, e)
        base = self.cache.slot_address(slot)
        m = self.expert(layer, e)
        parts = [(base + off, n) for off, n in zip((lay.gate, lay.up, lay.down), lay.nbytes)]
        r = kernels().expert_ref(*parts, (m.gate.qtype, m.up.qtype, m.down.qtype), self.cfg.n_ff_exp,
                                 self.cfg.n_embd)
        self._slot_refs[slot] = (layer, e, r)
        return r

    def _slot_mlp(self, slot: int, layer: int, e: int) -> MLP:
        """QLinears over the slot's bytes (same types and shapes as the file-side ones)."""
        v = self._views.get(slot)
        if v is None:
            v = self._views[slot] = self.cache.slot_view(slot)
        lay = self.cache.layout(layer, e)
        m = self.expert(layer, e)
        return MLP(*(QLinear(v[off:off + n], q.qtype, q.out_features, q.in_features)
                     for off, n, q in zip((lay.gate, lay.up, lay.down), lay.nbytes, (m.gate, m.up, m.down))))

    # ---- the seam
    def run(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [T, D], ids [T, K], weights [T, K] -> routed output [T, D]."""
        return self._run(layer, x, ids, weights, None)

    def run_with_shared(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                        shared: MLP) -> Optional[torch.Tensor]:
        """Routed + shared expert in one fused call, as the direct provider does (None: not fusable)."""
        sref = self._shared_ref(layer, shared) if self._refs(layer) is not None else None
        if sref is None:
            return None
        return self._run(layer, x, ids, weights, sref)

    def _run(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
             shared_ref: Any) -> torch.Tensor:
        plan, fused = self._schedule(layer, ids)
        if fused:
            out = self._run_fused(layer, x, ids, weights, plan, shared_ref)
        else:
            out = self._run_grouped(layer, x, ids, weights, plan)
        if plan.admit:
            self.cache.prefetch(layer, plan.admit)  # off the critical path: for later steps
        return out

    def run_native(self, layer: int, x: torch.Tensor, ids: torch.Tensor,
                   ffn: Callable[[np.ndarray, np.ndarray], None]) -> None:
        """The native layer step's FFN half under the cache: the same scheduling as the fused path, then
        ffn(slot_experts int32 [n], slot_ptrs uint64 [n, 3]) with the slot addresses (gate, up, down) of
        the experts placed in slots (the rest run from the file), with those slots pinned meanwhile."""
        plan, fused = self._schedule(layer, ids)
        if not fused:
            raise ValueError("the native step needs quantized experts")
        slotted = plan.slotted
        slots = self.cache.acquire(layer, slotted) if slotted else []
        try:
            self._prefetch_next(layer, x)
            ptrs = np.zeros((len(slotted), 3), dtype=np.uint64)
            for j, (e, slot) in enumerate(zip(slotted, slots)):
                lay, base = self.cache.layout(layer, e), self.cache.slot_address(slot)
                ptrs[j] = (base + lay.gate, base + lay.up, base + lay.down)
            ffn(np.asarray(slotted, dtype=np.int32), ptrs)
        finally:
            if slotted:
                self.cache.release(layer, slotted)
        if plan.admit:
            self.cache.prefetch(layer, plan.admit)

    def _schedule(self, layer: int, ids: torch.Tensor) -> tuple[LayerPlan, bool]:
        """The scheduler's plan for this batch's experts of `layer`, and whether the fused kernel runs."""
        counts = torch.bincount(ids.reshape(-1).to(torch.int64), minlength=self.cfg.n_expert).tolist()
        need = {e: n for e, n in enumerate(counts) if n}
        expected: frozenset[int] = frozenset()
        if self.prefetcher is not None:
            expected = self.prefetcher.pending(layer)  # loads of these may still be in flight
            self.prefetcher.score(layer, need)
        cache, sched = self.cache, self.scheduler
        resident: set[int] = set()
        free = cache.capacity - cache.pinned_slots
        if sched.cached(layer):
            resident = {e for e in need if cache.contains(layer, e)}
            # Guessed experts count as hits while their loads may be in flight, as far as slots go
            # (a prefetch the cache dropped then loads on demand inside acquire).
            for e in sorted(expected & need.keys()):
                if e not in resident and len(resident) < free:
                    resident.add(e)
        fused = self._refs(layer) is not None
        room = free - len(resident)
        if (not fused and room > 0) or self.slots_only:
            room = len(need)  # grouped runs (and the disk tier) cycle fetches through the slots in windows
        return sched.plan(layer, need, resident.__contains__, room), fused

    def _prefetch_next(self, layer: int, x: torch.Tensor) -> None:
        """Queue the next layer's guessed experts; called once this layer's experts are pinned."""
        if self.prefetcher is None:
            return
        guess = self.prefetcher.predict(layer, x)
        if guess is None:
            return
        nxt, pred = guess
        if self.on_predict is not None:
            self.on_predict(nxt, pred)
        if self.scheduler.cached(nxt) and pred:
            self.cache.prefetch(nxt, pred)

    def _pin(self, layer: int, ids: list[int], x: Optional[torch.Tensor]) -> list[int]:
        """Pin ids (queueing their loads), queue the next layer's guesses, then wait for the loads:
        the next layer's reads line up behind this layer's misses while this layer waits and computes.
        A failed load leaves nothing pinned and raises."""
        slots = self.cache.acquire_nowait(layer, ids, cancel_stale=True) if ids else []
        if x is not None:
            self._prefetch_next(layer, x)
        if ids:
            self.cache.wait_loaded(layer, slots)
        return slots

    def _refs_for(self, layer: int, experts: list[int], where: dict[int, int]) -> list:
        file_refs = self._refs(layer)
        return [self._slot_ref(where[e], layer, e) if e in where else file_refs[e] for e in experts]

    def _fused_over(self, refs: list, experts: list[int], x: torch.Tensor, ids: torch.Tensor,
                    weights: torch.Tensor, shared_ref: Any) -> torch.Tensor:
        """The fused kernel over `experts` only (other selections are -1: skipped), plus the shared one."""
        lut = torch.full((self.cfg.n_expert,), -1, dtype=ids.dtype)
        lut[torch.tensor(experts, dtype=torch.int64)] = torch.arange(len(experts), dtype=ids.dtype)
        sel = lut[ids]  # [T, K]
        if shared_ref is not None:  # as DirectExpertProvider.run_with_shared: one more column
            T = x.shape[0]
            sel = torch.cat((sel, torch.full((T, 1), len(refs), dtype=ids.dtype)), dim=1)
            weights = torch.cat((weights, torch.ones(T, 1, dtype=weights.dtype)), dim=1)
            refs = refs + [shared_ref]
        return self._fused(refs, x, sel, weights)

    def _run_fused(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                   plan: LayerPlan, shared_ref: Any) -> torch.Tensor:
        """The direct provider's fused call(s) with slot refs for slotted experts, file refs for the rest
        (the kernel's result for a token depends only on its selected experts' bytes, not on the list)."""
        if self.slots_only and len(plan.slotted) + len(plan.cpu) > self.cache.capacity - self.cache.pinned_slots:
            return self._run_windows(layer, x, ids, weights, plan, shared_ref)
        slotted = plan.slotted
        slots = self._pin(layer, slotted, x)
        try:
            where = dict(zip(slotted, slots))
            experts = sorted(set(plan.cpu) | set(slotted))
            return self._fused_over(self._refs_for(layer, experts, where), experts, x, ids, weights, shared_ref)
        finally:
            if slotted:
                self.cache.release(layer, slotted)

    def _run_windows(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                     plan: LayerPlan, shared_ref: Any) -> torch.Tensor:
        """More experts than slots (a prompt on the disk tier): all of them through slots, in
        windows of half the slots, the next window loading while this one computes; each expert is read
        once per batch. Windows depend only on the experts needed and the capacity, so the sum order
        (and the logits) repeat whatever was resident."""
        need = sorted(set(plan.slotted) | set(plan.cpu))
        w = max(1, self.cache.capacity // 2)
        windows = [need[i:i + w] for i in range(0, len(need), w)]
        out: Optional[torch.Tensor] = None
        for i, win in enumerate(windows):
            slots = self._pin(layer, win, x if i == 0 else None)
            try:
                if i + 1 < len(windows):
                    self.cache.prefetch(layer, windows[i + 1])
                part = self._fused_over(self._refs_for(layer, win, dict(zip(win, slots))), win, x, ids, weights,
                                        shared_ref if i == 0 else None)
            finally:
                self.cache.release(layer, win)
            out = part if out is None else out.add_(part)
        assert out is not None
        return out

    def _run_grouped(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                     plan: LayerPlan) -> torch.Tensor:
        """Without the fused kernel (float experts, KR_KERNELS=0): each expert once over its tokens in
        ascending order, as the direct provider's loop. Hits stay pinned; fetches go in windows of half
        the free slots, the next window loading (prefetch) while this one computes."""
        cache = self.cache
        hit_slots = dict(zip(plan.hits, cache.acquire(layer, plan.hits))) if plan.hits else {}
        room = cache.capacity - cache.pinned_slots
        w = max(1, room // 2) if room >= 2 else max(room, 1)
        windows = [plan.fetch[i:i + w] for i in range(0, len(plan.fetch), w)]
        win_of = {e: i for i, win in enumerate(windows) for e in win}
        cur, cur_slots = -1, {}
        try:
            self._prefetch_next(layer, x)
            out = torch.zeros_like(x)  # [T, D]
            w = weights.reshape(-1)
            for e, sel, tok in expert_groups(ids, self.cfg.n_expert):
                if e in win_of and win_of[e] != cur:
                    if cur_slots:
                        cache.release(layer, windows[cur])
                    cur = win_of[e]
                    cur_slots = dict(zip(windows[cur], cache.acquire(layer, windows[cur])))
                    if cur + 1 < len(windows) and room >= 2:
                        cache.prefetch(layer, windows[cur + 1])
                slot = hit_slots.get(e, cur_slots.get(e))
                mlp = self._slot_mlp(slot, layer, e) if slot is not None else self.expert(layer, e)
                y = mlp(x[tok]) * w[sel].unsqueeze(1)  # [n, D]
                out[tok] += y
            return out
        finally:
            if cur_slots:
                cache.release(layer, windows[cur])
            if hit_slots:
                cache.release(layer, plan.hits)

    # ---- statistics
    def layer_stats(self, layer: int) -> dict[str, Any]:
        """The scheduler's view (hits at decision time, misses = CPU misses + fetches) plus the cache's
        movement counters for one layer (prefetch_hits: hits on slots loaded ahead of use, by the
        next-layer prefetcher, background admission or grouped-run double buffering)."""
        s = self.scheduler.stats(layer)
        c = self.cache.stats(layer)
        return {"layer": layer, "hits": s["hits"], "misses": s["cpu_misses"] + s["fetched"],
                "prefetch_hits": c["prefetch_hits"], "bytes_loaded": c["bytes_loaded"],
                "evictions": c["evictions"], "stall_seconds": c["stall_seconds"],
                "cpu_misses": s["cpu_misses"], "fetched": s["fetched"], "admitted": s["admitted"],
                "prefetches": c["prefetches"], "prefetch_dropped": c["prefetch_dropped"]}

    def reset_stats(self) -> None:
        self.scheduler.reset_stats()
        self.cache.reset_stats()
        if self.prefetcher is not None:
            self.prefetcher.reset_stats()


# ---- assembly: placement -> cache -> scheduler -> prefetcher


def expert_bytes_by_layer(src: WeightSource) -> list[int]:
    """Bytes of one routed expert (gate + up + down) per layer; 0 for dense layers."""
    cfg, d = src.config, DirectExpertProvider(src)
    out = [0] * cfg.n_layer
    for layer in cfg.moe_layers:
        m = d.expert(layer, 0)
        out[layer] = sum(q.nbytes for q in (m.gate, m.up, m.down))
    return out


def _measured_cost(src: WeightSource, layer: int, working_set: int = 64 << 20) -> CostModel:
    d = DirectExpertProvider(src)
    m = d.expert(layer, 0)
    if kernels() is None or not (m.gate.quantized and m.up.quantized and m.down.quantized):
        # Nothing native to time: equal rates make every miss a CPU miss, which is what runs anyway.
        return CostModel(1e-10, 1e-12, 1e-10, 1e-10, 1e-12, source="assumed")
    experts = ((q.raw for q in (x.gate, x.up, x.down))
               for x in (d.expert(layer, e) for e in range(src.config.n_expert)))
    return measure_cost_model([list(ex) for ex in experts], (m.gate.qtype, m.up.qtype, m.down.qtype),
                              src.config.n_ff_exp, src.config.n_embd, key=(getattr(src, "path", None), layer),
                              working_set=working_set)


@dataclass
class ExpertSetup:
    """What Engine.from_gguf wired for the routed experts: the placement, the cached provider (None when
    no cache size was asked for) and the report lines printed at load."""

    provider: Optional[CachedExpertProvider]
    placement: Optional[Placement]
    lines: list[str] = field(default_factory=list)
    ram_budget: Optional[int] = None
    reserve: Optional[RamReserve] = None
    locked_bytes: int = 0  # non-expert bytes mlock'ed
    _disk0: tuple[int, int] = (0, 0)  # the store's (reads, bytes_read) at the last reset

    def tier_stats(self) -> dict[str, dict[str, Any]]:
        """Per tier (ram, disk; vram once a device tier chains in): hits, misses, bytes, stall_seconds
        and each tier's own counters (see experts.tiers.tier_stats), since the last reset."""
        if self.provider is None:
            return {}
        t = tier_stats(self.provider.cache, self.ram_budget)
        t["disk"]["reads"] -= self._disk0[0]
        t["disk"]["bytes"] -= self._disk0[1]
        if self.locked_bytes:
            t["ram"]["locked_bytes"] = self.locked_bytes
        return t

    def stats(self) -> dict[str, Any]:
        """`layers` (one dict per MoE layer), totals, hit_rate and the prefetcher's accuracy."""
        p = self.provider
        if p is None:
            return {}
        rows = [p.layer_stats(layer) for layer in p.cfg.moe_layers]
        keys = ("hits", "misses", "prefetch_hits", "bytes_loaded", "evictions", "stall_seconds", "cpu_misses",
                "fetched", "admitted")
        out: dict[str, Any] = {"layers": rows, "cache_slots": p.cache.capacity}
        for k in keys:
            out[f"cache_{k}" if k in ("hits", "misses") else k] = sum(r[k] for r in rows)
        acc = out["cache_hits"] + out["cache_misses"]
        out["hit_rate"] = out["cache_hits"] / acc if acc else 0.0
        if p.prefetcher is not None:
            out.update(p.prefetcher.stats())
        out["cost_model"] = p.scheduler.cost.as_dict()
        out["tiers"] = self.tier_stats()
        return out

    def reset_stats(self) -> None:
        if self.provider is not None:
            self.provider.reset_stats()
            st = self.provider.cache.store
            self._disk0 = (int(st.reads), int(st.bytes_read))


def _size(v: Union[int, str, None]) -> int:
    return parse_size(v) if isinstance(v, str) else int(v or 0)


def build_expert_setup(src: WeightSource, *, cache_fraction: Optional[float] = None,
                       cache_slots: Optional[int] = None, cache_policy: str = "lfu", prefetch: bool = False,
                       overrides: Sequence[str] = (), cpu_moe: bool = False, n_cpu_moe: int = 0,
                       gpu_budget: Union[int, str, None] = None, ram_budget: Union[int, str, None] = None,
                       miss_policy: str = "auto", admit: Union[bool, str] = "auto",
                       cost_model: Optional[CostModel] = None, n_ctx: int = 4096, expert_reads: str = "auto",
                       n_readers: Optional[int] = None, mlock: bool = False) -> ExpertSetup:
    """Placement from the override rules and budgets, then (when a cache size is given) the host slot
    cache, the scheduler with a measured cost model and the optional next-layer prefetcher.

    expert_reads: how slots are filled - "mmap" (copy from the mapping), "pread", "direct" (O_DIRECT:
    the disk tier) or "auto": direct when a RAM budget leaves room for fewer slots than experts (the
    file is larger than the RAM it may use). On the disk tier every expert runs from a slot (misses
    are fetched, never paged in through the mapping), `n_readers` threads read (default 4) and the
    budget also pays for the runtime itself (see experts.tiers.RamReserve). mlock: lock the non-expert
    weights in RAM."""
    if expert_reads not in READ_MODES:
        raise ValueError(f"expert_reads must be one of {', '.join(READ_MODES)} (got {expert_reads!r})")
    if n_readers is not None and not 1 <= int(n_readers) <= 64:
        raise ValueError(f"n_readers must be in 1..64 (got {n_readers})")
    if cache_fraction is not None and cache_slots is not None:
        raise ValueError("give cache_fraction or cache_slots, not both")
    if cache_fraction is not None and not 0 < float(cache_fraction) <= 1:
        raise ValueError(f"cache_fraction must be in (0, 1] (got {cache_fraction})")
    if cache_slots is not None and int(cache_slots) < 1:
        raise ValueError(f"cache_slots must be >= 1 (got {cache_slots})")
    sized = cache_fraction is not None or cache_slots is not None or gpu_budget or ram_budget
    rules = [parse_override(r) for r in overrides] + moe_rules(src.config, cpu_moe, int(n_cpu_moe))
    if not sized and not rules:
        if prefetch:
            raise ValueError("prefetch needs an expert cache: give cache_fraction, cache_slots or a budget")
        return ExpertSetup(None, None)
    model = getattr(src, "model", None)
    if model is None or not hasattr(model, "experts"):
        raise ValueError("the expert cache needs a GGUF opened by kimi_runtime.gguf")
    fp = Footprint.from_gguf(model)
    gpu, ram = _size(gpu_budget), _size(ram_budget)
    reserve: Optional[RamReserve] = None
    host_budget = bool(ram) and not gpu
    if host_budget:
        # The budget is the process's memory: take off what it holds besides weights, KV and slots,
        # and count the KV cache as the engine stores it (float32).
        readers_guess = int(n_readers or 4)
        reserve = ram_reserve(model, readers_guess, fp.max_expert_bytes + 6 * 4096, ram)
        budget = Budget(ram_bytes=ram - reserve.total, ctx=int(n_ctx), kv_bytes_per_value=4)
    else:
        budget = Budget(gpu_bytes=gpu, ram_bytes=ram, ctx=int(n_ctx))
    try:
        if host_budget and budget.ram_bytes <= 0:
            raise PlacementError(f"the runtime alone ({reserve.describe()}) exceeds the budget")
        placement = auto_fit(fp, budget, rules)
    except PlacementError as e:
        if reserve is None:
            raise
        raise PlacementError(
            f"--ram-budget {ram / 2**30:.2f} GiB is too small: the non-expert weights "
            f"({fp.non_expert_bytes / 2**30:.2f} GiB), the KV cache for {int(n_ctx)} tokens and the workspace "
            f"must fit with {reserve.describe()} before any expert slot.\n{e}") from None
    lines = [f"override rule {i + 1}: {r}" for i, r in enumerate(placement.rules)]
    cpu_layers = sorted({t.layer for t in fp.tensors if t.is_expert and placement.devices[t.name] == "cpu"})
    if cpu_layers:
        lines.append(f"experts computed on the CPU from the file (never cached): layers {cpu_layers}")
    n_cacheable = placement.n_cacheable
    if cache_slots is not None:
        n_slots = int(cache_slots)
    elif cache_fraction is not None:
        n_slots = max(1, round(float(cache_fraction) * n_cacheable)) if n_cacheable else 0
    else:
        n_slots = placement.n_slots if sized else 0
    if gpu:
        lines.append("no CUDA slot tier in this build: the GPU budget sizes host RAM slots")
    if n_slots <= 0:
        if prefetch:
            raise ValueError("prefetch needs an expert cache, but no slot fits / no expert is cacheable")
        lines.append(f"expert cache: off ({n_cacheable} cacheable experts, 0 slots)")
        return ExpertSetup(None, placement, lines)
    mode = expert_reads
    if mode == "auto":
        mode = "direct" if host_budget and n_slots < n_cacheable else "mmap"
    disk = mode == "direct"
    readers = int(n_readers or (4 if disk else 1))
    if disk and miss_policy == "auto":
        miss_policy = "fetch"
    store = store_from_model(model, mode=mode)
    cache = ExpertCache(store, n_slots, policy=cache_policy, n_readers=readers)
    moe_layers = [l for l in src.config.moe_layers if l not in cpu_layers]
    if disk:
        keep_experts_out_of_page_cache(model)  # whatever an earlier run or the writer left cached
    # On the disk tier the kernel timing pages in a little of the file: keep that small.
    cost = cost_model or _measured_cost(src, moe_layers[0] if moe_layers else src.config.moe_layers[0],
                                        working_set=(16 << 20) if disk else (64 << 20))
    if disk:
        # Cold reads of the file itself (O_DIRECT: the page cache cannot answer) set the load rate.
        rate = measure_disk_read(spread_ranges(model.paths, store, moe_layers), n_readers=readers,
                                 key=(tuple(str(p) for p in model.paths), readers))
        cost = dataclasses.replace(cost, load=1.0 / rate["bytes_per_s"], source=cost.source + "+disk")
        advised = keep_experts_out_of_page_cache(model)  # after the measurement touched some experts
        how = "O_DIRECT" if store.direct_active else "buffered, dropped from the page cache"
        lines.append(f"disk tier: {store.mode} reads ({how}), {readers} readers, cold read "
                     f"{rate['bytes_per_s'] / 1e6:.0f} MB/s; {advised / 2**30:.2f} GiB of expert mapping "
                     f"advised MADV_RANDOM and dropped; misses {miss_policy}")
    locked = lock_resident(model) if mlock else 0
    if locked:
        lines.append(f"mlock: {locked / 2**30:.2f} GiB of non-expert weights locked in RAM")
    eb = expert_bytes_by_layer(src)
    sched = ExpertScheduler(cost, dict(enumerate(eb)), miss_policy=miss_policy, admit=admit,
                            cpu_layers=cpu_layers)
    pf = NextLayerPrefetcher(src, moe_layers) if prefetch else None
    provider = CachedExpertProvider(src, cache, sched, pf, slots_only=disk)
    frac = n_slots / n_cacheable if n_cacheable else 0.0
    lines.append(f"expert cache: {n_slots} slots x {cache.pool.slot_bytes / 2**20:.2f} MiB (host RAM) for "
                 f"{n_cacheable} cacheable experts ({frac:.1%}), policy {cache_policy}, misses {miss_policy}, "
                 f"admit {'on' if sched.admit else 'off'}, prefetch {'on' if pf else 'off'}")
    c = cost.as_dict()
    lines.append(f"cost model ({c['source']}, 1 token): CPU kernel {c['cpu_gbs']:.1f} GB/s from the file, load "
                 f"{c['load_gbs']:.1f} GB/s, slot kernel {c['dev_gbs']:.1f} GB/s; fetching pays "
                 + (f"above {c['breakeven_tokens']:.3g} tokens per expert" if math.isfinite(c['breakeven_tokens'])
                    else "never"))
    if reserve is not None:
        lines.append(f"RAM budget {ram / 2**30:.2f} GiB: {reserve.describe()}, non-expert "
                     f"{placement.cpu_resident / 2**30 + placement.gpu_resident / 2**30:.2f} GiB, KV "
                     f"{placement.kv_bytes / 2**30:.2f} GiB, workspace {placement.workspace / 2**30:.2f} GiB, "
                     f"slots {n_slots * cache.pool.slot_bytes / 2**30:.2f} GiB")
    return ExpertSetup(provider, placement, lines, ram_budget=ram or None, reserve=reserve, locked_bytes=locked)
