"""Cache replacement policies for offline replay of routing traces, behind one interface.

Keys are ints (an expert id, or layer * n_experts + expert for a cache shared by all layers). Every
policy is demand-paged: a miss always inserts the key, evicting one resident if full, which is the
setting in which Belady's MIN is optimal. `run(keys)` is the fast path (inlined loop, ~0.3-1.5 us per
access); `access`/`prefetch` serve replays with prefetch events. numpy only, no torch.
"""
from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import Callable, Optional, Sequence

import numpy as np


class Policy:
    """A cache of `capacity` keys. Subclasses implement access() and prefetch(); run() may be
    overridden with an inlined loop for speed."""

    name = "?"
    supports_prefetch = True

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)

    def access(self, key: int) -> bool:
        """Demand access: True on a hit; on a miss the key is inserted."""
        raise NotImplementedError

    def prefetch(self, key: int) -> bool:
        """Insert ahead of use without counting an access; True if it had to be loaded."""
        raise NotImplementedError

    def prepare(self, keys: np.ndarray) -> None:
        """Called with the whole demand sequence before run() (only offline policies need it)."""

    def run(self, keys: Sequence[int]) -> bytearray:
        """Replay demand accesses; returns a hit mask (1 = hit) of len(keys)."""
        acc = self.access
        return bytearray(acc(k) for k in keys)

    def __len__(self) -> int:
        raise NotImplementedError


class LRU(Policy):
    """Least recently used (an OrderedDict: oldest first). The native cache's default order."""

    name = "lru"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.d: OrderedDict[int, None] = OrderedDict()

    def access(self, key: int) -> bool:
        d = self.d
        if key in d:
            d.move_to_end(key)
            return True
        if len(d) >= self.capacity:
            d.popitem(last=False)
        d[key] = None
        return False

    def prefetch(self, key: int) -> bool:
        hit = self.access(key)  # a prefetch is a promise of use: refresh or insert at MRU
        return not hit

    def run(self, keys: Sequence[int]) -> bytearray:
        d, cap = self.d, self.capacity
        mv, pop = d.move_to_end, d.popitem
        out = bytearray(len(keys))
        for i, k in enumerate(keys):
            if k in d:
                mv(k)
                out[i] = 1
            else:
                if len(d) >= cap:
                    pop(False)
                d[k] = None
        return out

    def __len__(self) -> int:
        return len(self.d)


class FIFO(LRU):
    """First in, first out: a hit does not refresh. The no-information baseline."""

    name = "fifo"

    def access(self, key: int) -> bool:
        d = self.d
        if key in d:
            return True
        if len(d) >= self.capacity:
            d.popitem(last=False)
        d[key] = None
        return False

    def prefetch(self, key: int) -> bool:
        return not self.access(key)

    run = Policy.run


