"""The disk tier of the expert cache (csrc/cache): O_DIRECT reads through aligned buffers (and the
buffered fallback where the file system refuses them), several readers, injected read errors, the
slot-size guard on set_expert, the staged path's completion latency and the tier chain. Every served
slot is checked against the file's bytes."""
from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from kimi_runtime.experts.cache import ExpertCache, open_store
from kimi_runtime.experts.tiers import o_direct_supported as odirect_works

N_LAYERS, N_EXPERTS = 3, 24


def _write(tmp_dir, seed=0, big=False):
    """One file with experts at odd (unaligned) offsets for layers 1-2; slices of 5-20 KB so an
    expert spans several 4 KiB blocks and its ends share blocks with neighbours."""
    rng = np.random.default_rng(seed)
    path = str(tmp_dir / "experts.bin")
    size, ranges = 0, {}
    for layer in (1, 2):
        for e in range(N_EXPERTS):
            rs = []
            for w in range(3):
                n = (5000 if layer == 1 else 9000) + 97 * e + 31 * w + (20000 if big and e == 0 else 0)
                rs.append((0, size + 17, n))
                size += n + 17
            ranges[(layer, e)] = rs
    rng.integers(0, 256, size=size + 3001, dtype=np.uint8).tofile(path)
    return [path], ranges


def _ref(paths, ranges, layer, e):
    data = np.fromfile(paths[0], dtype=np.uint8)
    return np.concatenate([data[off:off + n] for _, off, n in ranges[(layer, e)]])


@pytest.fixture()
def parts(tmp_path):
    return _write(tmp_path)


def _check_all(cache, paths, ranges, layer, ids, slots):
    for e, s in zip(ids, slots):
        ref = _ref(paths, ranges, layer, e)
        assert np.array_equal(cache.slot_view(s)[:len(ref)], ref), f"layer {layer} expert {e}"


@pytest.mark.parametrize("staging", [False, True])
@pytest.mark.parametrize("readers", [1, 4])
def test_direct_reads_equal_file(parts, staging, readers):
    paths, ranges = parts
    store = open_store(paths, N_LAYERS, N_EXPERTS, ranges, mode="direct")
    assert store.mode == "direct" and store.direct_active == odirect_works(paths[0])
    assert store.staging_bytes >= store.max_expert_bytes and store.staging_bytes % 4096 == 0
    cache = ExpertCache(store, 6, staging=staging, n_readers=readers)
    assert cache.n_readers == readers
    for layer in (1, 2):
        for ids in ([0, 5, 9, 23], [1, 2], [3, 4, 6, 7, 8, 10]):
            slots = cache.acquire(layer, ids)
            _check_all(cache, paths, ranges, layer, ids, slots)
            cache.release(layer, ids)
    assert store.direct_active == odirect_works(paths[0])  # no read fell back where O_DIRECT works
    # O_DIRECT moves whole aligned blocks: at least the experts' bytes, at most a block more per end.
    s = cache.stats()
    assert s["bytes_loaded"] <= store.bytes_read <= s["bytes_loaded"] + s["loads"] * 3 * 2 * 4096
    assert s["read_seconds"] > 0 and s["read_errors"] == 0
    assert np.array_equal(store.read_expert(2, 7), _ref(paths, ranges, 2, 7))


def test_direct_falls_back_where_refused(tmp_path):
    shm = pytest.importorskip("pathlib").Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm (tmpfs) on this machine")
    d = shm / f"kr-disk-tier-{tmp_path.name}"
    d.mkdir()
    try:
        paths, ranges = _write(d)
        store = open_store(paths, N_LAYERS, N_EXPERTS, ranges, mode="direct")
        cache = ExpertCache(store, 4, n_readers=2)
        slots = cache.acquire(2, [0, 11, 23])
        _check_all(cache, paths, ranges, 2, [0, 11, 23], slots)
        cache.release(2, [0, 11, 23])
        # tmpfs refuses O_DIRECT at open (older kernels) or accepts it; both must serve right bytes
        assert store.direct_active == odirect_works(paths[0])
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


@pytest.mark.parametrize("mode", ["direct", "pread"])
@pytest.mark.parametrize("staging", [False, True])
@pytest.mark.parametrize("fault,message", [("eio", "Input/output error"), ("eof", "unexpected end of file")])
def test_read_error_is_clear_and_leaves_no_slot(parts, mode, staging, fault, message):
    paths, ranges = parts
    store = open_store(paths, N_LAYERS, N_EXPERTS, ranges, mode=mode)
    cache = ExpertCache(store, 4, staging=staging, n_readers=2)
    ok = cache.acquire(1, [3])  # resident before the fault: must survive it untouched
    store.inject_fault(fault, skip=1, count=1)  # the second read of the next load fails
    with pytest.raises(RuntimeError, match=message) as ei:
        cache.acquire(1, [4])
    assert "load failed" in str(ei.value) and "experts.bin" in str(ei.value)
    assert not cache.contains(1, 4)
    assert cache.pinned_slots == 1  # only expert 3's pin from before
    assert cache.stats(1)["read_errors"] == 1
    assert [r[:2] for r in cache.resident()] == [(1, 3)]
    _check_all(cache, paths, ranges, 1, [3], ok)
    cache.release(1, [3])
    slots = cache.acquire(1, [4, 3])  # the fault is spent: the same expert now loads whole
    _check_all(cache, paths, ranges, 1, [4, 3], slots)
    cache.release(1, [4, 3])


