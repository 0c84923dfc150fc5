"""Python facade of the native expert cache (csrc/cache): an ExpertStore over the GGUF part files, a
host slot pool and the cache itself. A slot holds gate | up | down back to back (`layout`).

Store modes: "mmap" (memcpy from the mapping: page-cached files), "pread" (buffered reads), "direct"
(O_DIRECT reads through aligned buffers, for files larger than RAM: nothing of a cold expert stays in
the page cache; a file system that refuses O_DIRECT falls back to buffered reads + FADV_DONTNEED).
Caches chain (`upstream=`): disk -> RAM slots -> device slots, each tier the same class."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from kimi_runtime._native import C

Range = tuple[int, int, int]  # (part, offset, nbytes)
_WHICH = ("gate", "up", "down")


@dataclass(frozen=True)
class SlotLayout:
    """Where one expert's slices sit inside its slot (byte offsets) and how long each is."""

    gate: int
    up: int
    down: int
    nbytes: tuple[int, int, int]


def open_store(paths: Sequence[str], n_layers: int, n_experts: int,
               ranges: Union[Mapping[tuple[int, int], Sequence[Range]], np.ndarray],
               mode: str = "mmap") -> Any:
    """Build a native ExpertStore.

    `ranges` maps (layer, expert) -> [gate, up, down] as (part, offset, nbytes), or is an int64 array
    [N, 11] (layer, expert, then the nine fields). Every range is checked against its file's size;
    `mode` is "mmap" (memcpy from the mapping), "pread" or "direct" (O_DIRECT, larger than RAM).
    """
    store = C.ExpertStore([str(p) for p in paths], int(n_layers), int(n_experts), mode)
    if isinstance(ranges, np.ndarray):
        store.set_ranges(ranges)
    else:
        rows = [[layer, e, *(v for r in rs for v in r)] for (layer, e), rs in ranges.items()]
        if rows:
            store.set_ranges(np.asarray(rows, dtype=np.int64))
    return store


def store_from_model(model: Any, mode: str = "mmap") -> Any:
    """ExpertStore for an opened GGUF model (kimi_runtime.gguf): its part paths, config and
    `model.experts.slice(layer, expert, which)` (-> .part, .offset, .nbytes) give every range."""
    cfg = model.config
    paths = getattr(model, "part_paths", None) or getattr(model, "paths")
    rows = []
    for layer in cfg.moe_layers:
        for e in range(cfg.n_expert):
            row = [layer, e]
            for which in _WHICH:
                s = model.experts.slice(layer, e, which)
                row += [int(s.part), int(s.offset), int(s.nbytes)]
            rows.append(row)
    return open_store(paths, cfg.n_layer, cfg.n_expert, np.asarray(rows, dtype=np.int64), mode)


def _ids(ids: Iterable[int]) -> list[int]:
    if isinstance(ids, list):
        return ids
    return np.asarray(ids).reshape(-1).tolist()  # numpy or CPU torch tensors


