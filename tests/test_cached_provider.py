"""The cached expert provider through the engine: logits identical (torch.equal) to the direct provider
for every policy, prefetch on/off, decode and prefill, at any cache size; scheduler decisions visible in
stats; stats that add up; placement rules; traces; truncate."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kimi_runtime.engine import Engine
from kimi_runtime.experts.provider import CachedExpertProvider
from kimi_runtime.experts.scheduler import CostModel
from kimi_runtime.experts.trace import load_trace

SEQ = 24
PROMPT = 12  # a multi-token prefill: the fused kernel with several tokens per expert
# GPU-like: one token per expert stays on the CPU, from ~9 tokens per expert a fetch pays.
GPU_LIKE = CostModel(cpu_stream=1 / 50e9, cpu_token=1 / 400e9, load=1 / 25e9, dev_stream=1 / 1000e9,
                     dev_token=1 / 20000e9)


def _ids(n: int = SEQ, seed: int = 5) -> list[int]:
    return torch.randint(3, 1000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _run(eng: Engine, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(whole-sequence logits, prefill + token-by-token decode logits)."""
    whole = eng.logits(ids)
    eng.reset()
    steps = [eng.prefill(ids[:PROMPT], all_logits=True)]
    steps += [eng.decode(t).unsqueeze(0) for t in ids[PROMPT:]]
    return whole, torch.cat(steps)


@pytest.fixture(scope="module")
def reference(tiny_gguf) -> tuple[torch.Tensor, torch.Tensor]:
    return _run(Engine.from_gguf(tiny_gguf), _ids())


@pytest.mark.parametrize("policy", ["lru", "lfu"])
@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("miss", ["fetch", "auto"])
def test_logits_identical_to_direct(tiny_gguf, reference, policy, prefetch, miss) -> None:
    eng = Engine.from_gguf(tiny_gguf, cache_slots=8, cache_policy=policy, prefetch=prefetch, miss_policy=miss,
                           admit=True, report=False)
    assert isinstance(eng.provider, CachedExpertProvider)
    whole, steps = _run(eng, _ids())
    assert torch.equal(whole, reference[0])
    assert torch.equal(steps, reference[1])
    st = eng.stats()
    assert st["cache_hits"] > 0  # slots were really used, not only the file
    if miss == "fetch":
        assert st["bytes_loaded"] > 0 and st["fetched"] > 0


@pytest.mark.parametrize("slots", [1, 4, 32])
def test_any_capacity_is_identical(tiny_gguf, reference, slots) -> None:
    eng = Engine.from_gguf(tiny_gguf, cache_slots=slots, miss_policy="fetch", prefetch=True, report=False)
    whole, steps = _run(eng, _ids())
    assert torch.equal(whole, reference[0]) and torch.equal(steps, reference[1])
    assert eng.provider.cache.pinned_slots == 0  # every acquire was released


def test_identical_without_fused_kernel(tiny_gguf, monkeypatch) -> None:
    """KR_KERNELS=0: the direct provider loops over experts with float matmuls; the cached one runs the
    same loop with slot-backed QLinears (fetches cycled through 3 slots in windows)."""
    monkeypatch.setenv("KR_KERNELS", "0")
    ids = _ids(14)
    ref = Engine.from_gguf(tiny_gguf).logits(ids)
    eng = Engine.from_gguf(tiny_gguf, cache_slots=3, miss_policy="fetch", prefetch=True, report=False)
    assert eng.provider._refs(eng.config.moe_layers[0]) is None  # the grouped path really runs
    assert torch.equal(eng.logits(ids), ref)
    st = eng.stats()
    assert st["fetched"] > 3 and eng.provider.cache.pinned_slots == 0


