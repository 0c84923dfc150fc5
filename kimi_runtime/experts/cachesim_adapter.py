"""libCacheSim's policies (PyPI `libcachesim`) behind our Policy interface, so `trace replay` and the
report run them beside ours on the same accesses.

Every key is one object of size 1 and the cache size is the slot count, so libCacheSim counts what we
count: demand accesses and hits of a cache of `capacity` experts. Belady gets each request's next
access time (libCacheSim's offline policies read `next_access_vtime`). libcachesim is optional: the
names below are registered always, and making one without the package raises a clear error."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from kimi_runtime.experts.policies import Policy, next_use

# our name -> libcachesim class name
LCS_POLICIES: dict[str, str] = {
    "lcs-lru": "LRU", "lcs-fifo": "FIFO", "lcs-belady": "Belady", "arc": "ARC", "s3fifo": "S3FIFO",
    "sieve": "Sieve", "lirs": "LIRS", "wtinylfu": "WTinyLFU", "2q": "TwoQ", "clock": "Clock",
    "lecar": "LeCaR", "cacheus": "Cacheus", "lhd": "LHD",
}
# Below these sizes libcachesim 0.3.5 aborts the process or misbehaves (LIRS at 2 objects beats
# Belady), so we refuse them. (LFUDA is left out: it crashes or hangs at 1-2 objects.)
MIN_CAPACITY: dict[str, int] = {"s3fifo": 3, "wtinylfu": 2, "lirs": 3}
_HASHPOWER = 12  # libcachesim's default 2^24-entry table costs 128 MB per cache; we hold <= thousands


def _params(name: str, capacity: int) -> dict[str, Any]:
    """Constructor arguments that keep each sub-queue at least one object at our small sizes (an expert
    cache holds a handful of slots, a web cache millions of objects). With the defaults S3-FIFO (a 10%
    small queue) holds nothing below ~32 slots and W-TinyLFU's SLRU main cache aborts on empty
    segments; so S3-FIFO's small queue is max(10%, 2 objects) and W-TinyLFU's window max(1%, 1 object)
    in front of an LRU main cache. The rest run with libcachesim's defaults."""
    if name == "s3fifo":
        return {"small_size_ratio": max(0.1, 2.0 / capacity)}
    if name == "wtinylfu":
        return {"window_size": max(0.01, 1.0 / capacity), "main_cache": "LRU"}
    return {}


class CapacityTooSmall(ValueError):
    """The policy cannot run at this size (replay skips such a combination)."""


def available() -> bool:
    try:
        import libcachesim  # noqa: F401
    except ImportError:
        return False
    return True


def _lcs() -> Any:
    try:
        import libcachesim
    except ImportError as e:
        raise ValueError("the libCacheSim policies need the libcachesim package: pip install libcachesim") from e
    return libcachesim


class LibCacheSimPolicy(Policy):
    """One libCacheSim cache of `capacity` unit-size objects. Demand accesses only."""

    supports_prefetch = False

    def __init__(self, name: str, capacity: int) -> None:
        super().__init__(capacity)
        if name not in LCS_POLICIES:
            raise ValueError(f"unknown libCacheSim policy {name!r}; choose from {', '.join(LCS_POLICIES)}")
        if capacity < MIN_CAPACITY.get(name, 1):
            raise CapacityTooSmall(f"{name} needs >= {MIN_CAPACITY[name]} slots in libcachesim "
                                   f"(got {capacity})")
        self.name = name
        lcs = _lcs()
        self._lcs = lcs
        self.cache = getattr(lcs, LCS_POLICIES[name])(cache_size=self.capacity, hashpower=_HASHPOWER,
                                                      **_params(name, self.capacity))
        self._offline = LCS_POLICIES[name] == "Belady"
        self._nxt: list[int] = []
        self._i = 0

    def prepare(self, keys: np.ndarray) -> None:
        if self._offline:
            nu = next_use(np.asarray(keys))
            # libCacheSim marks "never requested again" as INT64_MAX
            self._nxt = np.where(nu >= len(keys), np.iinfo(np.int64).max, nu).tolist()
            self._i = 0

    def _request(self, key: int, t: int) -> Any:
        req = self._lcs.Request()
        req.obj_id, req.obj_size, req.clock_time = int(key), 1, t
        req.op = self._lcs.ReqOp.OP_GET
        if self._offline:
            if self._i >= len(self._nxt):
                raise ValueError(f"{self.name}: more accesses than the prepared sequence")
            req.next_access_vtime = self._nxt[self._i]
            self._i += 1
        return req

    def access(self, key: int) -> bool:
        return bool(self.cache.get(self._request(key, self._i)))

    def prefetch(self, key: int) -> bool:
        raise ValueError(f"{self.name}: libCacheSim policies are replayed on demand accesses only")

    def run(self, keys: Sequence[int]) -> bytearray:
        if self._offline and len(self._nxt) - self._i < len(keys):
            self.prepare(np.asarray(keys))
        get, mk = self.cache.get, self._request
        return bytearray(bool(get(mk(k, j))) for j, k in enumerate(keys))

    def __len__(self) -> int:
        return int(self.cache.get_n_obj())


def make(name: str, capacity: int) -> LibCacheSimPolicy:
    return LibCacheSimPolicy(name, capacity)


__all__ = ["LCS_POLICIES", "MIN_CAPACITY", "CapacityTooSmall", "LibCacheSimPolicy", "available", "make"]
