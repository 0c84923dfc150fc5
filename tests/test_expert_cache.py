"""The native expert cache (csrc/cache) through its Python facade: bytes in slots equal the file,
LRU/LFU order, pinning, prefetch, errors, and invariants under a concurrent stress test."""
from __future__ import annotations

import os
import random
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from kimi_runtime.experts.cache import ExpertCache, open_store, store_from_model
from kimi_runtime.experts.policies import LFU, LRU

N_LAYERS, N_EXPERTS = 3, 16  # layer 0 is dense: no experts, like DeepSeek's leading layers


def _write_parts(tmp_path, seed=0):
    """Two part files of random bytes and ranges for layers 1-2 spread over both parts; layer 2's
    experts are larger (a different quant type), so slots must fit the largest."""
    rng = np.random.default_rng(seed)
    paths = [str(tmp_path / "m-00001-of-00002.bin"), str(tmp_path / "m-00002-of-00002.bin")]
    sizes = [0, 0]
    ranges = {}
    for layer in (1, 2):
        for e in range(N_EXPERTS):
            rs = []
            for w in range(3):
                part = (e + w) % 2
                n = (700 if layer == 1 else 1500) + 13 * e + 5 * w
                rs.append((part, sizes[part] + 64, n))  # 64 bytes of gap between slices
                sizes[part] += n + 64
            ranges[(layer, e)] = rs
    for p, size in zip(paths, sizes):
        rng.integers(0, 256, size=size + 100, dtype=np.uint8).tofile(p)
    return paths, ranges


@pytest.fixture()
def parts(tmp_path):
    return _write_parts(tmp_path)


def _file_bytes(paths, ranges, layer, e):
    out = []
    for part, off, n in ranges[(layer, e)]:
        with open(paths[part], "rb") as f:
            f.seek(off)
            out.append(f.read(n))
    return np.frombuffer(b"".join(out), dtype=np.uint8)


def _slot_matches(cache, paths, ranges, layer, e, slot):
    ref = _file_bytes(paths, ranges, layer, e)
    return np.array_equal(cache.slot_view(slot)[:len(ref)], ref)


@pytest.mark.parametrize("mode,staging", [("mmap", False), ("pread", False), ("mmap", True), ("pread", True)])
def test_slot_bytes_equal_file(parts, mode, staging):
    paths, ranges = parts
    store = open_store(paths, N_LAYERS, N_EXPERTS, ranges, mode=mode)
    assert store.max_expert_bytes == max(sum(r[2] for r in rs) for rs in ranges.values())
    cache = ExpertCache(store, 5, staging=staging)
    for layer in (1, 2):
        for chunk in ([0, 3, 7], [15, 1], [2, 4, 6, 8, 10]):
            slots = cache.acquire(layer, chunk)
            for e, s in zip(chunk, slots):
                assert _slot_matches(cache, paths, ranges, layer, e, s)
                lay = cache.layout(layer, e)
                assert (lay.gate, lay.up, lay.down) == (0, ranges[(layer, e)][0][2],
                                                        ranges[(layer, e)][0][2] + ranges[(layer, e)][1][2])
                assert cache.slot_address(s) % 64 == 0
            cache.release(layer, chunk)
    assert np.array_equal(store.read_expert(2, 9), _file_bytes(paths, ranges, 2, 9))


def test_lru_order_and_stats(parts):
    paths, ranges = parts
    cache = ExpertCache(open_store(paths, N_LAYERS, N_EXPERTS, ranges), 3)
    for e in (0, 1, 2):
        with cache.using(1, [e]):
            pass
    with cache.using(1, [0]):  # 0 becomes most recent; 1 is now the LRU victim
        pass
    with cache.using(1, [5]):
        pass
    assert [cache.contains(1, e) for e in (0, 1, 2, 5)] == [True, False, True, True]
    st = cache.stats(1)
    assert (st["hits"], st["misses"], st["evictions"]) == (1, 4, 1)
    assert st["bytes_loaded"] == sum(sum(r[2] for r in ranges[(1, e)]) for e in (0, 1, 2, 5))
    assert cache.stats()["accesses"] == 5 and cache.stats(2)["accesses"] == 0
    cache.reset_stats()
    assert cache.stats()["accesses"] == 0 and cache.stats()["bytes_loaded"] == 0


