"""The RAM tier in the engine: a budget far below the experts picks the disk tier (O_DIRECT reads,
every expert from a slot), logits match the direct provider and repeat exactly, per-tier statistics,
the budget error before any allocation, mlock, and peak RSS inside the budget (in a subprocess)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from kimi_runtime.engine import Engine
from kimi_runtime.experts.placement import PlacementError

from kimi_runtime.experts.tiers import o_direct_supported as odirect_works

IDS = [1, 5, 9, 33, 100, 7, 8, 2, 44, 11]


@pytest.fixture(scope="module")
def small_gguf(synth_model):
    return synth_model("small").gguf


@pytest.fixture(scope="module")
def wide_gguf(tmp_path_factory):
    """The small preset with 96 experts per layer: experts ~80% of the file, as in real MoE files."""
    from kimi_runtime.synth import preset_config, write_synthetic

    path = tmp_path_factory.mktemp("wide") / "wide.gguf"
    return str(write_synthetic(preset_config("small", n_expert=96), path, progress=False))


def _run(eng, steps=(3, 4, 5, 6, 7, 8)):
    out = [eng.prefill(IDS)]
    out += [eng.decode(t) for t in steps]
    return torch.stack(out)


def test_disk_tier_logits_and_tier_stats(small_gguf):
    ref = _run(Engine.from_gguf(small_gguf, report=False, native=False))  # the disk tier runs the Python layers
    lines = []
    # Enough slots that the prompt's experts fit at once: every expert from its slot in one fused call,
    # the direct provider's result exactly.
    eng = Engine.from_gguf(small_gguf, cache_slots=64, expert_reads="direct", prefetch=True, report=lines.append)
    assert any(line.startswith("disk tier: direct reads") for line in lines)
    assert eng.provider.slots_only and eng.provider.cache.n_readers == 4
    assert torch.allclose(_run(eng), ref, atol=1e-5, rtol=0)
    # With 10 slots the 9-token prompt needs more experts than half the slots and runs in windows:
    # another summation order, which random routers' near-ties can amplify, so it is compared with
    # itself: the same logits whatever the timing of the readers.
    got = _run(Engine.from_gguf(small_gguf, cache_slots=10, expert_reads="direct", prefetch=True, report=False))
    again = Engine.from_gguf(small_gguf, cache_slots=10, expert_reads="direct", prefetch=True, report=False)
    assert torch.equal(_run(again), got)  # whatever the timing of the readers
    st = again.stats()
    ram, disk = st["tiers"]["ram"], st["tiers"]["disk"]
    for tier in (ram, disk):
        assert {"hits", "misses", "bytes", "stall_seconds"} <= tier.keys()
    assert ram["hits"] + ram["misses"] > 0 and ram["slots"] == 10
    assert disk["mode"] == "direct" and disk["direct"] == odirect_works(small_gguf) and disk["read_errors"] == 0
    # every load is one read of the file; wrong guesses still queued when their layer came are dropped
    assert disk["hits"] == ram["misses"] + ram["prefetches"] - ram["prefetch_cancelled"]
    assert disk["bytes"] >= ram["bytes"] > 0
    assert st["cache_misses"] == st["fetched"] and st["cpu_misses"] == 0  # nothing paged in from the map
    assert st["cost_model"]["source"].endswith("+disk")
    eng.reset_stats()
    assert eng.stats()["tiers"]["disk"]["bytes"] == 0


def test_ram_budget_picks_the_disk_tier(small_gguf):
    from kimi_runtime.experts.placement import Footprint
    from kimi_runtime.experts.tiers import rss_bytes

    probe = Engine.from_gguf(small_gguf, report=False)
    fp = Footprint.from_gguf(probe.src.model)
    # Room for about a fifth of the experts besides what the process already holds.
    budget = rss_bytes() + fp.non_expert_bytes + (96 << 20) + fp.expert_bytes_total // 5
    lines = []
    eng = Engine.from_gguf(small_gguf, ram_budget=budget, report=lines.append)
    cache = eng.provider.cache
    assert cache.store.mode == "direct" and 0 < cache.capacity < eng.experts.placement.n_cacheable
    assert cache.capacity * cache.pool.slot_bytes <= budget
    assert any(line.startswith("RAM budget") for line in lines)
    _run(eng, steps=(3, 4))
    assert eng.stats()["tiers"]["ram"]["budget_bytes"] == budget


def test_budget_below_resident_part_is_a_clear_error(small_gguf):
    with pytest.raises(PlacementError, match="--ram-budget .* too small: the non-expert weights"):
        Engine.from_gguf(small_gguf, ram_budget="64MiB", report=False)


def test_mlock_locks_the_non_expert_weights(small_gguf):
    lines = []
    eng = Engine.from_gguf(small_gguf, cache_slots=8, mlock=True, report=lines.append)
    assert any(line.startswith("mlock:") for line in lines)
    assert eng.stats()["tiers"]["ram"]["locked_bytes"] > 0


def test_read_error_in_decode_is_clear(small_gguf):
    eng = Engine.from_gguf(small_gguf, cache_slots=6, expert_reads="direct", report=False)
    eng.prefill(IDS)
    eng.provider.cache.store.inject_fault("eio", skip=0, count=10**6)
    with pytest.raises(RuntimeError, match="load failed: ExpertStore: (direct )?read of .* Input/output error"):
        for t in range(20):  # some step misses
            eng.decode(t + 3)
    eng.provider.cache.store.inject_fault("none")
    assert eng.provider.cache.pinned_slots == 0
    eng.reset()
    assert torch.equal(_run(eng)[-1], _run(Engine.from_gguf(small_gguf, cache_slots=6, expert_reads="direct",
                                                            report=False))[-1])


_RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    from kimi_runtime.engine import Engine
    from kimi_runtime.experts.placement import Footprint
    from kimi_runtime.experts.tiers import peak_rss_bytes, reset_peak_rss, rss_bytes
    from kimi_runtime.model.weights import GGUFSource

    path = sys.argv[1]
    fp = Footprint.from_gguf(GGUFSource(path).model)
    base = rss_bytes()
    budget = base + fp.non_expert_bytes + (64 << 20) + fp.expert_bytes_total // 4
    reset_peak_rss()
    eng = Engine.from_gguf(path, ram_budget=budget, report=False, n_ctx=256)
    eng.prefill(list(range(1, 40)))
    for t in range(24):
        eng.decode(t + 3)
    print(json.dumps({"budget": budget, "peak": peak_rss_bytes(), "base": base,
                      "experts": fp.expert_bytes_total, "slots": eng.provider.cache.capacity,
                      "mode": eng.provider.cache.store.mode}))
""")