class LFU(Policy):
    """Least frequently used, ties by least recent. Counts cover every past access, resident or not
    ("perfect" LFU, as in the native cache). With `aging=N` all counts are halved every N accesses so
    old popularity fades; aging=None (the "lfu" policy) never forgets."""

    name = "lfu"

    def __init__(self, capacity: int, aging: Optional[int] = None) -> None:
        super().__init__(capacity)
        self.aging = aging
        self.count: dict[int, int] = {}
        self.res: dict[int, tuple[int, int]] = {}  # key -> (count, tick) of its valid heap entry
        self.heap: list[tuple[int, int, int]] = []  # (count, tick, key); stale entries skipped lazily
        self.t = 0

    def _touch(self, key: int, inc: int) -> bool:
        self.t += 1
        if self.aging and self.t % self.aging == 0:
            self._age()
        c = self.count.get(key, 0) + inc
        self.count[key] = c
        hit = key in self.res
        if not hit:
            if len(self.res) >= self.capacity:
                self._evict()
        self.res[key] = (c, self.t)
        heapq.heappush(self.heap, (c, self.t, key))
        if len(self.heap) > 4 * self.capacity + 256:
            self._rebuild()
        return hit

    def _evict(self) -> None:
        heap, res = self.heap, self.res
        while True:
            c, t, k = heapq.heappop(heap)
            if res.get(k) == (c, t):
                del res[k]
                return

    def _rebuild(self) -> None:
        self.heap = [(c, t, k) for k, (c, t) in self.res.items()]
        heapq.heapify(self.heap)

    def _age(self) -> None:
        self.count = {k: c >> 1 for k, c in self.count.items() if c > 1}
        self.res = {k: (self.count.get(k, 0), t) for k, (_, t) in self.res.items()}
        self._rebuild()

    def access(self, key: int) -> bool:
        return self._touch(key, 1)

    def run(self, keys: Sequence[int]) -> bytearray:
        if self.aging:
            return Policy.run(self, keys)
        # _touch inlined (no aging): about twice as fast on 10^6 accesses.
        count, res, cap = self.count, self.res, self.capacity
        push, pop = heapq.heappush, heapq.heappop
        heap, t = self.heap, self.t
        limit = 4 * cap + 256
        out = bytearray(len(keys))
        for i, k in enumerate(keys):
            t += 1
            c = count.get(k, 0) + 1
            count[k] = c
            if k in res:
                out[i] = 1
            elif len(res) >= cap:
                while True:
                    ec, et, ek = pop(heap)
                    if res.get(ek) == (ec, et):
                        del res[ek]
                        break
            res[k] = (c, t)
            push(heap, (c, t, k))
            if len(heap) > limit:
                heap = [(hc, ht, hk) for hk, (hc, ht) in res.items()]
                heapq.heapify(heap)
        self.heap, self.t = heap, t
        return out

    def prefetch(self, key: int) -> bool:
        if key in self.res:
            return False
        # Counted as one use: with the count unchanged a new key would have the lowest count and be
        # the next victim, often evicted by the very next prefetch of the same step.
        self._touch(key, 1)
        return True

    def __len__(self) -> int:
        return len(self.res)


class SLRU(Policy):
    """Segmented LRU: new keys enter a probation segment; a second hit promotes to a protected
    segment (`protected` share of capacity) whose overflow drops back to probation. One-off
    experts therefore cannot flush the ones that keep coming back."""

    name = "slru"

    def __init__(self, capacity: int, protected: float = 0.8) -> None:
        super().__init__(capacity)
        self.prot_cap = int(capacity * protected) if capacity > 1 else 0
        self.prob: OrderedDict[int, None] = OrderedDict()
        self.prot: OrderedDict[int, None] = OrderedDict()

    def access(self, key: int) -> bool:
        prob, prot = self.prob, self.prot
        if key in prot:
            prot.move_to_end(key)
            return True
        if key in prob:
            del prob[key]
            prot[key] = None
            if len(prot) > self.prot_cap:
                prob[prot.popitem(last=False)[0]] = None
            return True
        if len(prob) + len(prot) >= self.capacity:
            (prob if prob else prot).popitem(last=False)
        prob[key] = None
        return False

    def prefetch(self, key: int) -> bool:
        if key in self.prot or key in self.prob:
            return False
        self.access(key)  # lands in probation: only a real use promotes it
        return True

    def __len__(self) -> int:
        return len(self.prob) + len(self.prot)


class HotSet(Policy):
    """Frequency-pinned hot set: every `period` accesses the `hot` share of capacity is given to the
    top keys by past access count; those are never evicted while hot. The rest is LRU."""

    name = "hot"

    def __init__(self, capacity: int, hot: float = 0.5, period: Optional[int] = None) -> None:
        super().__init__(capacity)
        self.n_hot = min(int(capacity * hot), capacity - 1)
        self.period = int(period or max(64, 16 * capacity))
        self.count: dict[int, int] = {}
        self.hot: set[int] = set()
        self.hot_res: set[int] = set()
        self.lru: OrderedDict[int, None] = OrderedDict()
        self.t = 0

    def _rehot(self) -> None:
        new = set(heapq.nlargest(self.n_hot, self.count, key=self.count.__getitem__)) if self.n_hot else set()
        for k in self.hot_res - new:  # no longer hot: the coldest end of the LRU
            self.hot_res.discard(k)
            self.lru[k] = None
            self.lru.move_to_end(k, last=False)
        for k in new:
            if k in self.lru:
                del self.lru[k]
                self.hot_res.add(k)
        self.hot = new

    def _insert(self, key: int) -> None:
        # |hot_res| <= n_hot < capacity, so a full cache always has an LRU victim.
        if len(self.hot_res) + len(self.lru) >= self.capacity:
            self.lru.popitem(last=False)
        if key in self.hot:
            self.hot_res.add(key)
        else:
            self.lru[key] = None

    def access(self, key: int) -> bool:
        self.t += 1
        self.count[key] = self.count.get(key, 0) + 1
        if self.t % self.period == 0:
            self._rehot()
        if key in self.hot_res:
            return True
        if key in self.lru:
            self.lru.move_to_end(key)
            return True
        self._insert(key)
        return False

    def prefetch(self, key: int) -> bool:
        if key in self.hot_res or key in self.lru:
            if key in self.lru:
                self.lru.move_to_end(key)
            return False
        self._insert(key)
        return True

    def __len__(self) -> int:
        return len(self.hot_res) + len(self.lru)


