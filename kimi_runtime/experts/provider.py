"""CachedExpertProvider: the model's ExpertProvider over the expert cache. Per MoE layer the scheduler
splits the batch's experts into hits, fetches and CPU misses; hits and fetches run from their slots, CPU
misses from the mmapped file, through the very kernel calls the direct provider makes (its own chunking,
the shared expert fused in the same call), so the logits are identical; the next layer's guessed
experts load while this layer computes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from kimi_runtime.experts.cache import ExpertCache, store_from_model
from kimi_runtime.experts.placement import Budget, Footprint, Placement, auto_fit, moe_rules, parse_override, parse_size
from kimi_runtime.experts.prefetch import NextLayerPrefetcher
from kimi_runtime.experts.scheduler import CostModel, ExpertScheduler, LayerPlan, measure_cost_model
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
                 prefetcher: Optional[NextLayerPrefetcher] = None, on_predict: Optional[OnPredict] = None) -> None:
        super().__init__(src)
        self.cache = cache
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
        counts = torch.bincount(ids.reshape(-1), minlength=self.cfg.n_expert).tolist()
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
        if not fused and room > 0:
            room = len(need)  # grouped runs cycle fetches through the free slots in windows
        plan = sched.plan(layer, need, resident.__contains__, room)
        if fused:
            out = self._run_fused(layer, x, ids, weights, plan, shared_ref)
        else:
            out = self._run_grouped(layer, x, ids, weights, plan)
        if plan.admit:
            cache.prefetch(layer, plan.admit)  # off the critical path: for later steps
        return out

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

    def _run_fused(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                   plan: LayerPlan, shared_ref: Any) -> torch.Tensor:
        """The direct provider's fused call(s) with slot refs for slotted experts, file refs for the rest
        (the kernel's result for a token depends only on its selected experts' bytes, not on the list)."""
        slotted = plan.slotted
        slots = self.cache.acquire(layer, slotted) if slotted else []
        try:
            self._prefetch_next(layer, x)
            where = dict(zip(slotted, slots))
            file_refs = self._refs(layer)
            experts = sorted(set(plan.cpu) | set(slotted))
            refs = [self._slot_ref(where[e], layer, e) if e in where else file_refs[e] for e in experts]
            lut = torch.full((self.cfg.n_expert,), -1, dtype=ids.dtype)
            lut[torch.tensor(experts, dtype=torch.int64)] = torch.arange(len(experts), dtype=ids.dtype)
            sel = lut[ids]  # [T, K]
            if shared_ref is not None:  # as DirectExpertProvider.run_with_shared: one more column
                T = x.shape[0]
                sel = torch.cat((sel, torch.full((T, 1), len(refs), dtype=ids.dtype)), dim=1)
                weights = torch.cat((weights, torch.ones(T, 1, dtype=weights.dtype)), dim=1)
                refs = refs + [shared_ref]
            return self._fused(refs, x, sel, weights)
        finally:
            if slotted:
                self.cache.release(layer, slotted)

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


def _measured_cost(src: WeightSource, layer: int) -> CostModel:
    d = DirectExpertProvider(src)
    m = d.expert(layer, 0)
    if kernels() is None or not (m.gate.quantized and m.up.quantized and m.down.quantized):
        # Nothing native to time: equal rates make every miss a CPU miss, which is what runs anyway.
        return CostModel(1e-10, 1e-12, 1e-10, 1e-10, 1e-12, source="assumed")
    experts = ((q.raw for q in (x.gate, x.up, x.down))
               for x in (d.expert(layer, e) for e in range(src.config.n_expert)))
    return measure_cost_model([list(ex) for ex in experts], (m.gate.qtype, m.up.qtype, m.down.qtype),
                              src.config.n_ff_exp, src.config.n_embd, key=(getattr(src, "path", None), layer))


@dataclass
class ExpertSetup:
    """What Engine.from_gguf wired for the routed experts: the placement, the cached provider (None when
    no cache size was asked for) and the report lines printed at load."""

    provider: Optional[CachedExpertProvider]
    placement: Optional[Placement]
    lines: list[str] = field(default_factory=list)

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
        return out

    def reset_stats(self) -> None:
        if self.provider is not None:
            self.provider.reset_stats()


def _size(v: Union[int, str, None]) -> int:
    return parse_size(v) if isinstance(v, str) else int(v or 0)


def build_expert_setup(src: WeightSource, *, cache_fraction: Optional[float] = None,
                       cache_slots: Optional[int] = None, cache_policy: str = "lfu", prefetch: bool = False,
                       overrides: Sequence[str] = (), cpu_moe: bool = False, n_cpu_moe: int = 0,
                       gpu_budget: Union[int, str, None] = None, ram_budget: Union[int, str, None] = None,
                       miss_policy: str = "auto", admit: Union[bool, str] = "auto",
                       cost_model: Optional[CostModel] = None, n_ctx: int = 4096) -> ExpertSetup:
    """Placement from the override rules and budgets, then (when a cache size is given) the host slot
    cache, the scheduler with a measured cost model and the optional next-layer prefetcher."""
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
    placement = auto_fit(fp, Budget(gpu_bytes=gpu, ram_bytes=ram, ctx=int(n_ctx)), rules)
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
    cache = ExpertCache(store_from_model(model), n_slots, policy=cache_policy)
    moe_layers = [l for l in src.config.moe_layers if l not in cpu_layers]
    cost = cost_model or _measured_cost(src, moe_layers[0] if moe_layers else src.config.moe_layers[0])
    eb = expert_bytes_by_layer(src)
    sched = ExpertScheduler(cost, dict(enumerate(eb)), miss_policy=miss_policy, admit=admit,
                            cpu_layers=cpu_layers)
    pf = NextLayerPrefetcher(src, moe_layers) if prefetch else None
    provider = CachedExpertProvider(src, cache, sched, pf)
    frac = n_slots / n_cacheable if n_cacheable else 0.0
    lines.append(f"expert cache: {n_slots} slots x {cache.pool.slot_bytes / 2**20:.2f} MiB (host RAM) for "
                 f"{n_cacheable} cacheable experts ({frac:.1%}), policy {cache_policy}, misses {miss_policy}, "
                 f"admit {'on' if sched.admit else 'off'}, prefetch {'on' if pf else 'off'}")
    c = cost.as_dict()
    lines.append(f"cost model ({c['source']}, 1 token): CPU kernel {c['cpu_gbs']:.1f} GB/s from the file, load "
                 f"{c['load_gbs']:.1f} GB/s, slot kernel {c['dev_gbs']:.1f} GB/s; fetching pays above "
                 f"{c['breakeven_tokens']:.3g} tokens per expert")
    return ExpertSetup(provider, placement, lines)
