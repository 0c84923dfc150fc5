"""`kimi-runtime trace report TRACE -o DIR`: the cache study of one routing trace as figures and an
HTML page. Hit rate vs slots per policy (per-layer partition and one shared pool) next to Belady,
per-layer hit rates at one size, expert popularity, reuse (LRU stack) distances, and the next-layer
router guess's accuracy per layer; plus results.json with every number the page shows."""
from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from kimi_runtime.experts.cachesim_adapter import CapacityTooSmall
from kimi_runtime.experts.policies import make_policy
from kimi_runtime.experts.replay import ReplayResult, replay, require_matplotlib
from kimi_runtime.experts.trace import Trace

# Kimi K2 on a 24 GB card holds ~20 experts per layer of 384 (REFERENCE.md / plan): the size to judge at.
KIMI_SLOTS, KIMI_EXPERTS = 20, 384


def kimi_equivalent_slots(n_experts: int) -> int:
    """Slots per layer that hold the same share of the experts as ~20 of Kimi K2's 384."""
    return max(1, round(n_experts * KIMI_SLOTS / KIMI_EXPERTS))


def _layer_streams(trace: Trace) -> dict[int, np.ndarray]:
    layer, e = trace.accesses()
    return {int(l): e[layer == l] for l in np.unique(layer)}


def per_layer_hit_rates(trace: Trace, policies: Sequence[str], slots: int) -> dict[str, dict[int, float]]:
    """{policy: {layer: hit rate}} with `slots` slots in each layer's own cache (demand only)."""
    out: dict[str, dict[int, float]] = {}
    for name in policies:
        rates: dict[int, float] = {}
        for l, keys in _layer_streams(trace).items():
            try:
                p = make_policy(name, slots)
            except CapacityTooSmall:
                break
            p.prepare(keys)
            rates[l] = float(np.frombuffer(p.run(keys.tolist()), np.uint8).mean()) if len(keys) else 0.0
        else:
            out[name] = rates
    return out


def popularity(trace: Trace) -> dict[int, np.ndarray]:
    """Per layer, the access count of each expert."""
    return {l: np.bincount(k, minlength=trace.n_experts) for l, k in _layer_streams(trace).items()}


def reuse_distances(keys: np.ndarray) -> np.ndarray:
    """LRU stack distance of each access (distinct other keys since the last access of this key; -1 on
    a first access). An LRU cache of s slots hits exactly the accesses with distance < s."""
    stack: list[int] = []
    out = np.empty(len(keys), dtype=np.int64)
    for i, k in enumerate(keys.tolist()):
        try:
            d = stack.index(k)
        except ValueError:
            out[i] = -1
        else:
            out[i] = d
            del stack[d]
        stack.insert(0, k)
    return out


def prefetch_accuracy(trace: Trace) -> dict[int, dict[str, float]]:
    """Per predicted layer: recall (share of the layer's experts the guess named) and precision (share
    of the guess that was used), over the records that carry a guess."""
    if trace.pred_ids is None:
        return {}
    out: dict[int, dict[str, float]] = {}
    acc: dict[int, list[int]] = {}
    for r in range(trace.n_records):
        a, b = trace.start[r], trace.start[r + 1]
        if b <= a:
            continue
        pred = trace.pred_ids[a:b].reshape(-1)
        pred = set(pred[pred >= 0].tolist())
        if not pred:
            continue
        actual = set(trace.ids[a:b].reshape(-1).tolist())
        s = acc.setdefault(int(trace.layer[r]), [0, 0, 0, 0])
        s[0] += len(actual & pred)
        s[1] += len(actual)
        s[2] += len(pred)
        s[3] += 1
    for l, (hit, n_act, n_pred, n_rec) in sorted(acc.items()):
        out[l] = {"recall": hit / n_act if n_act else 0.0, "precision": hit / n_pred if n_pred else 0.0,
                  "records": n_rec}
    return out


