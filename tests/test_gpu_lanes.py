"""The hybrid MoE layer's lane split and cost model (kimi_runtime/gpu/lanes.py), on the CPU: the split
never costs more than the plain hits-on-GPU / misses-on-CPU assignment, lanes overlap (max, not sum),
and on small random layers the greedy split is within one expert's cost of the exhaustive optimum."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings, strategies as st

from kimi_runtime.gpu.lanes import (ExpertNeed, LaneRates, evaluate, needs_from_routing, serial_time,
                                    split_lanes)
from kimi_runtime.gpu.placement import GpuMemory, gpu_budget, kernel_workspace_bytes

MB = 1 << 20
# A K2-like box: CPU experts at ~40 GB/s effective, VRAM ~800 GB/s, PCIe 4 x16 pinned ~25 GB/s.
RATES = LaneRates.from_bandwidths(cpu_gbs=40, gpu_gbs=800, h2d_gbs=25)


def test_decode_hits_gpu_misses_cpu_overlap() -> None:
    needs = [ExpertNeed(e, 9 * MB, 1, resident=e < 3) for e in range(8)]
    slow_link = LaneRates.from_bandwidths(cpu_gbs=40, gpu_gbs=800, h2d_gbs=4)
    p = split_lanes(slow_link, needs)
    assert sorted(needs[i].key for i in p.gpu_hits) == [0, 1, 2]
    assert sorted(needs[i].key for i in p.cpu) == [3, 4, 5, 6, 7]  # a slow link: uploading never pays
    assert p.uploads == []
    assert p.total_s == pytest.approx(max(p.cpu_s, p.gpu_s))
    assert p.total_s < serial_time(slow_link, needs)  # the lanes run at the same time


def test_decode_uploads_some_misses_when_cpu_is_the_bottleneck() -> None:
    """Five 9 MB misses at 40 GB/s keep the CPU busy 1.2 ms while PCIe at 25 GB/s is idle: moving two
    of them over the copy engine balances the lanes."""
    needs = [ExpertNeed(e, 9 * MB, 1, resident=e < 3) for e in range(8)]
    p = split_lanes(RATES, needs)
    plain = evaluate(RATES, needs, [0, 1, 2], [], [3, 4, 5, 6, 7])
    assert 0 < len(p.uploads) < 5 and p.total_s < plain.total_s
    assert abs(p.cpu_s - p.gpu_s) < plain.cpu_s - plain.gpu_s


def test_prompt_uploads_popular_misses() -> None:
    """A prompt micro-batch: experts with many tokens are worth uploading once and computing on the GPU."""
    needs = [ExpertNeed(e, 9 * MB, n, resident=False) for e, n in enumerate([200, 150, 3, 2, 1, 90])]
    p = split_lanes(RATES, needs)
    up = {needs[i].key for i in p.uploads}
    assert {0, 1} <= up and 4 not in up
    assert p.total_s < evaluate(RATES, needs, [], [], list(range(len(needs)))).total_s


def test_gpu_bottleneck_moves_hits_to_cpu() -> None:
    slow_gpu = LaneRates.from_bandwidths(cpu_gbs=40, gpu_gbs=30, h2d_gbs=25)
    needs = [ExpertNeed(e, 9 * MB, 1, resident=True) for e in range(8)]
    p = split_lanes(slow_gpu, needs)
    assert p.cpu and p.gpu_hits  # both lanes busy
    assert p.total_s < evaluate(slow_gpu, needs, list(range(8)), [], []).total_s


def test_max_uploads_respected() -> None:
    needs = [ExpertNeed(e, 9 * MB, 300, resident=False) for e in range(6)]
    assert len(split_lanes(RATES, needs, max_uploads=2).uploads) <= 2
    assert split_lanes(RATES, needs, allow_upload=False).uploads == []


def brute_force(r: LaneRates, needs) -> float:
    best = float("inf")
    for lanes in itertools.product(range(3), repeat=len(needs)):  # 0 gpu(hit), 1 upload, 2 cpu
        if any(l == 0 and not n.resident for l, n in zip(lanes, needs)):
            continue
        if any(l == 1 and n.resident for l, n in zip(lanes, needs)):
            continue
        g = [i for i, l in enumerate(lanes) if l == 0]
        u = [i for i, l in enumerate(lanes) if l == 1]
        c = [i for i, l in enumerate(lanes) if l == 2]
        best = min(best, evaluate(r, needs, g, u, c).total_s)
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20), st.integers(1, 64), st.booleans()), min_size=1, max_size=6),
       st.sampled_from([(40, 800, 25), (60, 300, 12), (20, 2000, 50), (40, 40, 25)]))
def test_greedy_near_optimal(items, bws) -> None:
    r = LaneRates.from_bandwidths(*bws)
    needs = [ExpertNeed(i, mb * MB, n, res) for i, (mb, n, res) in enumerate(items)]
    p = split_lanes(r, needs)
    base = serial_time(r, needs)
    plain = evaluate(r, needs, [i for i, n in enumerate(needs) if n.resident], [],
                     [i for i, n in enumerate(needs) if not n.resident]).total_s
    assert p.total_s <= plain + 1e-12 and p.total_s <= base + 1e-12
    opt = brute_force(r, needs)
    worst_one = max(max(n.nbytes * (r.cpu_stream + n.n_tok * r.cpu_token), n.nbytes * r.h2d) for n in needs)
    assert opt - 1e-12 <= p.total_s <= opt + worst_one + r.gpu_launch


def test_needs_from_routing_counts_tokens_once_per_expert() -> None:
    ids = [[3, 1, -1], [1, 5, 3]]
    needs = needs_from_routing(ids, [10] * 8, [e == 1 for e in range(8)])
    assert [(n.key, n.n_tok, n.resident) for n in needs] == [(1, 2, True), (3, 2, False), (5, 1, False)]


def test_gpu_budget_reserves_context_and_workspace() -> None:
    mem = GpuMemory(total=24 << 30, free=23 << 30)
    b = gpu_budget(mem, ctx=8192, limit=20 << 30)
    assert b.gpu_bytes == 20 << 30
    assert b.gpu_reserve > kernel_workspace_bytes(7168, 2048, 8, 512) > 0
    assert gpu_budget(GpuMemory(24 << 30, 1 << 30)).gpu_bytes == 1 << 30


def test_require_cuda_message_without_gpu() -> None:
    from kimi_runtime.gpu import GpuUnavailable, cuda_status, require_cuda

    if not cuda_status():
        pytest.skip("a usable GPU is present")
    with pytest.raises(GpuUnavailable, match="none is usable"):
        require_cuda()


def test_cuda_backend_refuses_without_gpu() -> None:
    """No silent host fallback: the CUDA backend on a machine without a usable GPU is an error."""
    from kimi_runtime.gpu import GpuUnavailable, cuda_status
    from kimi_runtime.gpu.backend import CudaBackend

    if not cuda_status():
        pytest.skip("a usable GPU is present")
    with pytest.raises(GpuUnavailable):
        CudaBackend()


def test_plan_gpu_kimi_on_a_24gb_card() -> None:
    """Kimi K2 (Q2_K experts) on a 24 GiB card: every non-expert tensor and the KV cache in VRAM, the
    context + workspace reserved, the remaining VRAM as whole expert slots; too small a card is an error."""
    import gguf

    from kimi_runtime.experts.placement import Footprint, PlacementError, kv_cache_bytes, workspace_bytes
    from kimi_runtime.gpu.placement import plan_gpu
    from kimi_runtime.known_models import KNOWN_MODELS, uniform_recipe

    fp = Footprint.from_config(KNOWN_MODELS["kimi-k2"], uniform_recipe(gguf.GGMLQuantizationType.Q2_K))
    mem = GpuMemory(total=24 << 30, free=23 << 30)
    p = plan_gpu(fp, mem, ctx=8192)
    assert p.tier == "gpu"
    assert all(d == "gpu" for n, d in p.devices.items() if not any(r in n for r in ("_exps",)))
    b = gpu_budget(mem, ctx=8192, n_embd=7168, n_ff=2048, k=8)
    free = mem.free - (fp.non_expert_bytes + kv_cache_bytes(fp.config, 8192) + workspace_bytes(fp.config, 512)
                       + b.gpu_reserve)
    assert p.n_slots == free // fp.max_expert_bytes > 0
    with pytest.raises(PlacementError):
        plan_gpu(fp, GpuMemory(8 << 30, 8 << 30))