def test_fake_cost_model_decisions_in_stats(tiny_gguf) -> None:
    cfg_n = Engine.from_gguf(tiny_gguf).config.n_expert
    eng = Engine.from_gguf(tiny_gguf, cache_slots=2 * cfg_n, cost_model=GPU_LIKE, admit=False, report=False)
    ids = _ids(200, seed=9)  # 200 tokens x 4 of 16 experts: ~50 tokens per expert
    eng.prefill(ids[:160])
    st = eng.stats()
    assert st["fetched"] > 0 and st["cpu_misses"] == 0  # long prompt: fetch each expert once
    fetched = st["fetched"]
    eng.reset_stats()
    # Decode: the prompt left every expert resident, so all are hits; drop the cache contents by
    # using a fresh engine whose cache is empty to see CPU misses.
    cold = Engine.from_gguf(tiny_gguf, cache_slots=2 * cfg_n, cost_model=GPU_LIKE, admit=False, report=False)
    cold.prefill(ids[:1])
    for t in ids[1:5]:
        cold.decode(t)
    cs = cold.stats()
    assert cs["fetched"] == 0 and cs["cpu_misses"] > 0 and cs["bytes_loaded"] == 0
    for t in ids[160:163]:
        eng.decode(t)
    assert eng.stats()["cache_hits"] > 0 and eng.stats()["fetched"] == 0 and fetched > 0


def test_stats_add_up(tiny_gguf, tmp_path) -> None:
    path = tmp_path / "run.trace.npz"
    eng = Engine.from_gguf(tiny_gguf, cache_slots=6, miss_policy="fetch", prefetch=True, trace=str(path),
                           report=False)
    ids = _ids()
    eng.prefill(ids[:PROMPT])
    for t in ids[PROMPT:]:
        eng.decode(t)
    st = eng.stats()
    eng.close()
    tr = load_trace(path)
    cfg = eng.config
    n_steps = 2 + SEQ - PROMPT  # the prompt minus its last token, the last token alone, the decodes
    assert tr.n_records == n_steps * len(cfg.moe_layers)
    layer, expert = tr.accesses()
    rows = {r["layer"]: r for r in st["layers"]}
    assert sorted(rows) == list(cfg.moe_layers)
    eb = eng.provider.scheduler.expert_bytes
    for l in cfg.moe_layers:
        r = rows[l]
        assert r["hits"] + r["misses"] == int((layer == l).sum())  # one access per distinct expert
        assert r["misses"] == r["cpu_misses"] + r["fetched"]
        c = eng.provider.cache.stats(l)
        assert r["bytes_loaded"] == c["loads"] * eb[l]
        assert r["stall_seconds"] >= 0 and r["evictions"] >= 0 and r["prefetch_hits"] <= r["hits"] + r["fetched"]
    assert st["cache_hits"] == sum(r["hits"] for r in st["layers"])
    assert st["hit_rate"] == pytest.approx(st["cache_hits"] / (st["cache_hits"] + st["cache_misses"]))
    # the prefetcher's accuracy equals what the trace's recorded guesses give
    assert tr.pred_ids is not None
    got = want = 0
    for r in range(tr.n_records):
        p = tr.pred_ids[tr.start[r]]
        if (p >= 0).any():
            act = set(tr.ids[tr.start[r]:tr.start[r + 1]].reshape(-1).tolist())
            got += len(act & set(p[p >= 0].tolist()))
            want += len(act)
    assert want > 0 and st["prefetch_accuracy"] == pytest.approx(got / want)
    assert 0 <= st["prefetch_accuracy"] <= 1