def study(trace: Trace, policies: Sequence[str], slots: Sequence[int]) -> dict[str, Any]:
    """Every number of the report (JSON-serialisable)."""
    names = list(dict.fromkeys([*policies, "belady"]))
    results = {scope: [r.to_dict() for r in replay(trace, names, slots, scope=scope)]
               for scope in ("layer", "global")}
    ks = kimi_equivalent_slots(trace.n_experts)
    streams = _layer_streams(trace)
    rd = {l: reuse_distances(k) for l, k in streams.items()}
    return {
        "meta": {k: v for k, v in trace.meta.items() if k != "expert_bytes"},
        "records": trace.n_records, "accesses": int(sum(len(k) for k in streams.values())),
        "n_experts": trace.n_experts, "top_k": int(trace.meta["top_k"]), "slots": list(slots),
        "kimi_equivalent_slots": ks, "results": results,
        "per_layer": {p: {str(l): v for l, v in d.items()}
                      for p, d in per_layer_hit_rates(trace, names, ks).items()},
        "popularity": {str(l): c.tolist() for l, c in popularity(trace).items()},
        "reuse_distance": {str(l): np.bincount(d[d >= 0], minlength=trace.n_experts).tolist()
                           for l, d in rd.items()},
        "first_accesses": {str(l): int((d < 0).sum()) for l, d in rd.items()},
        "prefetch": {str(l): v for l, v in prefetch_accuracy(trace).items()},
    }


# ---- figures

