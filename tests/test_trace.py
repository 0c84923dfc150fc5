"""Routing traces: writer/loader round trip, access extraction, replay accounting (scopes, prefetch,
bytes moved) and the `kimi-runtime trace` command."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from kimi_runtime.cli import main
from kimi_runtime.experts.replay import replay
from kimi_runtime.experts.trace import TraceWriter, load_trace, save_trace, synthetic_trace, trace_stats


def _write(path, records, n_layers=3, n_experts=8, top_k=2, expert_bytes=100, preds=None):
    with TraceWriter(path, n_layers=n_layers, n_experts=n_experts, top_k=top_k,
                     expert_bytes=expert_bytes, meta={"model": "hand"}) as w:
        for i, (layer, pos, ids) in enumerate(records):
            if preds and preds.get(i) is not None:
                w.predict(layer, preds[i])
            w.observer(layer, pos, np.asarray(ids), np.full(np.shape(ids), 0.5))
    return load_trace(path)


def test_round_trip_steps_and_accesses(tmp_path):
    torch = pytest.importorskip("torch")
    recs = [
        (1, [0, 1, 2], [[0, 1], [1, 2], [0, 3]]),  # a 3-token prefill record
        (2, [0, 1, 2], [[4, 5], [5, 4], [6, 7]]),
        (1, [3], [[2, 0]]),  # layer index drops: step 1 starts
        (2, [3], [[7, 6]]),
    ]
    t = _write(tmp_path / "t.npz", recs)
    assert t.meta["model"] == "hand" and t.n_layers == 3 and t.n_records == 4
    assert t.step.tolist() == [0, 0, 1, 1] and t.layer.tolist() == [1, 2, 1, 2]
    assert t.positions.tolist() == [0, 1, 2, 0, 1, 2, 3, 3]
    assert t.ids.shape == (8, 2) and np.allclose(t.weights, 0.5)
    layer, e = t.accesses()
    # One access per distinct expert of a record, in order of first appearance.
    assert list(zip(layer.tolist(), e.tolist())) == [
        (1, 0), (1, 1), (1, 2), (1, 3), (2, 4), (2, 5), (2, 6), (2, 7), (1, 2), (1, 0), (2, 7), (2, 6)]
    # The observer takes torch tensors as the model passes them.
    with TraceWriter(tmp_path / "torch.npz", n_layers=2, n_experts=4, top_k=1) as w:
        w.observer(1, torch.tensor([5]), torch.tensor([[3]]), torch.tensor([[1.0]]))
        w.next_step()
        w.observer(1, torch.tensor([6]), torch.tensor([[2]]), torch.tensor([[1.0]]))
    t2 = load_trace(tmp_path / "torch.npz")
    assert t2.step.tolist() == [0, 1] and t2.ids.ravel().tolist() == [3, 2]


def test_writer_and_loader_reject_bad_input(tmp_path):
    w = TraceWriter(tmp_path / "x.npz", n_layers=2, n_experts=4, top_k=2)
    with pytest.raises(ValueError, match="out of range"):
        w.observer(0, [0], [[1, 4]], [[1, 1]])
    with pytest.raises(ValueError, match="header says 2"):
        w.observer(0, [0], [[1, 2, 3]], [[1, 1, 1]])
    with pytest.raises(ValueError, match="layer 5"):
        w.observer(5, [0], [[1, 2]], [[1, 1]])
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a trace"):
        load_trace(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="no header"):
        load_trace(tmp_path / "other.npz")


def test_replay_scopes_and_bytes(tmp_path):
    # Layer 1 sees experts 0 1 0 1, layer 2 sees 0 0 0 0 (top-1 decode), interleaved by step.
    recs = [(l, [s], [[e]]) for s, (a, b) in enumerate([(0, 0), (1, 0), (0, 0), (1, 0)])
            for l, e in ((1, a), (2, b))]
    t = _write(tmp_path / "t.npz", recs, top_k=1, expert_bytes=[0, 100, 300])
    by = {(r.policy, r.scope): r for scope in ("layer", "global")
          for r in replay(t, ["lru", "belady"], [1], scope=scope)}
    # Per layer, 1 slot each: layer 1 alternates -> 4 misses; layer 2 -> 1 miss, 3 hits.
    r = by[("lru", "layer")]
    assert (r.accesses, r.hits, r.bytes_moved, r.capacity) == (8, 3, 4 * 100 + 300, 2)
    # Global, 2 slots shared, keys A=(1,0) B=(2,0) C=(1,1): A B C B A B C B. LRU: C evicts A, A
    # evicts C, C evicts A -> hits on B only (3). MIN does no better: A and C alternate 4 apart.
    assert by[("lru", "global")].hits == 3 and by[("lru", "global")].capacity == 2
    assert by[("belady", "global")].hits == 3
    assert by[("belady", "global")].bytes_moved == 4 * 100 + 300
    with pytest.raises(ValueError, match="scope"):
        replay(t, ["lru"], [1], scope="node")


def test_replay_prefetch_accounting(tmp_path):
    # One layer, LRU with 4 slots. Record 0: predicted {0,1}, used {0,1}; record 1: predicted {2,4},
    # used {2,3}. Events: pf0 pf1 a0 a1 | pf2 pf4 a2 a3:
    #   two prefetch loads, two prefetch hits; two more loads (cache 0 1 2 4), a2 a prefetch hit,
    #   a3 a miss (evicts 0). Hits 3 of 4, loads 4 prefetch + 1 demand = 5 x 10 bytes.
    t = _write(tmp_path / "p.npz", [(0, [0], [[0, 1]]), (0, [1], [[2, 3]])], n_layers=1,
               expert_bytes=10, preds={0: [0, 1], 1: [2, 4]})
    res = {r.policy: r for r in replay(t, ["lru", "belady"], [4])}
    pf = res["lru+pf"]
    assert (pf.hits, pf.prefetch_loads, pf.prefetch_hits, pf.bytes_moved) == (3, 4, 3, 50)
    assert res["lru"].hits == 0 and res["lru"].bytes_moved == 40
    assert "belady+pf" not in res
    assert trace_stats(t)["prediction_recall"] == 0.75


def test_synthetic_trace_and_stats(tmp_path):
    t = synthetic_trace(200, n_layers=3, n_experts=32, top_k=4, persistence=0.99, volatility=3.0,
                        pred_accuracy=0.8, seed=1)
    assert t.ids.shape == (600, 4)
    assert all(len(set(row)) == 4 for row in t.ids.tolist())  # top-k ids are distinct
    save_trace(t, tmp_path / "s.npz")
    t2 = load_trace(tmp_path / "s.npz")
    assert np.array_equal(t2.ids, t.ids) and np.array_equal(t2.pred_ids, t.pred_ids)
    st = trace_stats(t2)
    assert st["accesses"] == 2400 and set(st["layers"]) == {0, 1, 2}
    assert 0.7 < st["prediction_recall"] < 0.9
    # Slow strong drift gives step-to-step reuse far above the 4/32 of independent uniform draws.
    low = trace_stats(synthetic_trace(200, 3, 32, 4, persistence=0.0, volatility=0.0, skew=0.0, seed=1))
    assert min(d["reuse"] for d in st["layers"].values()) > 0.35
    assert max(d["reuse"] for d in low["layers"].values()) < 0.2


def test_replay_1e5_accesses_is_fast(tmp_path):
    t = synthetic_trace(12500, n_layers=4, n_experts=64, top_k=2, seed=2)  # 1e5 accesses
    t0 = time.perf_counter()
    res = {r.policy: r for r in replay(t, ["lru", "belady"], [16])}
    elapsed = time.perf_counter() - t0
    assert res["lru"].accesses == 100_000
    assert 0 < res["lru"].hit_rate <= res["belady"].hit_rate < 1
    assert elapsed < 10, f"replay of 1e5 accesses x 2 policies took {elapsed:.1f} s"


def test_cli_synth_stats_replay_plot(tmp_path, capsys):
    f = tmp_path / "c.npz"
    assert main(["trace", "synth", str(f), "--steps", "300", "--layers", "2", "--experts", "16",
                 "--top-k", "2", "--pred-accuracy", "0.6"]) == 0
    assert main(["trace", "stats", str(f)]) == 0
    out = capsys.readouterr().out
    assert "1200 accesses" in out and "prediction recall" in out
    assert main(["trace", "replay", str(f), "--policies", "lru,slru", "--slots", "2,4",
                 "--scope", "global", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["policy"] for r in rows} == {"lru", "lru+pf", "slru", "slru+pf", "belady"}
    best = {r["slots"]: r["hits"] for r in rows if r["policy"] == "belady"}
    assert all(r["hits"] <= best[r["slots"]] for r in rows if not r["policy"].endswith("+pf"))
    assert main(["trace", "replay", str(f), "--policies", "nope"]) == 2
    assert "unknown policies" in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    assert main(["trace", "replay", str(f), "--slots", "1,2,4", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
