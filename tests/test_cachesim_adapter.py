"""libCacheSim's policies through experts.cachesim_adapter: our LRU, FIFO and Belady hit counts equal
libCacheSim's exactly (on a routing trace recorded from the shipped trained model, per layer and with
one shared pool, and on random key sequences), and no libCacheSim policy beats Belady's MIN.
Skipped without the libcachesim package (a test dependency in pyproject's `test` extra)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

lcs = pytest.importorskip("libcachesim")

from kimi_runtime.experts.cachesim_adapter import LCS_POLICIES, MIN_CAPACITY, CapacityTooSmall  # noqa: E402
from kimi_runtime.experts.policies import make_policy, policy_names  # noqa: E402
from kimi_runtime.experts.replay import replay  # noqa: E402
from kimi_runtime.experts.trace import load_trace  # noqa: E402

PAIRS = [("lru", "lcs-lru"), ("fifo", "lcs-fifo"), ("belady", "lcs-belady")]
OTHERS = [n for n in LCS_POLICIES if not n.startswith("lcs-")]


def _hits(name: str, cap: int, keys: list[int]) -> int:
    p = make_policy(name, cap)
    p.prepare(np.asarray(keys))
    return int(sum(p.run(keys)))


@pytest.fixture(scope="module")
def recorded_trace(tmp_path_factory: pytest.TempPathFactory):
    """Routing of the shipped trained model over 320 held-out tokens (prompt batch + decode steps)."""
    from kimi_runtime import trained_model as tm
    from kimi_runtime.engine import Engine
    from kimi_runtime.gguf.reader import open_gguf
    from kimi_runtime.text.tokenizer import Tokenizer

    path = tm.asset_path("q8_0")
    with open_gguf(path) as g:
        ids = Tokenizer.from_gguf_metadata(g.tokenizer_metadata).encode(tm.heldout_text())[:320]
    out = tmp_path_factory.mktemp("lcs") / "trained.trace.npz"
    with Engine.from_gguf(str(path), trace=str(out), report=False) as eng:
        for w0 in range(0, len(ids), 128):
            win = ids[w0:w0 + 128]
            eng.reset()
            eng.prefill(win[:16])
            for t in win[16:]:
                eng.decode(t)
    return load_trace(out)


def test_registered_names():
    names = policy_names()
    assert {"lru", "belady", "arc", "s3fifo", "sieve", "lirs", "wtinylfu", "2q"} <= set(names)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_lru_fifo_belady_equal_libcachesim_on_recorded_trace(recorded_trace, scope):
    slots = [1, 2, 3, 4, 6, 8, 16, 32]
    res = replay(recorded_trace, [n for p in PAIRS for n in p], slots, scope=scope, prefetch=False)
    by = {(r.policy, r.slots): r for r in res}
    assert res[0].accesses > 2000
    for ours, theirs in PAIRS:
        for s in slots:
            a, b = by[(ours, s)], by[(theirs, s)]
            assert (a.hits, a.bytes_moved) == (b.hits, b.bytes_moved), (ours, s, a.hits, b.hits)
    # the recorded routing is not trivial: small caches miss, Belady beats LRU (a shared pool of 3 x 3
    # slots gets no LRU hit at all: each token cycles through 18 experts of 3 layers)
    assert 0 < by[("lru", 8)].hits < by[("belady", 8)].hits < by[("belady", 8)].accesses


def test_no_libcachesim_policy_beats_belady_on_recorded_trace(recorded_trace):
    slots = [3, 4, 8, 16]
    res = replay(recorded_trace, OTHERS + ["belady"], slots, prefetch=False)
    best = {r.slots: r.hits for r in res if r.policy == "belady"}
    got = {r.policy for r in res}
    assert set(OTHERS) <= got
    for r in res:
        assert r.hits <= best[r.slots], (r.policy, r.slots)


keys_st = st.lists(st.integers(0, 15), min_size=1, max_size=250)


@settings(max_examples=60, deadline=None)
@given(keys=keys_st, cap=st.integers(1, 12))
def test_pairs_equal_on_random_sequences(keys, cap):
    for ours, theirs in PAIRS:
        assert _hits(ours, cap, keys) == _hits(theirs, cap, keys), (ours, cap)


@settings(max_examples=40, deadline=None)
@given(keys=keys_st, cap=st.integers(1, 12))
def test_others_bounded_by_belady_and_capacity(keys, cap):
    best = _hits("belady", cap, keys)
    for name in OTHERS:
        if cap < MIN_CAPACITY.get(name, 1):
            continue
        p = make_policy(name, cap)
        hits = 0
        for k in keys:
            hits += p.access(k)
            assert len(p) <= cap, name
        assert hits <= best, name


def test_small_sizes_refused_and_skipped(recorded_trace):
    with pytest.raises(CapacityTooSmall, match="s3fifo needs >= 3"):
        make_policy("s3fifo", 2)
    res = replay(recorded_trace, ["s3fifo", "lru"], [2, 4], prefetch=False)
    assert {(r.policy, r.slots) for r in res} == {("lru", 2), ("s3fifo", 4), ("lru", 4)}
    with pytest.raises(ValueError, match="demand accesses only"):
        make_policy("arc", 4).prefetch(1)
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("lfuda", 4)
