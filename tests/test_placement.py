"""Placement, auto-fit and the roofline, checked against Kimi K2 figures worked out by hand."""
import gguf
import pytest

from kimi_runtime.experts.placement import (Bandwidths, Budget, Footprint, PlacementError, auto_fit,
                                            assign_devices, moe_rules, parse_override, parse_size, predict)
from kimi_runtime.known_models import KNOWN_MODELS, uniform_recipe

Q = gguf.GGMLQuantizationType


def kimi(expert_type=Q.Q2_K):
    return Footprint.from_config(KNOWN_MODELS["kimi-k2"], uniform_recipe(expert_type))


def test_kimi_expert_bytes_by_hand():
    # gate/up: 2048 rows x 7168 cols; down: 7168 x 2048 -> 3 x 14,680,064 weights.
    # Q2_K: 84 bytes per 256 weights -> 3 * 14,680,064 / 256 * 84 = 14,450,688 B (REFERENCE.md 4).
    fp = kimi(Q.Q2_K)
    assert fp.moe_layers == list(range(1, 61))
    assert fp.expert_bytes(1) == 14_450_688
    # 8 experts x 60 MoE layers per token.
    assert fp.expert_bytes_per_token == 8 * 60 * 14_450_688
    # IQ1_S: 50 bytes per 256 weights -> 8,601,600 B.
    assert kimi(Q.IQ1_S).expert_bytes(60) == 8_601_600
    # 384 experts x 60 layers of routed weights = 1014.69 B parameters (REFERENCE.md 4).
    n_params = fp.expert_bytes_total / 84 * 256
    assert abs(n_params - 1014.69e9) < 0.01e9


def test_kimi_non_expert_parameters():
    fp = Footprint.from_config(KNOWN_MODELS["kimi-k2"], lambda name, ne: Q.F32)
    non_expert_params = fp.non_expert_bytes // 4
    assert non_expert_params == 11_722_208_768  # REFERENCE.md 4, computed independently


def test_override_rules_first_match_wins():
    fp = kimi()
    rules = [parse_override(r"blk\.1\.ffn_.*_exps=gpu"), parse_override(r"ffn_.*_exps=cpu")]
    dev = assign_devices(fp, rules, has_gpu=True)
    assert dev["blk.1.ffn_up_exps.weight"] == "gpu"
    assert dev["blk.2.ffn_up_exps.weight"] == "cpu"
    assert dev["blk.2.attn_output.weight"] == "gpu"
    assert assign_devices(fp, [], has_gpu=False)["blk.2.attn_output.weight"] == "cpu"
    assert assign_devices(fp, [], has_gpu=True)["blk.5.ffn_down_exps.weight"] == "cache"


def test_n_cpu_moe_rules():
    cfg = KNOWN_MODELS["kimi-k2"]
    dev = assign_devices(kimi(), moe_rules(cfg, n_cpu_moe=3), has_gpu=True)
    assert dev["blk.2.ffn_gate_exps.weight"] == "cpu"
    assert dev["blk.3.ffn_gate_exps.weight"] == "cache"
    assert dev["blk.12.ffn_gate_exps.weight"] == "cache"  # ^blk\.1\. must not match blk.12
    all_cpu = assign_devices(kimi(), moe_rules(cfg, cpu_moe=True), has_gpu=True)
    assert {d for n, d in all_cpu.items() if "_exps" in n} == {"cpu"}


@pytest.mark.parametrize("bad", ["noequals", "x=tpu", "([=gpu"])
def test_bad_override(bad):
    with pytest.raises(ValueError):
        parse_override(bad)


def test_parse_size():
    assert parse_size("24GiB") == 24 << 30
    assert parse_size("24G") == 24 << 30
    assert parse_size("256GB") == 256 * 10**9
    assert parse_size("0") == 0
    with pytest.raises(ValueError):
        parse_size("lots")


def test_auto_fit_slots_fill_the_rest():
    fp = kimi()
    b = Budget(gpu_bytes=24 << 30, ram_bytes=256 << 30, ctx=32768)
    p = auto_fit(fp, b)
    kv = 32768 * 61 * 576 * 2  # 2.14 GiB of f16 latent cache
    assert p.kv_bytes == kv
    used = p.gpu_resident + p.kv_bytes + p.workspace + b.gpu_reserve
    assert p.n_slots == (b.gpu_bytes - used) // 14_450_688
    assert used + p.n_slots * p.slot_bytes <= b.gpu_bytes


def test_auto_fit_fails_early_with_plan():
    with pytest.raises(PlacementError, match="non-expert part does not fit"):
        auto_fit(kimi(), Budget(gpu_bytes=8 << 30, ctx=32768))