@pytest.mark.parametrize("policy,ref", [("lru", LRU), ("lfu", LFU)])
def test_native_order_matches_python_policy(parts, policy, ref):
    # One expert per acquire, released at once: the native eviction order must give exactly the hits
    # of the Python policy of the same name (LFU: perfect counts, ties by recency, no aging).
    paths, ranges = parts
    cache = ExpertCache(open_store(paths, N_LAYERS, N_EXPERTS, ranges), 4, policy=policy)
    rng = random.Random(3)
    keys = [min(int(rng.expovariate(0.3)), N_EXPERTS - 1) for _ in range(400)]
    py = ref(4)
    expected = sum(py.access(k) for k in keys)
    for k in keys:
        with cache.using(2, [k]):
            pass
    assert cache.stats(2)["hits"] == expected
    assert 0 < expected < len(keys)


def test_pinned_never_evicted(parts):
    paths, ranges = parts
    cache = ExpertCache(open_store(paths, N_LAYERS, N_EXPERTS, ranges), 3)
    (pinned,) = cache.acquire(2, [7])
    for e in range(N_EXPERTS):  # cycles every other expert through the two free slots
        if e != 7:
            with cache.using(1, [e, (e + 1) % N_EXPERTS]):
                pass
        cache.prefetch(1, [(e + 5) % N_EXPERTS])
    cache.wait_idle()
    assert cache.contains(2, 7) and _slot_matches(cache, paths, ranges, 2, 7, pinned)
    assert (2, 7, pinned, 1) in cache.resident()
    cache.release(2, [7])
    assert cache.pinned_slots == 0


def test_prefetch_hits_and_drops(parts):
    paths, ranges = parts
    cache = ExpertCache(open_store(paths, N_LAYERS, N_EXPERTS, ranges), 3)
    assert cache.prefetch(1, [4, 5]) == 2
    assert cache.prefetch(1, [4]) == 0  # already resident or loading
    slots = cache.acquire(1, [4, 5, 6])  # waits for the prefetches still in flight, if any
    st = cache.stats(1)
    assert (st["hits"], st["misses"], st["prefetch_hits"], st["prefetches"]) == (2, 1, 2, 2)
    assert all(_slot_matches(cache, paths, ranges, 1, e, s) for e, s in zip([4, 5, 6], slots))
    assert cache.prefetch(2, [0, 1]) == 0  # every slot pinned: dropped, never evicts a pinned one
    assert cache.stats(2)["prefetch_dropped"] == 2
    cache.release(1, [4, 5, 6])
    cache.wait_idle()
    st = cache.stats()
    assert st["loads"] == st["misses"] + st["prefetches"]


def test_duplicate_ids_pin_per_occurrence(parts):
    paths, ranges = parts
    cache = ExpertCache(open_store(paths, N_LAYERS, N_EXPERTS, ranges), 2)
    a, b = cache.acquire(1, [3, 3])
    assert a == b and cache.stats(1)["accesses"] == 1
    cache.release(1, [3])
    assert cache.pinned_slots == 1  # still pinned once
    cache.release(1, [3])
    with pytest.raises(ValueError, match="released more often"):
        cache.release(1, [3])


def test_errors_are_exceptions_not_hangs(parts, tmp_path):
    paths, ranges = parts
    store = open_store(paths, N_LAYERS, N_EXPERTS, ranges)
    cache = ExpertCache(store, 2, acquire_timeout_s=0.3)
    with pytest.raises(ValueError, match="3 distinct experts requested but the cache has only 2"):
        cache.acquire(1, [0, 1, 2])
    with pytest.raises(ValueError, match="out of range"):
        cache.acquire(1, [N_EXPERTS])
    with pytest.raises(ValueError, match="out of range"):
        cache.acquire(N_LAYERS, [0])
    with pytest.raises(ValueError, match="no bytes"):
        cache.acquire(0, [0])  # a dense layer
    with pytest.raises(ValueError, match="released more often"):
        cache.release(1, [0])
    cache.acquire(1, [0, 1])
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="timed out.*2 of 2 slots are pinned"):
        cache.acquire(2, [5])  # this caller holds every slot: a clear error, not a deadlock
    assert time.perf_counter() - t0 < 5
    cache.release(1, [0, 1])
    cache.acquire(2, [5])
    with pytest.raises(ValueError, match="exceeds file size"):
        open_store(paths, 2, 1, {(1, 0): [(0, 0, 8), (1, os.path.getsize(paths[1]) - 4, 8), (0, 0, 8)]})
    with pytest.raises(ValueError, match="part index"):
        open_store(paths, 2, 1, {(1, 0): [(2, 0, 8), (0, 0, 8), (0, 0, 8)]})
    with pytest.raises(ValueError, match="cannot open"):
        open_store([str(tmp_path / "missing.gguf")], 2, 1, {})
    with pytest.raises(ValueError, match="cannot hold the largest expert"):
        ExpertCache(store, 2, slot_bytes=100)
    with pytest.raises(ValueError, match="read mode"):
        open_store(paths, 2, 1, {}, mode="odirect")