def _style(plt: Any, name: str, i: int) -> dict[str, Any]:
    """Belady black dashed; ours solid, with prefetch dotted; libCacheSim's dash-dot; 20 colours."""
    from kimi_runtime.experts.cachesim_adapter import LCS_POLICIES

    if name == "belady":
        return {"linestyle": "--", "color": "black", "linewidth": 2}
    ls = ":" if name.endswith("+pf") else "-." if name in LCS_POLICIES else "-"
    return {"linestyle": ls, "color": plt.get_cmap("tab20")(i % 20), "linewidth": 1.2}


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _hit_rate_axes(ax: Any) -> None:
    """The y axis, grid and legend every hit-rate figure shares."""
    ax.set_ylabel("hit rate")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def _fig_hit_rates(plt: Any, st: dict[str, Any], scope: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    rows = st["results"][scope]
    for i, name in enumerate(dict.fromkeys(r["policy"] for r in rows)):
        rs = sorted((r for r in rows if r["policy"] == name), key=lambda r: r["slots"])
        ax.plot([r["slots"] for r in rs], [r["hit_rate"] for r in rs], marker="o", ms=3, label=name,
                **_style(plt, name, i))
    ax.axvline(st["kimi_equivalent_slots"], color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("slots per layer" + (" (one pool shared by all layers)" if scope == "global" else ""))
    _hit_rate_axes(ax)
    ax.set_title(f"hit rate vs cache size ({scope}); dotted: Kimi-K2-equivalent size")
    _save(plt, fig, path)


def _fig_per_layer(plt: Any, st: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    pl = st["per_layer"]
    for i, (name, d) in enumerate(pl.items()):
        ls = sorted(int(l) for l in d)
        ax.plot(ls, [d[str(l)] for l in ls], marker="o", ms=3, label=name, **_style(plt, name, i))
    ax.set_xlabel("layer")
    _hit_rate_axes(ax)
    ax.set_title(f"per-layer hit rate at {st['kimi_equivalent_slots']} slots per layer")
    _save(plt, fig, path)


def _fig_popularity(plt: Any, st: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    E = st["n_experts"]
    for l, c in st["popularity"].items():
        c = np.sort(np.asarray(c, float))[::-1]
        ax.plot(np.arange(1, E + 1), c / max(1.0, c.sum()), label=f"layer {l}")
    ax.axhline(1 / E, color="grey", linestyle=":", linewidth=1, label="uniform")
    ax.set_xlabel("expert rank")
    ax.set_ylabel("share of the layer's accesses")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("expert popularity (sorted)")
    _save(plt, fig, path)


def _fig_reuse(plt: Any, st: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for l, h in st["reuse_distance"].items():
        h = np.asarray(h, float)
        ax.plot(np.arange(len(h)), h / max(1.0, h.sum()), label=f"layer {l}")
    ax.axvline(st["kimi_equivalent_slots"] - 0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("reuse distance (distinct experts since the last use; LRU hits below its slots)")
    ax.set_ylabel("share of re-accesses")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("reuse-distance histogram")
    _save(plt, fig, path)


def _fig_prefetch(plt: Any, st: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    pf = st["prefetch"]
    ls = sorted(int(l) for l in pf)
    if ls:
        x = np.arange(len(ls))
        ax.bar(x - 0.2, [pf[str(l)]["recall"] for l in ls], 0.4, label="recall")
        ax.bar(x + 0.2, [pf[str(l)]["precision"] for l in ls], 0.4, label="precision")
        ax.set_xticks(x, [str(l) for l in ls])
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no predictions in this trace", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted layer")
    ax.set_title("next-layer router guess")
    ax.grid(True, alpha=0.3, axis="y")
    _save(plt, fig, path)


FIGURES = {"hit_rate_layer.png": "Hit rate vs slots, a partition of the slots per layer",
           "hit_rate_global.png": "Hit rate vs slots, one pool shared by all layers (same memory)",
           "per_layer.png": "Per-layer hit rate at the Kimi-K2-equivalent size",
           "popularity.png": "Expert popularity", "reuse_distance.png": "Reuse-distance histogram",
           "prefetch.png": "Accuracy of the next-layer router guess"}


def policy_table(st: dict[str, Any], scope: str = "layer") -> list[dict[str, Any]]:
    """Rows (policy, slots, hit rate, share of Belady's, GB moved) of one scope."""
    rows = st["results"][scope]
    opt = {r["slots"]: r["hit_rate"] for r in rows if r["policy"] == "belady"}
    return [{"policy": r["policy"], "slots": r["slots"], "hit_rate": r["hit_rate"],
             "of_belady": r["hit_rate"] / opt[r["slots"]] if opt.get(r["slots"]) else None,
             "gb_moved": r["bytes_moved"] / 1e9, "prefetch_hits": r.get("prefetch_hits", 0)} for r in rows]


def _html(st: dict[str, Any], title: str) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f"<p>{st['records']} records, {st['accesses']} accesses, {st['n_experts']} experts per layer, "
             f"top-{st['top_k']}; Kimi-K2-equivalent size: {st['kimi_equivalent_slots']} slots per layer "
             f"({KIMI_SLOTS} of {KIMI_EXPERTS}).</p>"]
    for scope in ("layer", "global"):
        parts.append(f"<h2>Policies, scope {scope}</h2><table><tr><th>policy</th><th>slots</th>"
                     "<th>hit rate</th><th>of Belady</th><th>GB moved</th><th>prefetch hits</th></tr>")
        for r in policy_table(st, scope):
            ob = f"{r['of_belady']:.3f}" if r["of_belady"] is not None else "-"
            parts.append(f"<tr><td style='text-align:left'>{esc(r['policy'])}</td><td>{r['slots']}</td>"
                         f"<td>{r['hit_rate']:.4f}</td><td>{ob}</td><td>{r['gb_moved']:.3f}</td>"
                         f"<td>{r['prefetch_hits']}</td></tr>")
        parts.append("</table>")
    for fname, cap in FIGURES.items():
        parts.append(f"<h2>{esc(cap)}</h2><img src='{fname}' alt='{esc(cap)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(trace: Trace, out_dir: os.PathLike, policies: Sequence[str], slots: Sequence[int],
                 title: Optional[str] = None) -> list[Path]:
    """Figures, index.html and results.json into `out_dir`; returns the written paths."""
    plt = require_matplotlib("trace report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    st = study(trace, policies, slots)
    title = title or f"Expert cache study: {trace.meta.get('model') or 'trace'}"
    _fig_hit_rates(plt, st, "layer", out / "hit_rate_layer.png")
    _fig_hit_rates(plt, st, "global", out / "hit_rate_global.png")
    _fig_per_layer(plt, st, out / "per_layer.png")
    _fig_popularity(plt, st, out / "popularity.png")
    _fig_reuse(plt, st, out / "reuse_distance.png")
    _fig_prefetch(plt, st, out / "prefetch.png")
    (out / "results.json").write_text(json.dumps(st, indent=1) + "\n")
    (out / "index.html").write_text(_html(st, title), encoding="utf-8")
    return [out / f for f in FIGURES] + [out / "results.json", out / "index.html"]


__all__ = ["kimi_equivalent_slots", "per_layer_hit_rates", "popularity", "reuse_distances", "prefetch_accuracy",
           "study", "policy_table", "write_report", "FIGURES", "ReplayResult"]