def test_roofline_by_hand():
    fp = kimi()
    p = auto_fit(fp, Budget(gpu_bytes=24 << 30, ram_bytes=1 << 40, ctx=4096))
    bw = Bandwidths(vram=1000e9, pcie=25e9, ram=70e9, nvme=6e9)
    all_hit = predict(fp, p, bw, 1.0)
    per_tok = 8 * 60 * 14_450_688
    assert all_hit.ram_bytes == 0 and all_hit.pcie_bytes == 0
    assert all_hit.gpu_bytes == fp.non_expert_bytes_per_token() + per_tok
    assert all_hit.tok_per_s == pytest.approx(1000e9 / all_hit.gpu_bytes)
    all_miss = predict(fp, p, bw, 0.0)
    # A miss costs 1/70e9 s per byte on the CPU vs 1/25e9 + 1/1000e9 fetched: the CPU wins.
    assert all_miss.miss_path == "cpu" and all_miss.ram_bytes == per_tok
    t = fp.non_expert_bytes_per_token() / 1000e9 + per_tok / 70e9
    assert all_miss.tok_per_s == pytest.approx(1 / t)
    # Hit rates only help.
    rates = [predict(fp, p, bw, h).tok_per_s for h in (0, 0.5, 0.9, 1.0)]
    assert rates == sorted(rates)


def test_parse_size_bare_numbers_are_gib():
    assert parse_size("24") == 24 << 30
    assert parse_size("0.5") == 512 << 20
    assert parse_size("4096B") == 4096 and parse_size("1000000b") == 1_000_000
    with pytest.raises(ValueError, match="no unit"):
        parse_size("1000000")  # bytes or GiB? refused rather than guessed


def _k2(recipe="UD-TQ1_0"):
    from kimi_runtime.known_models import RECIPES

    cfg = KNOWN_MODELS["kimi-k2"]
    return Footprint.from_config(cfg, RECIPES[recipe].type_for(cfg))


def test_cpu_moe_experts_are_not_subtracted_from_their_own_ram():
    # UD-TQ1_0 (241 GB) with 24 GiB + 256 GiB: every routed expert fits in the page cache.
    fp = _k2()
    cfg = fp.config
    b = Budget(gpu_bytes=24 << 30, ram_bytes=256 << 30, ctx=32768)
    for rules in (moe_rules(cfg, cpu_moe=True), [parse_override("exps=CPU")]):
        p = auto_fit(fp, b, rules)
        assert p.cpu_expert_bytes == fp.expert_bytes_total and p.cpu_resident == 0
        assert p.spill_fraction == 0.0
        pr = predict(fp, p, Bandwidths(), 0.0, b.ram_bytes)
        assert pr.disk_bytes == 0
        t = fp.non_expert_bytes_per_token() / 1000e9 + fp.expert_bytes_per_token / 70e9
        assert pr.tok_per_s == pytest.approx(1 / t, rel=1e-6)
    # With 128 GiB only part of them fits: the rest comes from disk, in proportion.
    p = auto_fit(fp, Budget(gpu_bytes=24 << 30, ram_bytes=128 << 30, ctx=32768), moe_rules(cfg, cpu_moe=True))
    spill = 1 - (128 << 30) / fp.expert_bytes_total
    assert p.spill_fraction == pytest.approx(spill)
    pr = predict(fp, p, Bandwidths(), 0.0, 128 << 30)
    assert pr.disk_bytes == pytest.approx(spill * fp.expert_bytes_per_token, rel=1e-6)


def test_cpu_moe_without_gpu_does_not_need_ram_for_a_fixed_copy():
    # Experts stay in the mmapped file: a RAM budget below their size is slower, not a failure.
    fp = _k2()
    p = auto_fit(fp, Budget(gpu_bytes=0, ram_bytes=64 << 30, ctx=4096), moe_rules(fp.config, cpu_moe=True))
    assert p.tier == "host" and 0 < p.spill_fraction < 1


def test_cuda_reserve_comes_out_of_vram():
    from kimi_runtime.experts.placement import CUDA_RESERVE

    fp = _k2("UD-Q2_K_XL")
    b = Budget(gpu_bytes=24 << 30, ram_bytes=256 << 30, ctx=32768)
    p = auto_fit(fp, b)
    assert p.gpu_reserve == CUDA_RESERVE == b.gpu_reserve > 0
    assert p.vram_used <= b.gpu_bytes < p.vram_used + p.slot_bytes
    assert "CUDA context" in p.summary()
    assert auto_fit(fp, Budget(gpu_bytes=0, ram_bytes=1 << 40)).gpu_reserve == 0  # no GPU, no CUDA


def test_kernel_efficiency_by_format_by_hand():
    fp = kimi()  # Q2_K experts
    p = auto_fit(fp, Budget(gpu_bytes=24 << 30, ram_bytes=1 << 40, ctx=4096))
    bw = Bandwidths(vram=1000e9, pcie=25e9, ram=70e9, nvme=6e9)
    per_tok = 8 * 60 * 14_450_688
    slow = predict(fp, p, bw, 0.0, cpu_efficiency=lambda t: 0.5 if t == "Q2_K" else 1.0)
    # Q2_K misses now stream at 35 GB/s: still faster than a 25 GB/s PCIe fetch.
    assert slow.miss_path == "cpu"
    assert slow.cpu_seconds == pytest.approx(per_tok / 35e9)
    assert slow.tok_per_s == pytest.approx(1 / (fp.non_expert_bytes_per_token() / 1000e9 + per_tok / 35e9))
    slower = predict(fp, p, bw, 0.0, cpu_efficiency=lambda t: 0.2)
    assert slower.miss_path == "fetch"  # 14 GB/s on the CPU: fetching over PCIe wins
