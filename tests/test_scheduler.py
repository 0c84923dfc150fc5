"""The hybrid scheduler's decisions under hand-set cost models (CPU for one token, fetch for long
prompts, slot limits, placement), the measured cost model, and the next-layer prefetcher's scoring."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kimi_runtime.experts.prefetch import NextLayerPrefetcher
from kimi_runtime.experts.scheduler import CostModel, ExpertScheduler, measure_cost_model

EB = 1_000_000  # bytes of one expert in the fake layers

# A GPU-like fake: the CPU streams the file at 50 GB/s, each extra token adds 1/8 of that; a fetch moves
# the bytes at 25 GB/s (PCIe) and the device is fast. Break-even (1/25 + 1/1000 - 1/50) / (1/400 - 1/20000)
# = 8.57 tokens per expert.
GPU_LIKE = CostModel(cpu_stream=1 / 50e9, cpu_token=1 / 400e9, load=1 / 25e9, dev_stream=1 / 1000e9,
                     dev_token=1 / 20000e9)


def _sched(cost: CostModel = GPU_LIKE, **kw) -> ExpertScheduler:
    return ExpertScheduler(cost, {0: EB, 1: EB, 2: EB}, **kw)


def test_one_token_goes_to_cpu_long_prompt_fetches() -> None:
    s = _sched(admit=False)
    be = GPU_LIKE.breakeven_tokens()
    assert be == pytest.approx(8.571, abs=1e-3)
    decode = s.plan(1, {3: 1, 7: 1, 9: 1}, lambda e: e == 9, room=8)
    assert decode.hits == [9] and decode.cpu == [3, 7] and decode.fetch == []
    prompt = s.plan(1, {3: 64, 7: 100, 9: 80}, lambda e: False, room=8)
    assert prompt.fetch == [3, 7, 9] and prompt.cpu == []
    # the decision flips exactly at the break-even batch
    n_lo, n_hi = math.floor(be), math.floor(be) + 1
    edge = s.plan(2, {0: n_lo, 1: n_hi}, lambda e: False, room=8)
    assert edge.cpu == [0] and edge.fetch == [1]
    st = s.stats(1)
    assert (st["hits"], st["cpu_misses"], st["fetched"]) == (1, 2, 3)
    assert s.stats(2)["cpu_misses"] == 1 and s.stats(2)["fetched"] == 1
    want = GPU_LIKE.cpu_seconds(EB, 1) * 2 + sum(GPU_LIKE.fetch_seconds(EB, n) for n in (64, 100, 80))
    assert st["est_seconds"] == pytest.approx(want)
    s.reset_stats()
    assert s.stats(1)["fetched"] == 0


def test_fetches_beyond_room_fall_back_to_cpu_biggest_saving_first() -> None:
    s = _sched(admit=False)
    p = s.plan(0, {1: 50, 2: 400, 3: 200, 4: 1}, lambda e: False, room=2)
    assert p.fetch == [2, 3]  # the two largest batches save the most
    assert p.cpu == [1, 4]
    assert s.plan(0, {1: 500}, lambda e: False, room=0).cpu == [1]


def test_miss_policies_placement_and_admission() -> None:
    cpu = _sched(miss_policy="cpu", admit=True)
    p = cpu.plan(0, {1: 500, 2: 1}, lambda e: False, room=8)
    assert p.cpu == [1, 2] and p.fetch == [] and p.admit == []  # "cpu" never fills slots
    fetch = _sched(miss_policy="fetch")
    assert fetch.plan(0, {1: 1, 2: 1}, lambda e: e == 2, room=8).fetch == [1]
    placed = _sched(cpu_layers=[2])
    p = placed.plan(2, {1: 500, 2: 1}, lambda e: True, room=8)  # resident or not: layer 2 is CPU-only
    assert p.cpu == [1, 2] and p.hits == [] and not placed.cached(2) and placed.cached(1)
    with pytest.raises(ValueError):
        _sched(miss_policy="gpu")
    with pytest.raises(ValueError):
        _sched(admit="sometimes")


def test_admission_follows_whether_hits_pay() -> None:
    assert GPU_LIKE.hit_pays()
    s = _sched(admit="auto")
    assert s.plan(0, {5: 1}, lambda e: False, room=8).admit == [5]
    host = CostModel(cpu_stream=1e-10, cpu_token=1e-12, load=5e-11, dev_stream=1e-10, dev_token=1e-12)
    assert not host.hit_pays() and host.breakeven_tokens() == float("inf")
    assert ExpertScheduler(host, {0: EB}).plan(0, {5: 1}, lambda e: False, room=8).admit == []
    assert ExpertScheduler(host, {0: EB}).plan(0, {5: 10_000}, lambda e: False, room=8).cpu == [5]


def test_measured_cost_model_is_positive_and_cached(tiny_gguf) -> None:
    from kimi_runtime.model.moe import DirectExpertProvider
    from kimi_runtime.model.weights import GGUFSource

    src = GGUFSource(tiny_gguf)
    d = DirectExpertProvider(src)
    m = d.expert(src.config.moe_layers[0], 0)
    views = [[q.raw for q in (x.gate, x.up, x.down)]
             for x in (d.expert(src.config.moe_layers[0], e) for e in range(4))]
    qts = (m.gate.qtype, m.up.qtype, m.down.qtype)
    key = ("test-measure", tiny_gguf)
    cm = measure_cost_model(views, qts, src.config.n_ff_exp, src.config.n_embd, key=key)
    assert cm.source == "measured"
    for v in (cm.cpu_stream, cm.load, cm.dev_stream):
        assert 0 < v < 1e-6  # faster than 1 MB/s, finite
    assert cm.cpu_token >= 0 and cm.dev_token >= 0
    assert measure_cost_model(views, qts, src.config.n_ff_exp, src.config.n_embd, key=key) is cm
    d = cm.as_dict()
    assert d["cpu_gbs"] > 0 and d["dev_gbs"] > 0 and d["load_gbs"] > 0


def test_prefetcher_predicts_with_next_router_and_scores(tiny_gguf) -> None:
    from kimi_runtime.model.moe import Router
    from kimi_runtime.model.weights import GGUFSource

    src = GGUFSource(tiny_gguf)
    cfg = src.config
    layers = list(cfg.moe_layers)
    assert len(layers) >= 2
    pf = NextLayerPrefetcher(src, layers, max_tokens=4)
    x = torch.randn(2, cfg.n_embd, generator=torch.Generator().manual_seed(1))
    nxt, pred = pf.predict(layers[0], x)
    bias_name = f"blk.{nxt}.exp_probs_b.bias"
    bias = src.dense(bias_name, (cfg.n_expert,)) if src.has(bias_name) else None
    router = Router(cfg, src.dense(f"blk.{nxt}.ffn_gate_inp.weight", (cfg.n_expert, cfg.n_embd)), bias)
    assert nxt == layers[1] and pred == sorted(set(router(x)[0].reshape(-1).tolist()))
    assert pf.pending(nxt) == frozenset(pred)
    actual = pred[:2] + [e for e in range(cfg.n_expert) if e not in pred][:2]
    pf.score(nxt, actual)
    st = pf.stats()
    assert st["prefetch_accuracy"] == pytest.approx(2 / 4)
    assert st["prefetch_precision"] == pytest.approx(2 / len(pred))
    assert pf.pending(nxt) == frozenset()
    pf.score(nxt, actual)  # nothing pending: no change
    assert pf.stats()["prefetch_accuracy"] == pytest.approx(0.5)
    assert pf.predict(layers[-1], x) is None  # no next MoE layer
    assert pf.predict(layers[0], torch.randn(5, cfg.n_embd)) is None  # above max_tokens
    pf.reset_stats()
    assert pf.stats()["prefetch_predictions"] == 0


def test_breakeven_edge_cases() -> None:
    free_fetch = CostModel(cpu_stream=1e-9, cpu_token=1e-12, load=0.0, dev_stream=1e-10, dev_token=1e-13)
    assert free_fetch.breakeven_tokens() == 0.0
    assert np.isfinite(GPU_LIKE.as_dict()["breakeven_tokens"])


def test_disk_read_rate_is_measured_cold(tmp_path) -> None:
    from kimi_runtime.experts.scheduler import measure_disk_read

    path = tmp_path / "blob.bin"
    np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8).tofile(path)
    ranges = [(str(path), off, 300_000) for off in range(17, 8 << 20, 1 << 20) if off + 300_000 < 8 << 20]
    r = measure_disk_read(ranges, n_readers=3, key=("blob", 3))
    from kimi_runtime.experts.tiers import o_direct_supported as odirect_works

    assert r["direct"] == odirect_works(path)  # O_DIRECT where the file system has it: no page cache
    assert r["n_ranges"] == len(ranges) and r["bytes"] >= sum(n for _, _, n in ranges)
    assert r["bytes"] % 4096 == 0 and r["bytes_per_s"] > 0 and r["seconds"] > 0
    assert measure_disk_read(ranges, key=("blob", 3)) is r  # cached per process
    with pytest.raises(ValueError, match="no ranges"):
        measure_disk_read([])


def test_disk_model_predicts_tok_s_larger_than_ram() -> None:
    from kimi_runtime.experts.disk_model import compute_bps_from_run, predict_disk_decode
    from kimi_runtime.experts.placement import Footprint, PlacementError
    from kimi_runtime.synth import plan_tensors, preset_config

    cfg = preset_config("medium")
    import gguf

    types = {p.spec.name: gguf.GGMLQuantizationType(int(p.spec.ggml_type)) for p in plan_tensors(cfg, "default")}
    fp = Footprint.from_config(cfg, lambda name, ne: types[name])
    assert fp.expert_bytes_total > 1 << 30
    fit = fp.non_expert_bytes + (512 << 20) + (256 << 20)
    small = predict_disk_decode(fp, fit, 400e6, compute_bps=20e9)
    big = predict_disk_decode(fp, fit + fp.expert_bytes_total // 2, 400e6, compute_bps=20e9)
    assert 0 < small.slots < big.slots < small.n_cacheable
    assert small.hit_rate < big.hit_rate < 1 and small.tok_per_s < big.tok_per_s
    assert small.bound == "disk" and small.tok_per_s == pytest.approx(1 / small.disk_seconds)
    assert small.tok_per_s_serial < small.tok_per_s  # overlap is worth something
    # Every expert missed: a token reads top-k experts of every MoE layer from disk.
    none = predict_disk_decode(fp, fit, 400e6, compute_bps=20e9, hit_rate=0.0)
    per_tok = cfg.n_expert_used * sum(fp.expert_bytes(l) + 3 * 4096 for l in fp.moe_layers)
    assert none.disk_bytes_per_token == per_tok
    fast = predict_disk_decode(fp, fit, 1e12, compute_bps=1e9)
    assert fast.bound == "compute"
    assert compute_bps_from_run(fp, 2.0) == 2.0 * (fp.non_expert_bytes_per_token() + fp.expert_bytes_per_token)
    with pytest.raises(PlacementError):
        predict_disk_decode(fp, 100 << 20, 400e6, compute_bps=20e9)


def test_cold_read_rate_of_a_model(tiny_gguf) -> None:
    from kimi_runtime.experts.disk_model import cold_read_rate
    from kimi_runtime.model.weights import GGUFSource

    from kimi_runtime.experts.tiers import o_direct_supported as odirect_works

    r = cold_read_rate(GGUFSource(tiny_gguf).model, n_readers=2, n_ranges=4, range_bytes=64 << 10)
    assert r["n_ranges"] == 4 and r["bytes_per_s"] > 0 and r["direct"] == odirect_works(tiny_gguf)
