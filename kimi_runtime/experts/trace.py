"""Routing traces: one record per (step, layer) with the token positions, expert ids and gate weights
(and optionally the ids a prefetcher predicted), stored as an uncompressed .npz so a 10^6-access
trace loads in milliseconds and replays without the model. numpy only: no torch import."""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np

FORMAT = "kimi-runtime-trace"
VERSION = 1
# Bytes of one Kimi K2 routed expert at ~2 bits per weight: 3 x 7168 x 2048 x 2 / 8.
DEFAULT_EXPERT_BYTES = 3 * 7168 * 2048 * 2 // 8


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor: trace.py stays importable without torch
        a = a.detach().cpu().numpy()
    return np.asarray(a)


@dataclass
class Trace:
    """A loaded trace. Records r has token rows start[r]:start[r+1] of positions/ids/weights."""

    meta: dict[str, Any]
    step: np.ndarray  # [R] int64
    layer: np.ndarray  # [R] int64
    start: np.ndarray  # [R+1] int64
    positions: np.ndarray  # [N] int64
    ids: np.ndarray  # [N, K] int64
    weights: np.ndarray  # [N, K] float32
    pred_ids: Optional[np.ndarray] = None  # [N, P] int64, -1 = no prediction
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_layers(self) -> int:
        return int(self.meta["n_layers"])

    @property
    def n_experts(self) -> int:
        return int(self.meta["n_experts"])

    @property
    def n_records(self) -> int:
        return len(self.step)

    @property
    def expert_bytes(self) -> np.ndarray:
        """Bytes of one expert of each layer [n_layers] (what a miss moves)."""
        eb = self.meta.get("expert_bytes", DEFAULT_EXPERT_BYTES)
        if np.isscalar(eb):
            return np.full(self.n_layers, int(eb), dtype=np.int64)
        return np.asarray(eb, dtype=np.int64)

    def _unique_per_record(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(record, expert) of the distinct ids of each record, in order of first appearance."""
        rows_per_rec = np.diff(self.start)
        width = ids.shape[1] if ids.ndim == 2 else 1
        rec = np.repeat(np.repeat(np.arange(self.n_records), rows_per_rec), width)
        flat = ids.reshape(-1)
        keep = flat >= 0
        rec, flat = rec[keep], flat[keep]
        key = rec * self.n_experts + flat
        _, first = np.unique(key, return_index=True)
        first.sort()
        return rec[first], flat[first]

    def accesses(self) -> tuple[np.ndarray, np.ndarray]:
        """(layer, expert) per cache access: each record asks once for each distinct expert its
        tokens route to (a batch loads an expert once), records in file order."""
        if "acc" not in self._cache:
            rec, e = self._unique_per_record(self.ids)
            self._cache["acc"] = (self.layer[rec], e, rec)
        layer, e, _ = self._cache["acc"]
        return layer, e

    def events(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(layer, expert, is_prefetch): each record's predicted experts (prefetches) come before its
        demand accesses. Without predictions this is accesses() with is_prefetch all False."""
        layer, e = self.accesses()
        _, _, rec = self._cache["acc"]
        if self.pred_ids is None:
            return layer, e, np.zeros(len(e), dtype=bool)
        prec, pe = self._unique_per_record(self.pred_ids)
        all_rec = np.concatenate([prec, rec])
        kind = np.concatenate([np.zeros(len(prec), np.int8), np.ones(len(rec), np.int8)])
        order = np.lexsort((np.arange(len(all_rec)), kind, all_rec))  # stable within (rec, kind)
        all_e = np.concatenate([pe, e])[order]
        return self.layer[all_rec[order]], all_e, kind[order] == 0


class TraceWriter:
    """Collects routing decisions and writes a trace file on close().

    Use `writer.observer` as the model's MoE observer hook `(layer, positions, ids, weights)`. A new
    step starts when a layer index does not increase (or after `next_step()`). `predict(layer, ids)`
    attaches a prefetcher's guess to the next record of that layer.
    """

    def __init__(self, path: Union[str, os.PathLike], *, n_layers: int, n_experts: int, top_k: int,
                 expert_bytes: Union[int, Sequence[int]] = DEFAULT_EXPERT_BYTES,
                 meta: Optional[dict[str, Any]] = None) -> None:
        self.path = check_trace_path(path)
        eb = expert_bytes if np.isscalar(expert_bytes) else [int(b) for b in expert_bytes]
        self.meta = {"format": FORMAT, "version": VERSION, "n_layers": int(n_layers),
                     "n_experts": int(n_experts), "top_k": int(top_k), "expert_bytes": eb,
                     **(meta or {})}
        self._step, self._last_layer, self._new_step = 0, None, False
        self._recs: list[tuple[int, int, int]] = []  # (step, layer, rows)
        self._pos: list[np.ndarray] = []
        self._ids: list[np.ndarray] = []
        self._w: list[np.ndarray] = []
        self._pred: list[Optional[np.ndarray]] = []
        self._pending_pred: dict[int, np.ndarray] = {}
        self._closed = False

    def next_step(self) -> None:
        self._new_step = True

    def predict(self, layer: int, ids: Any) -> None:
        self._pending_pred[int(layer)] = _np(ids).astype(np.int64).reshape(-1)

    def observer(self, layer: int, positions: Any, ids: Any, weights: Any) -> None:
        """The MoE observer hook: positions [T], ids [T, K], weights [T, K]."""
        ids_a = _np(ids).astype(np.int64)
        if ids_a.ndim == 1:
            ids_a = ids_a[None, :]
        T, K = ids_a.shape
        if K != self.meta["top_k"]:
            raise ValueError(f"trace: record has {K} experts per token, header says {self.meta['top_k']}")
        if ids_a.size and (ids_a.min() < 0 or ids_a.max() >= self.meta["n_experts"]):
            raise ValueError("trace: expert id out of range")
        if not 0 <= layer < self.meta["n_layers"]:
            raise ValueError(f"trace: layer {layer} out of range")
        if self._last_layer is not None and (self._new_step or layer <= self._last_layer):
            self._step += 1
        self._new_step, self._last_layer = False, layer
        pos = _np(positions).astype(np.int64).reshape(-1)
        if len(pos) != T:
            pos = np.full(T, pos[0] if len(pos) else -1, dtype=np.int64)
        self._recs.append((self._step, int(layer), T))
        self._pos.append(pos)
        self._ids.append(ids_a)
        self._w.append(_np(weights).astype(np.float32).reshape(T, K))
        self._pred.append(self._pending_pred.pop(int(layer), None))

    __call__ = observer

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        K = self.meta["top_k"]
        recs = np.asarray(self._recs, dtype=np.int64).reshape(-1, 3)
        start = np.zeros(len(recs) + 1, dtype=np.int64)
        np.cumsum(recs[:, 2], out=start[1:])
        arrays = {
            "meta": np.array(json.dumps(self.meta)),
            "step": recs[:, 0], "layer": recs[:, 1], "start": start,
            "positions": np.concatenate(self._pos) if self._pos else np.zeros(0, np.int64),
            "ids": np.concatenate(self._ids) if self._ids else np.zeros((0, K), np.int64),
            "weights": np.concatenate(self._w) if self._w else np.zeros((0, K), np.float32),
        }
        if any(p is not None for p in self._pred):
            width = max(len(p) for p in self._pred if p is not None)
            # Predictions are per record; they sit on the record's first token row.
            pred = np.full((int(start[-1]), width), -1, dtype=np.int64)
            for r, p in enumerate(self._pred):
                if p is not None and recs[r, 2] > 0:
                    pred[start[r], :len(p)] = p
            arrays["pred_ids"] = pred
        with open(self.path, "wb") as f:
            np.savez(f, **arrays)

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def check_trace_path(path: Union[str, os.PathLike]) -> str:
    """The path as a string; a trace is an .npz archive, so its name must say so (a trace written as
    "routing.json" would mislead every tool that opens it)."""
    p = os.fspath(path)
    if not p.lower().endswith(".npz"):
        raise ValueError(f"trace file {p!r}: traces are .npz archives; give a name ending in .npz")
    return p


def load_trace(path: Union[str, os.PathLike]) -> Trace:
    """Read a trace written by TraceWriter (or save_trace); checks the header and array shapes."""
    try:
        z = np.load(os.fspath(path), allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such trace file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        # numpy's own message suggests allow_pickle=True for some inputs: never what a trace needs
        raise ValueError(f"{path}: not a trace file (not an .npz archive written by kimi-runtime)") from None
    if not hasattr(z, "files"):  # a plain .npy array
        raise ValueError(f"{path}: not a trace file (a single array, not an .npz archive)")
    with z:
        if "meta" not in z.files:
            raise ValueError(f"{path}: not a trace file (no header)")
        try:
            meta = json.loads(str(z["meta"]))
        except ValueError:  # an object array (needs pickle) or a header that is not JSON
            raise ValueError(f"{path}: not a trace file (unreadable header)") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{path}: not a trace file (unreadable header)")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a kimi-runtime trace (format {meta.get('format')!r})")
        try:
            a = {k: z[k] for k in z.files if k != "meta"}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):
            raise ValueError(f"{path}: not a trace file (unreadable arrays)") from None
    missing = {"step", "layer", "start", "positions", "ids", "weights"} - set(a)
    if missing:
        raise ValueError(f"{path}: not a trace file (missing {', '.join(sorted(missing))})")
    t = Trace(meta, a["step"].astype(np.int64), a["layer"].astype(np.int64), a["start"].astype(np.int64),
              a["positions"].astype(np.int64), a["ids"].astype(np.int64), a["weights"].astype(np.float32),
              a["pred_ids"].astype(np.int64) if "pred_ids" in a else None)
    n = len(t.positions)
    if len(t.start) != t.n_records + 1 or t.start[-1] != n or t.ids.shape[0] != n or len(t.layer) != t.n_records:
        raise ValueError(f"{path}: inconsistent trace arrays")
    if t.ids.size and (t.ids.min() < 0 or t.ids.max() >= t.n_experts):
        raise ValueError(f"{path}: expert id out of range")
    if t.layer.size and (t.layer.min() < 0 or t.layer.max() >= t.n_layers):
        raise ValueError(f"{path}: layer out of range")
    return t


