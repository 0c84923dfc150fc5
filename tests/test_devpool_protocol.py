"""The VRAM slot pool's protocol (csrc/devpool: tickets as ready events, last-use fences, a staging
ring of >= 4 pinned buffers, several reader threads) on the emulated device, whose copies complete
later on their own thread, chunk by chunk with random delays.

The stress test runs compute threads (one stream each) that acquire random experts, prefetch the next
layer and "compute" on their stream by comparing the slot's bytes with the direct provider's read of
the expert, before and after a random delay. A compute that ran before its load finished shows as an
early read, a load that overwrote a slot in use as a torn read. With the protocol intact both are 0;
with either fence removed (fault injection) the same test sees them, so it can tell."""
from __future__ import annotations

import numpy as np
import pytest

from kimi_runtime._native import C

N_LAYERS, N_EXPERTS = 3, 10


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Experts of distinct random bytes and sizes (gate/up/down back to back) in one part file."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("devpool") / "experts.bin"
    blobs, ranges, off = [], [], 0
    for layer in range(N_LAYERS):
        for e in range(N_EXPERTS):
            sizes = [int(rng.integers(1500, 6000)) for _ in range(3)]
            rs = []
            for n in sizes:
                blobs.append(rng.integers(0, 256, n, dtype=np.uint8))
                rs.append((0, off, n))
                off += n
            ranges.append((layer, e, rs))
    path.write_bytes(np.concatenate(blobs).tobytes())
    s = C.ExpertStore([str(path)], N_LAYERS, N_EXPERTS)
    for layer, e, rs in ranges:
        s.set_expert(layer, e, *rs)
    return s


def expert_bytes(store, layer, e) -> bytes:
    return store.read_expert(layer, e).tobytes()


def test_acquire_waits_for_load_and_hits_reuse(store) -> None:
    pool = C.EmuDevicePool(store, n_slots=4, n_staging=4, n_readers=2, seed=3, max_delay_us=300)
    s = pool.new_stream()
    slots = pool.acquire(0, [1, 2, 1], s)
    assert slots[0] == slots[2] and len(set(slots)) == 2
    for slot, e in zip(slots, [1, 2, 1]):  # read in stream order: after the waits on ready events
        n = store.expert_bytes(0, e)
        assert pool.read_slot(slot, n, s) == expert_bytes(store, 0, e)
    assert pool.pinned_slots() == 2
    pool.release(0, [1, 2, 1], s)
    assert pool.pinned_slots() == 0
    assert pool.acquire(0, [2], s) == [slots[1]]  # a hit: same slot, no load
    pool.release(0, [2], s)
    st = pool.stats()
    assert st["misses"] == 2 and st["loads"] == 2 and st["hits"] >= 2
    assert pool.bound_threads == 2  # every reader bound itself to the device


def test_prefetch_eviction_and_capacity(store) -> None:
    pool = C.EmuDevicePool(store, n_slots=3, seed=5)
    s = pool.new_stream()
    assert pool.prefetch(1, [0, 1, 2]) == 3
    pool.wait_idle()
    assert all(pool.contains(1, e) for e in (0, 1, 2))
    pool.acquire(1, [0], s)
    assert pool.prefetch(1, [3, 4, 5]) == 2  # slot of expert 0 is pinned: one prefetch is dropped
    assert pool.stats()["prefetch_dropped"] == 1
    pool.wait_idle()
    assert pool.contains(1, 0) and len(pool.resident()) == 3
    with pytest.raises(ValueError, match="exceeds"):
        pool.acquire(2, [0, 1, 2, 3], s)
    with pytest.raises(ValueError, match="not acquired"):
        pool.release(1, [7], s)
    pool.release(1, [0], s)


def test_bad_configuration(store) -> None:
    with pytest.raises(ValueError, match="at least 4"):
        C.EmuDevicePool(store, n_slots=4, n_staging=3)
    with pytest.raises(ValueError):
        C.EmuDevicePool(store, n_slots=0)
    with pytest.raises(ValueError, match="out of range"):
        C.EmuDevicePool(store, n_slots=2).acquire(N_LAYERS, [0], 0)


@pytest.mark.parametrize("threads,readers,staging", [(1, 1, 4), (2, 3, 4), (3, 2, 6)])
def test_stress_protocol_holds(store, threads, readers, staging) -> None:
    r = C.devpool_stress(store, n_slots=7, n_staging=staging, n_readers=readers, n_threads=threads, iters=60,
                         k=2, seed=threads * 10 + readers, max_delay_us=150)
    assert r["computes"] > 0
    assert r["early_reads"] == 0, r
    assert r["torn_reads"] == 0, r
    assert r["capacity_ok"] and r["max_pinned"] <= 7
    assert r["evictions"] > 0 and r["loads"] >= r["misses"] > 0  # the pool was actually under pressure
    assert r["bound_threads"] == readers


def test_stress_catches_missing_ready_wait(store) -> None:
    r = C.devpool_stress(store, n_slots=6, n_threads=2, iters=40, k=2, seed=2, max_delay_us=200,
                         skip_ready_wait=True)
    assert r["early_reads"] > 0, r


def test_stress_catches_missing_last_use_fence(store) -> None:
    r = C.devpool_stress(store, n_slots=4, n_readers=3, n_threads=2, iters=100, k=2, seed=4, max_delay_us=400,
                         skip_last_use_wait=True)
    assert r["torn_reads"] + r["early_reads"] > 0, r