def next_use(keys: np.ndarray) -> np.ndarray:
    """For each position i, the next position holding the same key, or len(keys) if none."""
    keys = np.asarray(keys)
    n = len(keys)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    nxt = np.full(n, n, dtype=np.int64)
    same = sk[1:] == sk[:-1]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


class Belady(Policy):
    """Belady's MIN: evict the resident key whose next use is farthest away (offline: prepare() is
    given the whole sequence). Optimal hit count for any demand-paged cache of this capacity."""

    name = "belady"
    supports_prefetch = False

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.nxt: list[int] = []
        self.i = 0
        self.res: dict[int, int] = {}  # key -> next use
        self.heap: list[tuple[int, int]] = []  # (-next use, key); stale entries skipped lazily

    def prepare(self, keys: np.ndarray) -> None:
        self.nxt = next_use(keys).tolist()
        self.i = 0

    def access(self, key: int) -> bool:
        if self.i >= len(self.nxt):
            raise ValueError("belady: more accesses than the prepared sequence")
        nu = self.nxt[self.i]
        self.i += 1
        res, heap = self.res, self.heap
        hit = key in res
        if not hit and len(res) >= self.capacity:
            while True:
                negn, k = heapq.heappop(heap)
                if res.get(k) == -negn:
                    del res[k]
                    break
        res[key] = nu
        heapq.heappush(heap, (-nu, key))
        if len(heap) > 4 * self.capacity + 256:
            self.heap = [(-n, k) for k, n in res.items()]
            heapq.heapify(self.heap)
        return hit

    def prefetch(self, key: int) -> bool:
        raise ValueError("belady is defined on demand accesses only")

    def run(self, keys: Sequence[int]) -> bytearray:
        if len(self.nxt) - self.i < len(keys):
            self.prepare(np.asarray(keys))
        res, cap, nxt = self.res, self.capacity, self.nxt
        heap = self.heap
        push, pop = heapq.heappush, heapq.heappop
        out = bytearray(len(keys))
        i0 = self.i
        limit = 4 * cap + 256
        for j, k in enumerate(keys):
            nu = nxt[i0 + j]
            if k in res:
                out[j] = 1
            elif len(res) >= cap:
                while True:
                    negn, kk = pop(heap)
                    if res.get(kk) == -negn:
                        del res[kk]
                        break
            res[k] = nu
            push(heap, (-nu, k))
            if len(heap) > limit:
                heap = [(-n, kk) for kk, n in res.items()]
                heapq.heapify(heap)
        self.heap = heap
        self.i = i0 + len(keys)
        return out

    def __len__(self) -> int:
        return len(self.res)


POLICIES: dict[str, Callable[[int], Policy]] = {
    "lru": LRU,
    "fifo": FIFO,
    "lfu": LFU,
    "lfu-aged": lambda cap: _named(LFU(cap, aging=16 * cap), "lfu-aged"),
    "slru": SLRU,
    "hot": HotSet,
    "belady": Belady,
}


def _named(p: Policy, name: str) -> Policy:
    p.name = name
    return p


def policy_names() -> list[str]:
    """Ours (POLICIES), then libCacheSim's through experts.cachesim_adapter (they need libcachesim)."""
    from kimi_runtime.experts.cachesim_adapter import LCS_POLICIES

    return [*POLICIES, *LCS_POLICIES]


def make_policy(name: str, capacity: int) -> Policy:
    """A policy by name (see policy_names()) with `capacity` slots."""
    factory = POLICIES.get(name)
    if factory is not None:
        return factory(capacity)
    from kimi_runtime.experts import cachesim_adapter

    if name in cachesim_adapter.LCS_POLICIES:
        return cachesim_adapter.make(name, capacity)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(policy_names())}")