class ExpertCache:
    """(layer, expert) -> slot cache in host RAM with pinning, a loader thread and per-layer stats.

    `policy` is the native eviction order: "lru" or "lfu" (perfect LFU: counts survive eviction, no
    aging; ties by recency). Blocking calls release the GIL, so Python threads may share one cache.
    `staging=True` routes loads through the staging ring and completion thread a device tier uses.
    `n_readers`: reader threads (several reads in flight, what a disk needs). `upstream`: another
    ExpertCache over the same store that this tier loads from instead of the store.
    """

    def __init__(self, store: Any, n_slots: int, *, policy: str = "lru",
                 slot_bytes: Optional[int] = None, staging: bool = False,
                 acquire_timeout_s: float = 30.0, n_readers: int = 1,
                 upstream: Optional["ExpertCache"] = None) -> None:
        self.store = store
        self.upstream = upstream
        self.pool = C.HostSlotPool(int(slot_bytes or store.max_expert_bytes), int(n_slots), staging)
        self._c = C.ExpertCache(store, self.pool, policy, acquire_timeout_s, int(n_readers),
                                upstream._c if upstream is not None else None)
        self.policy = policy

    @classmethod
    def with_budget(cls, store: Any, budget_bytes: int, **kw: Any) -> "ExpertCache":
        """As many slots as fit in `budget_bytes` (slots are 64-byte aligned)."""
        stride = (int(store.max_expert_bytes) + 63) // 64 * 64
        n = int(budget_bytes) // stride
        if n < 1:
            raise ValueError(f"a budget of {budget_bytes} bytes holds no expert slot of {stride} bytes")
        return cls(store, n, **kw)

    # ---- the hot path
    def acquire(self, layer: int, ids: Iterable[int]) -> list[int]:
        """Pin the experts (loading misses, waiting on loads in flight); slots in the order of ids."""
        return self._c.acquire(layer, _ids(ids))

    def acquire_nowait(self, layer: int, ids: Iterable[int], cancel_stale: bool = False) -> list[int]:
        """Pin and queue the misses without waiting; `wait_loaded(layer, slots)` before reading them.
        cancel_stale: drop this layer's queued prefetches of other experts (guesses proved wrong)."""
        return self._c.acquire_nowait(layer, _ids(ids), cancel_stale)

    def wait_loaded(self, layer: int, slots: Sequence[int]) -> None:
        """Wait for the loads of slots from acquire_nowait; a failed load unpins them all and raises."""
        self._c.wait_loaded(layer, list(slots))

    def release(self, layer: int, ids: Iterable[int]) -> None:
        """Unpin what `acquire(layer, ids)` pinned; unpinned slots become evictable."""
        self._c.release(layer, _ids(ids))

    def prefetch(self, layer: int, ids: Iterable[int]) -> int:
        """Queue loads of missing experts and return at once; returns the number queued."""
        return self._c.prefetch(layer, _ids(ids))

    @contextmanager
    def using(self, layer: int, ids: Iterable[int]) -> Iterator[list[int]]:
        """`with cache.using(layer, ids) as slots:` acquire, then release however the block ends."""
        ids = _ids(ids)
        slots = self._c.acquire(layer, ids)
        try:
            yield slots
        finally:
            self._c.release(layer, ids)

    def slot_address(self, slot: int) -> int:
        """uintptr of the slot's first byte (gate); add `layout(...)` offsets for up and down."""
        return self._c.slot_address(slot)

    def layout(self, layer: int, expert: int) -> SlotLayout:
        n = tuple(r[2] for r in self.store.ranges(layer, expert))
        return SlotLayout(gate=0, up=n[0], down=n[0] + n[1], nbytes=n)  # type: ignore[arg-type]

    def slot_view(self, slot: int) -> np.ndarray:
        """uint8 view of a slot's bytes (no copy); valid while the cache lives."""
        return self.pool.view(slot)

    # ---- state and statistics
    def contains(self, layer: int, expert: int) -> bool:
        return self._c.contains(layer, expert)

    def stats(self, layer: Optional[int] = None) -> dict[str, Any]:
        """hits, misses, accesses, prefetch_hits, prefetches, prefetch_dropped, loads, bytes_loaded,
        evictions, stall_seconds, read_seconds, read_errors, prefetch_cancelled: for one layer, or summed."""
        return self._c.stats(layer)

    def reset_stats(self) -> None:
        self._c.reset_stats()

    def wait_idle(self) -> None:
        """Block until no load is queued or in flight."""
        self._c.wait_idle()

    @property
    def capacity(self) -> int:
        return self._c.capacity

    @property
    def n_readers(self) -> int:
        return self._c.n_readers

    @property
    def pinned_slots(self) -> int:
        return self._c.pinned_slots

    def resident(self) -> list[tuple[int, int, int, int]]:
        """(layer, expert, slot, pins) of every loaded slot."""
        return self._c.resident()
