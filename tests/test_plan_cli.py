"""`kimi-runtime plan` end to end: --cpu-moe on Kimi K2 is not disk-bound, the CUDA reserve, hit rates
marked unreachable, sizes in GiB by default, run's flag names, measured kernel rates (cached)."""
from __future__ import annotations

import json

import pytest

from kimi_runtime.cli import main

K2_TQ1 = ["plan", "--known", "kimi-k2", "--recipe", "UD-TQ1_0", "--gpu-budget", "24", "--ram-budget", "256"]


def _plan(capsys: pytest.CaptureFixture, argv: list[str]) -> dict:
    rc = main([*argv, "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def test_cpu_moe_on_k2_is_memory_bound_not_disk_bound(capsys: pytest.CaptureFixture) -> None:
    a = _plan(capsys, [*K2_TQ1, "--cpu-moe", "--no-kernel-measure"])
    b = _plan(capsys, [*K2_TQ1, "-ot", "exps=CPU", "--no-kernel-measure"])
    for f in (a, b):
        assert f["placement"]["spill_fraction"] == 0
        assert [p["disk_bytes"] for p in f["predictions"]] == [0]  # one row: no cache, no hit rates
        assert f["predictions"][0]["tok_per_s"] > 10  # 7.2 GB from VRAM + 4.9 GB from RAM per token
    assert a["predictions"] == b["predictions"]


def test_vram_reserve_and_unreachable_rows(capsys: pytest.CaptureFixture) -> None:
    f = _plan(capsys, ["plan", "--known", "kimi-k2", "--no-kernel-measure"])
    pl = f["placement"]
    assert pl["gpu_reserve_bytes"] > 0 and pl["workspace_bytes"] > 0
    assert pl["vram_used_bytes"] <= 24 << 30
    assert pl["resident_bytes"] + pl["kv_bytes"] + pl["workspace_bytes"] + pl["gpu_reserve_bytes"] \
        + pl["slots"] * pl["slot_bytes"] == pl["vram_used_bytes"]
    ceil = f["hit_ceiling"]["belady"]
    assert 0 < ceil < 0.5  # ~2.5% of the experts in slots
    rows = {p["hit_rate"]: p["reachable"] for p in f["predictions"]}
    assert rows[0.0] and rows[0.25] and not rows[0.5] and not rows[1.0]
    main(["plan", "--known", "kimi-k2", "--no-kernel-measure"])
    text = capsys.readouterr().out
    assert "unreachable with this cache" in text and "Belady" in text and "CUDA context" in text


def test_sizes_default_to_gib_and_run_flag_names(capsys: pytest.CaptureFixture) -> None:
    base = ["plan", "--known", "deepseek-r1", "--no-kernel-measure"]
    a = _plan(capsys, [*base, "--vram", "24", "--ram", "512", "--ctx", "8192"])
    b = _plan(capsys, [*base, "--gpu-budget", "24GiB", "--ram-budget", "512GiB", "-c", "8192"])
    assert a == b and a["fits"]["ram+vram"] == (24 + 512) << 30
    assert main([*base, "--ram-budget", "1000000"]) == 2
    assert "no unit" in capsys.readouterr().err
    assert main(["plan", "--help"]) == 0
    assert "a bare number is GiB" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("known", ["kimi-k2", "kimi-k2-thinking", "kimi-k2.5", "deepseek-v3", "deepseek-r1"])
def test_every_known_model_plans(known: str, capsys: pytest.CaptureFixture) -> None:
    f = _plan(capsys, ["plan", "--known", known, "--no-kernel-measure", "--hit-rates", "0"])
    assert f["file_bytes"] > 100e9 and f["predictions"][0]["tok_per_s"] > 0


def test_measured_kernel_rates_slow_the_cpu_tier(capsys: pytest.CaptureFixture, tmp_path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from kimi_runtime.commands import plan_kernels

    monkeypatch.setenv("KIMI_RUNTIME_CACHE", str(tmp_path))
    key = plan_kernels.machine_key()
    fake = {f: {"gbs": 7.0, "read_gbs": 70.0} for f in ("TQ1_0", "IQ2_XXS", "Q2_K")}  # 10% of bandwidth
    (tmp_path / "kernel_rates.json").write_text(json.dumps({key: fake}))
    monkeypatch.setattr(plan_kernels, "measure", lambda *a, **k: pytest.fail("measured despite the cache"))
    bw_only = _plan(capsys, [*K2_TQ1, "--cpu-moe", "--no-kernel-measure"])["predictions"][0]
    f = _plan(capsys, [*K2_TQ1, "--cpu-moe"])
    assert f["cpu_kernels"]["source"] == "cached"
    assert f["cpu_kernels"]["formats"]["Q2_K"]["efficiency"] == pytest.approx(0.1)
    p = f["predictions"][0]
    assert p["cpu_seconds"] == pytest.approx(10 * bw_only["cpu_seconds"])
    assert p["tok_per_s"] < bw_only["tok_per_s"] / 3


def test_kernel_rates_measure_once_then_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kimi_runtime.commands import plan_kernels

    path = tmp_path / "rates.json"
    r = plan_kernels.kernel_rates(["Q8_0", "Q4_K"], mb=4, path=path)
    assert r.source == "measured" and set(r.gbs) == {"Q8_0", "Q4_K"}
    assert all(g > 0 for g in r.gbs.values()) and 0 < r.efficiency("Q8_0") <= 1
    assert r.efficiency("IQ3_S") == 1.0  # not measured: bandwidth-bound
    monkeypatch.setattr(plan_kernels, "measure", lambda *a, **k: pytest.fail("measured twice"))
    again = plan_kernels.kernel_rates(["Q4_K"], path=path)
    assert again.source == "cached" and again.gbs["Q4_K"] == r.gbs["Q4_K"]
    monkeypatch.undo()
    calls = []
    monkeypatch.setattr(plan_kernels, "measure", lambda fmt, mb: calls.append(fmt) or (1.0, 10.0))
    assert plan_kernels.kernel_rates(["Q4_K"], path=path, refresh=True).gbs["Q4_K"] == 1.0 and calls == ["Q4_K"]
    path.write_text("{not json")
    monkeypatch.undo()
    assert plan_kernels.kernel_rates(["Q8_0"], mb=4, path=path).source == "measured"  # corrupt: re-measured


def test_plan_a_file(tiny_gguf: str, capsys: pytest.CaptureFixture, tmp_path) -> None:
    a = _plan(capsys, ["plan", tiny_gguf, "--no-kernel-measure", "--gpu-budget", "0", "--ram-budget", "1"])
    b = _plan(capsys, ["plan", "-m", tiny_gguf, "--no-kernel-measure", "--gpu-budget", "0", "--ram-budget", "1"])
    assert a == b and a["file_bytes"] > 0
    assert main(["plan", str(tmp_path)]) == 2 and "is a directory" in capsys.readouterr().err
    assert main(["plan", tiny_gguf, "--recipe", "UD-TQ1_0"]) == 2
    assert main(["plan", "--known", "kimi-k2", "--hit-rates", "0,2"]) == 2


def test_file_larger_than_ram_gets_a_disk_tier_prediction(capsys: pytest.CaptureFixture, synth_model) -> None:
    small_gguf = synth_model("small").gguf
    from kimi_runtime.experts.disk_model import predict_disk_decode  # noqa: F401  (the model plan uses)

    k2 = ["plan", "--known", "kimi-k2", "--recipe", "UD-TQ1_0", "--no-kernel-measure", "--gpu-budget", "24"]
    roomy = _plan(capsys, [*k2, "--ram-budget", "512"])
    assert roomy["disk_tier"] is None  # fits in RAM + VRAM: no disk tier
    tight = _plan(capsys, [*k2, "--ram-budget", "128", "--bandwidths", "nvme=3"])
    d = tight["disk_tier"]
    assert d["disk_source"].startswith("nvme") and d["disk_bps"] == 3e9
    assert 0 < d["hit_rate"] < 1 and d["disk_bytes_per_token"] > 0
    assert d["tok_per_s"] >= d["tok_per_s_serial"] > 0  # reads overlapped with compute never lose
    faster = _plan(capsys, [*k2, "--ram-budget", "128", "--bandwidths", "nvme=12"])["disk_tier"]
    assert faster["tok_per_s"] >= d["tok_per_s"]
    # A budget that holds the non-expert part but not the runtime beside it: said, not a crash.
    small = _plan(capsys, [*k2, "--ram-budget", "12.2"])["disk_tier"]
    assert "error" in small and "does not fit" in small["error"]