def test_failed_load_raises_and_cache_recovers(tmp_path):
    paths, ranges = _write_parts(tmp_path, seed=1)
    store = open_store(paths, N_LAYERS, N_EXPERTS, ranges, mode="pread")
    cache = ExpertCache(store, 4)
    with cache.using(1, [0]):
        pass
    os.truncate(paths[1], 10)  # later reads hit end of file (pread mode: no SIGBUS as with mmap)
    with pytest.raises(RuntimeError, match="load failed.*end of file"):
        cache.acquire(2, [3])
    assert cache.pinned_slots == 0 and not cache.contains(2, 3)
    with cache.using(1, [0]) as (s,):  # still resident and intact
        assert cache.contains(1, 0) and s >= 0


def test_store_from_model_duck_typed(parts):
    paths, ranges = parts
    which_idx = {"gate": 0, "up": 1, "down": 2}

    class Experts:
        def slice(self, layer, e, which):
            part, off, n = ranges[(layer, e)][which_idx[which]]
            return SimpleNamespace(part=part, offset=off, nbytes=n)

    cfg = SimpleNamespace(moe_layers=[1, 2], n_expert=N_EXPERTS, n_layer=N_LAYERS)
    store = store_from_model(SimpleNamespace(config=cfg, part_paths=paths, experts=Experts()))
    assert store.ranges(2, 3) == [tuple(r) for r in ranges[(2, 3)]]
    assert not store.has(0, 0)


def test_with_budget(parts):
    paths, ranges = parts
    store = open_store(paths, N_LAYERS, N_EXPERTS, ranges)
    stride = (store.max_expert_bytes + 63) // 64 * 64
    assert ExpertCache.with_budget(store, 5 * stride + 10).capacity == 5
    with pytest.raises(ValueError, match="holds no expert slot"):
        ExpertCache.with_budget(store, 10)


@pytest.mark.parametrize("policy,staging", [("lru", False), ("lfu", True)])
def test_concurrent_stress_invariants(parts, policy, staging):
    paths, ranges = parts
    cap = 6
    cache = ExpertCache(open_store(paths, N_LAYERS, N_EXPERTS, ranges), cap, policy=policy,
                        staging=staging, acquire_timeout_s=20)
    errors: list[str] = []
    counted = [0] * 4
    stop = threading.Event()

    def worker(i: int) -> None:
        rng = random.Random(i)
        try:
            for _ in range(150):
                layer = rng.choice((1, 2))
                ids = rng.sample(range(N_EXPERTS), rng.randint(1, 2))
                cache.prefetch(rng.choice((1, 2)), rng.sample(range(N_EXPERTS), 2))
                slots = cache.acquire(layer, ids)
                counted[i] += len(ids)
                for e, s in zip(ids, slots):
                    if not _slot_matches(cache, paths, ranges, layer, e, s):
                        errors.append(f"slot {s} of ({layer}, {e}) differs from the file")
                time.sleep(rng.random() * 1e-4)  # others load and evict meanwhile
                for e, s in zip(ids, slots):  # pinned: still the same bytes
                    if not _slot_matches(cache, paths, ranges, layer, e, s):
                        errors.append(f"pinned slot {s} of ({layer}, {e}) was overwritten")
                cache.release(layer, ids)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    def monitor() -> None:
        while not stop.is_set():
            res = cache.resident()
            if len(res) > cap or len({r[2] for r in res}) != len(res) or cache.pinned_slots > cap:
                errors.append(f"capacity exceeded: {res}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    mon = threading.Thread(target=monitor)
    mon.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    mon.join()
    assert not errors, errors[:5]
    cache.wait_idle()
    st = cache.stats()
    assert st["hits"] + st["misses"] == st["accesses"] == sum(counted)
    assert st["loads"] == st["misses"] + st["prefetches"]
    assert st["evictions"] >= st["loads"] - cap
    assert sum(cache.stats(layer)["accesses"] for layer in range(N_LAYERS)) == st["accesses"]
    assert cache.pinned_slots == 0 and len(cache.resident()) <= cap