def test_placement_rules_keep_experts_on_cpu(tiny_gguf, reference) -> None:
    lines: list[str] = []
    eng = Engine.from_gguf(tiny_gguf, cache_fraction=0.5, n_cpu_moe=2, miss_policy="fetch", report=lines.append)
    cfg = eng.config
    cpu_layers = [l for l in cfg.moe_layers if l < 2]
    assert cpu_layers and any("override rule" in s for s in lines) and any("slots" in s for s in lines)
    whole, steps = _run(eng, _ids())
    assert torch.equal(whole, reference[0]) and torch.equal(steps, reference[1])
    for r in eng.stats()["layers"]:
        if r["layer"] in cpu_layers:
            assert r["hits"] == 0 and r["fetched"] == 0 and r["bytes_loaded"] == 0 and r["cpu_misses"] > 0
    all_cpu = Engine.from_gguf(tiny_gguf, cache_slots=4, cpu_moe=True, report=False)
    all_cpu.logits(_ids(6))
    assert all_cpu.stats()["bytes_loaded"] == 0 and all_cpu.stats()["cache_hits"] == 0


def test_budget_sizes_the_cache(tiny_gguf) -> None:
    direct = Engine.from_gguf(tiny_gguf)
    assert "layers" not in direct.stats()
    eng = Engine.from_gguf(tiny_gguf, ram_budget="8GiB", report=False)  # the process RSS is part of it
    n_cacheable = len(eng.config.moe_layers) * eng.config.n_expert
    assert eng.provider.cache.capacity == n_cacheable == eng.experts.placement.n_cacheable


def test_bad_options_raise(tiny_gguf) -> None:
    with pytest.raises(ValueError):
        Engine.from_gguf(tiny_gguf, cache_slots=4, cache_fraction=0.5)
    with pytest.raises(ValueError):
        Engine.from_gguf(tiny_gguf, prefetch=True)
    with pytest.raises(ValueError):
        Engine.from_gguf(tiny_gguf, cache_fraction=0.0)
    with pytest.raises(ValueError):
        Engine.from_gguf(tiny_gguf, cache_slots=4, miss_policy="sometimes", report=False)
    with pytest.raises(ValueError):
        Engine.from_gguf(tiny_gguf, overrides=["no-equals-sign"])


def test_truncate_reuses_prefix(tiny_gguf) -> None:
    eng = Engine.from_gguf(tiny_gguf, cache_slots=8, report=False)
    ids = _ids()
    full = eng.prefill(ids, all_logits=True)
    eng.truncate(10)
    assert eng.n_past == 10
    again = eng.prefill(ids[10:], all_logits=True)
    torch.testing.assert_close(again, full[10:], rtol=0, atol=1e-5 * float(full.abs().max()))
    with pytest.raises(ValueError):
        eng.truncate(eng.n_past + 1)
    with pytest.raises(ValueError):
        eng.truncate(-1)


def test_random_weights_hit_rate_tracks_cache_fraction(tiny_gguf) -> None:
    """Random routing has little locality: an LRU filled on every miss hits roughly in proportion to its
    share of the experts (checked loosely: more slots never hit less here)."""
    rates = []
    for frac in (0.25, 1.0):
        eng = Engine.from_gguf(tiny_gguf, cache_fraction=frac, miss_policy="fetch", report=False)
        ids = _ids(40, seed=11)
        eng.prefill(ids[:1])
        for t in ids[1:]:
            eng.decode(t)
        rates.append(eng.stats()["hit_rate"])
    assert rates[1] > rates[0] and rates[1] > 0.8
    assert np.isfinite(rates).all()


def test_trace_with_direct_provider(tiny_gguf, tmp_path) -> None:
    path = tmp_path / "direct.trace.npz"
    with Engine.from_gguf(tiny_gguf, trace=str(path)) as eng:
        seen = []
        eng.model.set_observer(lambda l, p, i, w: (seen.append((l, i.clone())), eng.trace_writer.observer(l, p, i, w)))
        eng.prefill(_ids(5))
        eng.decode(7)
    tr = load_trace(path)
    # Steps: prompt[:-1], prompt[-1] (Engine.prefill runs the last token alone), one decode.
    assert tr.n_records == 3 * len(eng.config.moe_layers) == len(seen) and tr.pred_ids is None
    assert np.array_equal(tr.ids, np.concatenate([i.numpy() for _, i in seen]))
    assert list(tr.positions[-1:]) == [5]