@pytest.mark.skipif(not hasattr(__import__("os"), "O_DIRECT"), reason="no O_DIRECT on this platform")
def test_direct_read_refused_falls_back_to_buffered(parts):
    """A file system that opens with O_DIRECT but refuses the read: that part reads buffered from
    then on (pages dropped after each read), with the same bytes."""
    paths, ranges = parts
    if not odirect_works(paths[0]):
        pytest.skip("O_DIRECT refused at open here: the other fallback, tested above")
    store = open_store(paths, N_LAYERS, N_EXPERTS, ranges, mode="direct")
    cache = ExpertCache(store, 6, n_readers=2)
    assert store.direct_active
    store.inject_fault("einval", skip=0, count=1)
    ids = [0, 1, 2, 3]
    slots = cache.acquire(1, ids)
    _check_all(cache, paths, ranges, 1, ids, slots)
    cache.release(1, ids)
    assert not store.direct_active and cache.stats()["read_errors"] == 0


@pytest.mark.parametrize("mode", ["direct", "pread"])
def test_short_reads_are_absorbed(parts, mode):
    paths, ranges = parts
    store = open_store(paths, N_LAYERS, N_EXPERTS, ranges, mode=mode)
    cache = ExpertCache(store, 8, n_readers=3)
    store.inject_fault("short", skip=0, count=1000)
    ids = list(range(8))
    slots = cache.acquire(2, ids)
    _check_all(cache, paths, ranges, 2, ids, slots)
    assert store.reads > 3 * len(ids)  # the reads really were split
    cache.release(2, ids)


def test_set_expert_refused_past_slot_size(parts):
    paths, ranges = parts
    store = open_store(paths, N_LAYERS, N_EXPERTS, ranges, mode="direct")
    cache = ExpertCache(store, 2)
    big = [(0, 0, store.max_expert_bytes), (0, 0, 1), (0, 0, 1)]
    with pytest.raises(ValueError, match="do not fit the .*slots of a cache"):
        store.set_expert(1, 0, *big)
    assert store.ranges(1, 0) == list(ranges[(1, 0)])  # the old ranges stay
    small = [(0, 100, 10), (0, 200, 10), (0, 300, 10)]
    store.set_expert(1, 0, *small)  # fits: allowed
    slots = cache.acquire(1, [0])
    data = np.fromfile(paths[0], dtype=np.uint8)
    assert np.array_equal(cache.slot_view(slots[0])[:30], np.concatenate([data[100:110], data[200:210],
                                                                         data[300:310]]))
    cache.release(1, [0])
    del cache


def test_a_miss_on_its_way_is_read_once(parts):
    """Many threads ask for the same experts at once: each is read from the file exactly once."""
    paths, ranges = parts
    store = open_store(paths, N_LAYERS, N_EXPERTS, ranges, mode="direct")
    cache = ExpertCache(store, 8, n_readers=4)
    store.inject_fault("slow", skip=0, count=3)  # keep the first load in flight while others ask
    ids = [5, 6, 7]
    errors = []

    def worker():
        try:
            slots = cache.acquire(2, ids)
            _check_all(cache, paths, ranges, 2, ids, slots)
            cache.release(2, ids)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=worker) for _ in range(8)]
    for t in ts:
        t.start()
    cache.prefetch(2, ids)  # a prefetch of experts already loading queues nothing
    for t in ts:
        t.join()
    assert not errors
    s = cache.stats(2)
    assert s["loads"] == 3 and s["misses"] == 3 and s["hits"] == 3 * 7
    assert store.reads == 3 * 3  # three ranges per expert, once each


def test_staged_copy_ready_before_next_read(parts):
    """Issue 10: with one reader, a finished copy must not wait for the next job's read."""
    paths, ranges = parts
    store = open_store(paths, N_LAYERS, N_EXPERTS, ranges, mode="pread")
    cache = ExpertCache(store, 4, staging=True, n_readers=1)
    store.inject_fault("slow", skip=3, count=3)  # expert 1 reads fast, expert 2 takes 3 x 100 ms
    t0 = time.perf_counter()
    assert cache.prefetch(1, [1, 2]) == 2
    while not cache.contains(1, 1):
        assert time.perf_counter() - t0 < 5
        time.sleep(0.002)
    ready_1 = time.perf_counter() - t0
    assert not cache.contains(1, 2)  # still reading
    assert ready_1 < 0.2, ready_1
    cache.wait_idle()
    assert time.perf_counter() - t0 >= 0.3