def synthetic_trace(n_steps: int, n_layers: int = 4, n_experts: int = 64, top_k: int = 8, *,
                    skew: float = 1.0, persistence: float = 0.95, volatility: float = 1.0,
                    pred_accuracy: Optional[float] = None, expert_bytes: int = DEFAULT_EXPERT_BYTES,
                    seed: int = 0) -> Trace:
    """Decode-like trace (one token per step) from a seeded generative model of routing.

    Each layer has fixed expert popularities (logits ~ N(0, skew)) plus a slowly drifting AR(1)
    component (`persistence` close to 1 = strong temporal locality, scale `volatility`); each step
    takes the top-k of those logits plus Gumbel noise, i.e. samples k experts without replacement.
    With `pred_accuracy`, a predicted set per record keeps each true id with that probability (else a
    random expert), standing in for a next-layer router prefetcher.
    """
    rng = np.random.default_rng(seed)
    L, E, K = n_layers, n_experts, top_k
    base = rng.normal(0.0, skew, size=(L, E)).astype(np.float32)
    x = rng.normal(0.0, volatility, size=(L, E)).astype(np.float32)
    innov = volatility * np.sqrt(max(0.0, 1.0 - persistence ** 2))
    ids = np.empty((n_steps, L, K), dtype=np.int64)
    logits_sel = np.empty((n_steps, L, K), dtype=np.float32)
    for t in range(n_steps):
        x = persistence * x + innov * rng.standard_normal((L, E), dtype=np.float32)
        logits = base + x
        g = logits - np.log(-np.log(rng.random((L, E), dtype=np.float32) + 1e-12) + 1e-12)
        top = np.argpartition(-g, K - 1, axis=1)[:, :K]
        ids[t] = top
        logits_sel[t] = np.take_along_axis(logits, top, axis=1)
    w = np.exp(logits_sel - logits_sel.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    R = n_steps * L
    meta = {"format": FORMAT, "version": VERSION, "n_layers": L, "n_experts": E, "top_k": K,
            "expert_bytes": int(expert_bytes), "synthetic": {"seed": seed, "skew": skew,
            "persistence": persistence, "volatility": volatility}}
    pred = None
    if pred_accuracy is not None:
        keep = rng.random((R, K)) < pred_accuracy
        pred = np.where(keep, ids.reshape(R, K), rng.integers(0, E, size=(R, K)))
    return Trace(meta, np.repeat(np.arange(n_steps), L), np.tile(np.arange(L), n_steps),
                 np.arange(R + 1, dtype=np.int64), np.repeat(np.arange(n_steps), L),
                 ids.reshape(R, K), w.reshape(R, K).astype(np.float32), pred)


def save_trace(trace: Trace, path: Union[str, os.PathLike]) -> None:
    """Write a Trace (e.g. a synthetic one) in the TraceWriter format."""
    arrays = {"meta": np.array(json.dumps(trace.meta)), "step": trace.step, "layer": trace.layer,
              "start": trace.start, "positions": trace.positions, "ids": trace.ids,
              "weights": trace.weights}
    if trace.pred_ids is not None:
        arrays["pred_ids"] = trace.pred_ids
    with open(check_trace_path(path), "wb") as f:
        np.savez(f, **arrays)


def trace_stats(trace: Trace) -> dict[str, Any]:
    """Summary: sizes, and per layer the distinct experts seen, the access share of the 10% most used
    experts (skew), step-to-step reuse (locality) and, with predictions, the prefetcher's recall."""
    layer, e = trace.accesses()
    _, _, rec = trace._cache["acc"]
    E = trace.n_experts
    out: dict[str, Any] = {"records": trace.n_records, "steps": int(len(np.unique(trace.step))),
                           "tokens": int(len(trace.positions)), "accesses": int(len(e)),
                           "n_layers": trace.n_layers, "n_experts": E, "top_k": int(trace.meta["top_k"]),
                           "layers": {}}
    for l in np.unique(layer):
        m = layer == l
        counts = np.bincount(e[m], minlength=E)
        top = np.sort(counts)[::-1][:max(1, E // 10)].sum()
        # Reuse: share of a record's experts that the previous record of this layer also used.
        recs = rec[m]
        key = recs * E + e[m]
        uniq_recs = np.unique(recs)
        idx = np.searchsorted(uniq_recs, recs)
        prev_rec = np.where(idx > 0, uniq_recs[np.maximum(idx - 1, 0)], -1)
        prev_key = prev_rec * E + e[m]
        reuse = float(np.isin(prev_key, key).mean()) if len(key) else 0.0
        out["layers"][int(l)] = {"accesses": int(m.sum()), "distinct": int((counts > 0).sum()),
                                 "top10pct_share": float(top / max(1, counts.sum())), "reuse": reuse}
    if trace.pred_ids is not None:
        prec, pe2 = trace._unique_per_record(trace.pred_ids)
        pk = np.unique(prec * E + pe2)
        ak = rec * E + e
        # Recall: share of demand accesses the record's prediction named.
        out["prediction_recall"] = float(np.isin(ak, pk).mean()) if len(ak) else 0.0
    return out