def test_peak_rss_stays_inside_the_budget(wide_gguf):
    """The budget is a quarter of the experts (plus the resident part and the runtime): were the
    experts paged in through the mapping, RSS would pass it by three quarters of the experts."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    r = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, wide_gguf], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["mode"] == "direct" and res["slots"] > 0
    assert res["peak"] <= res["budget"], res
    assert res["budget"] - res["base"] < res["experts"]  # the test means something: experts > budget


def test_prompt_reads_each_expert_once_and_trace_has_tiers(small_gguf, tmp_path):
    from kimi_runtime.experts.trace import load_trace

    trace = tmp_path / "t.npz"
    eng = Engine.from_gguf(small_gguf, cache_slots=6, expert_reads="direct", report=False, trace=str(trace))
    eng.prefill(IDS)  # 9 tokens in one batch (windows of 3 slots), then the last alone
    p = eng.provider
    for layer in eng.config.moe_layers:
        c, s = p.cache.stats(layer), p.scheduler.stats(layer)
        assert s["cpu_misses"] == 0
        # one read per expert missed in a batch (the next window's are prefetched while one computes)
        assert c["loads"] == s["fetched"] == c["misses"] + c["prefetches"] and c["prefetch_cancelled"] == 0
    st = eng.stats()["tiers"]
    assert st["disk"]["reads"] == 3 * st["disk"]["hits"]  # gate, up, down: one pread each
    eng.decode(3)
    eng.close()
    meta = load_trace(trace).meta
    assert meta["tiers"]["ram"]["slots"] == 6 and meta["tiers"]["disk"]["mode"] == "direct"


def test_decode_prefetch_overlaps(small_gguf):
    eng = Engine.from_gguf(small_gguf, cache_slots=12, expert_reads="direct", prefetch=True, report=False)
    _run(eng, steps=tuple(range(3, 15)))
    ram = eng.stats()["tiers"]["ram"]
    assert ram["prefetches"] > 0 and ram["prefetch_hits"] > 0  # guessed experts read during compute
