"""Replacement policies on hand-worked traces, and properties on random ones: Belady's MIN beats every
policy; LRU and MIN are stack algorithms (more slots never lose hits); run() == access()."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kimi_runtime.experts.policies import POLICIES, Belady, HotSet, make_policy, next_use

# Trace A, capacity 2: 1 2 1 3 2 1 3 3 2
#   LRU : m m H m(ev 2) m(ev 1) m(ev 3) m(ev 2) H m(ev 1)                           -> 2 hits
#   FIFO: m m H m(ev 1) H m(ev 2) H H m(ev 3)                                        -> 4 hits
#   LFU (count, then least recent): m m H(1:2) m(ev 2 c1) m(ev 3 c1) H(1:3) m(ev 2 c2)
#         H(3:3) m(ev 1: tie 3 vs 3, 1 older)                                        -> 3 hits
#   SLRU (protected 1 slot): m m H(1->prot) m(ev prob 2) m(ev prob 3) H(prot) m(ev prob 2)
#         H(3->prot, 1 demoted) m(ev prob 1)                                         -> 3 hits
#   MIN : m m H m(ev 1: next 5 vs 2's 4) H m(ev 2: next 8 vs 3's 6) H H m             -> 4 hits
TRACE_A = [1, 2, 1, 3, 2, 1, 3, 3, 2]
EXPECTED_A = {"lru": 2, "fifo": 4, "lfu": 3, "slru": 3, "belady": 4}

# Trace B, capacity 3: (1 2 3 4) x 3, a cycle one longer than the cache.
#   LRU and FIFO always evict the key needed next                                    -> 0 hits
#   MIN : 3 cold misses; 4 evicts 3 (next at 6); hits 1 2; 3 evicts 2 (next 9); hits 4 1;
#         2 evicts 1 (never again); hits 3 4                                         -> 6 hits
TRACE_B = [1, 2, 3, 4] * 3
EXPECTED_B = {"lru": 0, "fifo": 0, "belady": 6}


def _hits(name: str, cap: int, keys: list[int]) -> int:
    p = make_policy(name, cap)
    p.prepare(np.asarray(keys))
    return int(sum(p.run(keys)))


@pytest.mark.parametrize("name", sorted(EXPECTED_A))
def test_hand_trace_a(name):
    assert _hits(name, 2, TRACE_A) == EXPECTED_A[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_B))
def test_hand_trace_b(name):
    assert _hits(name, 3, TRACE_B) == EXPECTED_B[name]


def test_hot_set_hand_trace():
    # Trace A, capacity 2, hot share 1 slot, re-ranked every 4 accesses:
    #   t1 m, t2 m, t3 H(1); t4 re-rank: 1 (count 2) becomes hot; 3 misses, evicts LRU 2;
    #   t5 2 m (evicts 3); t6 1 H (hot); t7 3 m (evicts 2); t8 re-rank keeps 1 (tie with 3: first
    #   seen wins); 3 H; t9 2 m (evicts 3)                                              -> 3 hits
    p = HotSet(2, hot=0.5, period=4)
    assert sum(p.run(TRACE_A)) == 3
    assert p.hot == {1} and len(p) == 2


def test_next_use_matches_brute_force():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 7, size=200)
    nxt = next_use(keys)
    for i, k in enumerate(keys):
        later = [j for j in range(i + 1, len(keys)) if keys[j] == k]
        assert nxt[i] == (later[0] if later else len(keys))


def test_unknown_policy_and_bad_capacity():
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("nope", 4)
    with pytest.raises(ValueError, match="capacity"):
        make_policy("lru", 0)
    with pytest.raises(ValueError, match="demand"):
        Belady(2).prefetch(1)


def test_lfu_aging_forgets_old_popularity():
    # 1 is hot early, then never again; then 2 and 3 alternate. Without aging 1's count of 50 holds
    # a slot until 2 and 3 have each been seen ~50 times, so they evict each other meanwhile.
    keys = [1] * 50 + [2, 3] * 60
    plain, aged = make_policy("lfu", 2), make_policy("lfu-aged", 2)
    assert sum(aged.run(keys)) > sum(plain.run(keys))


traces = st.lists(st.integers(0, 11), min_size=1, max_size=300)


@settings(max_examples=150, deadline=None)
@given(keys=traces, cap=st.integers(1, 10))
def test_belady_is_optimal(keys, cap):
    best = _hits("belady", cap, keys)
    for name in POLICIES:
        if name != "belady":
            assert _hits(name, cap, keys) <= best, name


@settings(max_examples=100, deadline=None)
@given(keys=traces, cap=st.integers(1, 9))
def test_stack_algorithms_monotone_in_capacity(keys, cap):
    for name in ("lru", "belady"):
        assert _hits(name, cap, keys) <= _hits(name, cap + 1, keys)


@settings(max_examples=100, deadline=None)
@given(keys=traces, cap=st.integers(1, 10))
def test_run_equals_access_and_capacity_holds(keys, cap):
    for name in POLICIES:
        fast = make_policy(name, cap)
        fast.prepare(np.asarray(keys))
        slow = make_policy(name, cap)
        slow.prepare(np.asarray(keys))
        mask = []
        for k in keys:
            mask.append(int(slow.access(k)))
            assert len(slow) <= cap
        assert list(fast.run(keys)) == mask, name
        # Every policy is demand-paged: the first access of each key misses.
        assert sum(mask) <= len(keys) - len(set(keys))