def test_budget_never_exceeded_and_no_half_read_expert(parts):
    """Stress: a budget far below the experts, 4 readers, threads acquiring random sets while reads
    fail now and then: every served slot equals the file, failures are clear, capacity holds."""
    paths, ranges = parts
    store = open_store(paths, N_LAYERS, N_EXPERTS, ranges, mode="direct")
    total = sum(store.expert_bytes(l, e) for l in (1, 2) for e in range(N_EXPERTS))
    budget = total // 8
    cache = ExpertCache.with_budget(store, budget, n_readers=4, staging=False)
    assert cache.capacity * ((store.max_expert_bytes + 63) // 64 * 64) <= budget
    refs = {(l, e): _ref(paths, ranges, l, e) for l in (1, 2) for e in range(N_EXPERTS)}
    failures, bad, served = [], [], [0]
    lock = threading.Lock()

    def worker(seed):
        rng = random.Random(seed)
        for _ in range(40):
            layer = rng.choice((1, 2))
            ids = rng.sample(range(N_EXPERTS), rng.randint(1, 2))
            try:
                slots = cache.acquire(layer, ids)
            except RuntimeError as e:
                with lock:
                    failures.append(str(e))
                continue
            try:
                for e, s in zip(ids, slots):
                    ref = refs[(layer, e)]
                    if not np.array_equal(cache.slot_view(s)[:len(ref)], ref):
                        bad.append((layer, e))
                with lock:
                    served[0] += 1
            finally:
                cache.release(layer, ids)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    for k in range(6):  # errors injected while the others read
        time.sleep(0.01)
        store.inject_fault("eio" if k % 2 else "eof", skip=k, count=1)
    for t in ts:
        t.join()
    store.inject_fault("none")
    assert not bad
    assert served[0] > 0
    assert all("load failed" in f for f in failures)
    assert cache.pinned_slots == 0 and len(cache.resident()) <= cache.capacity
    for layer, e, s, pins in cache.resident():  # what stays resident is whole
        assert np.array_equal(cache.slot_view(s)[:len(refs[(layer, e)])], refs[(layer, e)])


@pytest.mark.parametrize("staging", [False, True])
def test_tier_chain_disk_ram_device(parts, staging):
    """disk -> RAM slots -> a second tier (a staged host pool standing in for VRAM): the second tier
    loads through the first, each tier with its own statistics."""
    paths, ranges = parts
    store = open_store(paths, N_LAYERS, N_EXPERTS, ranges, mode="direct")
    ram = ExpertCache(store, 6, n_readers=3)
    dev = ExpertCache(store, 3, staging=staging, n_readers=2, upstream=ram)
    for ids in ([0, 1, 2], [1, 2, 3], [0, 4, 5]):
        slots = dev.acquire(2, ids)
        _check_all(dev, paths, ranges, 2, ids, slots)
        dev.release(2, ids)
    d, r = dev.stats(), ram.stats()
    assert d["misses"] == 7 and d["loads"] == 7  # [1, 2] hit in the second call, 0 was evicted
    assert r["loads"] == 6  # each distinct expert read from disk once
    assert r["hits"] + r["misses"] >= d["misses"]
    assert ram.pinned_slots == 0 and dev.pinned_slots == 0
    with pytest.raises(ValueError, match="same store"):
        other = open_store(paths, N_LAYERS, N_EXPERTS, ranges, mode="direct")
        ExpertCache(other, 2, upstream=ram)


def test_wrong_guesses_not_started_are_cancelled(parts):
    paths, ranges = parts
    store = open_store(paths, N_LAYERS, N_EXPERTS, ranges, mode="direct")
    cache = ExpertCache(store, 8, n_readers=1)
    store.inject_fault("slow", skip=0, count=3)  # the first guess keeps the only reader busy
    assert cache.prefetch(1, [1, 2, 3, 4]) == 4
    time.sleep(0.05)
    slots = cache.acquire_nowait(1, [2, 5], cancel_stale=True)  # 2 was guessed right, 3 and 4 wrong
    cache.wait_loaded(1, slots)
    _check_all(cache, paths, ranges, 1, [2, 5], slots)
    cache.release(1, [2, 5])
    cache.wait_idle()
    s = cache.stats(1)
    assert s["prefetch_cancelled"] == 2 and s["loads"] == 3  # 1 (already reading), 2, 5
    assert not cache.contains(1, 3) and not cache.contains(1, 4) and cache.contains(1, 1)
    assert cache.pinned_slots == 0
