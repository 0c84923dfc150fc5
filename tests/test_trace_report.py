"""`trace report`: the study's numbers (reuse distances agree with LRU exactly, prefetch accuracy on a
hand trace, Belady bounds every demand policy), the written figures and HTML page, and the trace
polish of the CLI: .npz names, --plot checked before replaying, no allow_pickle hint."""
from __future__ import annotations

import builtins
import json

import numpy as np
import pytest

from kimi_runtime.cli import main
from kimi_runtime.experts.policies import make_policy
from kimi_runtime.experts.report import (kimi_equivalent_slots, policy_table, prefetch_accuracy, reuse_distances,
                                         study)
from kimi_runtime.experts.trace import TraceWriter, load_trace, save_trace, synthetic_trace


def test_kimi_equivalent_slots():
    assert kimi_equivalent_slots(384) == 20 and kimi_equivalent_slots(64) == 3 and kimi_equivalent_slots(8) == 1


def test_reuse_distance_predicts_lru_exactly():
    rng = np.random.default_rng(0)
    keys = rng.zipf(1.5, size=3000) % 24
    d = reuse_distances(keys)
    assert d[0] == -1 and (d == -1).sum() == len(np.unique(keys))
    for s in (1, 2, 3, 5, 8, 16):
        lru = make_policy("lru", s)
        assert sum(lru.run(keys.tolist())) == int(((d >= 0) & (d < s)).sum())
    assert reuse_distances(np.array([1, 2, 1, 1, 3, 2])).tolist() == [-1, -1, 1, 0, -1, 2]


def test_prefetch_accuracy_hand_trace(tmp_path):
    with TraceWriter(tmp_path / "p.npz", n_layers=3, n_experts=8, top_k=2) as w:
        w.observer(1, [0], [[0, 1]], [[1, 1]])
        w.predict(2, [2, 3, 4])  # guess for layer 2: two of three right
        w.observer(2, [0], [[2, 3]], [[1, 1]])
        w.observer(1, [1], [[0, 1]], [[1, 1]])
        w.predict(2, [5])  # wrong
        w.observer(2, [1], [[6, 7]], [[1, 1]])
    pa = prefetch_accuracy(load_trace(tmp_path / "p.npz"))
    assert list(pa) == [2]
    assert pa[2]["recall"] == pytest.approx(2 / 4) and pa[2]["precision"] == pytest.approx(2 / 4)
    assert pa[2]["records"] == 2


def test_study_numbers_are_consistent():
    t = synthetic_trace(300, n_layers=3, n_experts=32, top_k=4, pred_accuracy=0.7, seed=3)
    st = study(t, ["lru", "fifo", "lfu"], [1, 2, 4, 8])
    assert st["kimi_equivalent_slots"] == 2 and st["accesses"] == 3600
    for scope in ("layer", "global"):
        rows = policy_table(st, scope)
        opt = {r["slots"]: r["hit_rate"] for r in rows if r["policy"] == "belady"}
        for r in rows:
            if not r["policy"].endswith("+pf"):
                assert r["hit_rate"] <= opt[r["slots"]] + 1e-12
    # per-layer rates at the Kimi-equivalent size average (weighted) to the layer-scope total
    lru_total = next(r for r in st["results"]["layer"] if r["policy"] == "lru" and r["slots"] == 2)
    per = st["per_layer"]["lru"]
    assert np.mean(list(per.values())) == pytest.approx(lru_total["hit_rate"])  # equal accesses per layer
    assert sum(sum(c) for c in st["popularity"].values()) == 3600
    assert all(0 < v["recall"] < 1 for v in st["prefetch"].values())


def test_report_writes_figures_and_page(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    t = synthetic_trace(200, n_layers=2, n_experts=16, top_k=2, pred_accuracy=0.6, seed=4)
    f = tmp_path / "t.npz"
    save_trace(t, f)
    out = tmp_path / "rep"
    assert main(["trace", "report", str(f), "-o", str(out), "--policies", "lru,fifo", "--slots", "1,2,4"]) == 0
    assert "wrote 8 files" in capsys.readouterr().out
    for png in ("hit_rate_layer", "hit_rate_global", "per_layer", "popularity", "reuse_distance", "prefetch"):
        data = (out / f"{png}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    page = (out / "index.html").read_text()
    assert page.count("<img ") == 6 and "<td style='text-align:left'>belady</td>" in page and "lru+pf" in page
    res = json.loads((out / "results.json").read_text())
    assert {r["policy"] for r in res["results"]["layer"]} == {"lru", "lru+pf", "fifo", "fifo+pf", "belady"}


def test_trace_names_must_say_npz(tmp_path):
    with pytest.raises(ValueError, match="end.*in .npz"):
        TraceWriter(tmp_path / "routing.json", n_layers=2, n_experts=4, top_k=1)
    with pytest.raises(ValueError, match=".npz"):
        save_trace(synthetic_trace(5, 2, 4, 1), tmp_path / "t.trace")
    assert main(["trace", "synth", str(tmp_path / "x.jsonl"), "--steps", "5"]) == 2


def test_not_a_trace_messages_do_not_suggest_pickle(tmp_path, capsys):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "objmeta.npz", meta=np.array([{"format": 1}], dtype=object))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 broken")
    for name in ("obj.npy", "objmeta.npz", "junk.npz", "missing.npz"):
        with pytest.raises(ValueError) as ei:
            load_trace(tmp_path / name)
        msg = str(ei.value)
        assert "pickle" not in msg.lower() and ("not a trace file" in msg or "no such trace file" in msg), msg
    assert main(["trace", "stats", str(tmp_path / "obj.npy")]) == 2
    assert "pickle" not in capsys.readouterr().err.lower()


def test_plot_checks_matplotlib_before_replaying(tmp_path, monkeypatch, capsys):
    f = tmp_path / "t.npz"
    save_trace(synthetic_trace(50, 2, 8, 2), f)
    import kimi_runtime.experts.replay as rp

    calls = []
    monkeypatch.setattr(rp, "replay", lambda *a, **k: calls.append(1) or [])
    real_import = builtins.__import__

    def no_mpl(name, *a, **k):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("no matplotlib here")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    assert main(["trace", "replay", str(f), "--plot", str(tmp_path / "c.png")]) == 2
    assert "needs matplotlib" in capsys.readouterr().err and not calls
    assert main(["trace", "report", str(f), "-o", str(tmp_path / "r")]) == 2
    assert "needs matplotlib" in capsys.readouterr().err
