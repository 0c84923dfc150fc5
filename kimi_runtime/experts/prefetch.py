"""Next-layer prefetcher (the mixtral-offloading trick): apply layer l+1's router (gate_inp + correction
bias) to layer l's MoE input to guess which experts l+1 will route to, so their loads overlap layer l's
compute; its accuracy (fraction of l+1's actual experts that were predicted) is measured as it runs."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from kimi_runtime.model.moe import Router
from kimi_runtime.model.weights import WeightSource


class NextLayerPrefetcher:
    """Guesses for the next MoE layer and scores them when that layer's real routing arrives.

    The guess uses the hidden state one attention block early, normalised with this layer's ffn_norm
    instead of the next one's: a cheap approximation whose quality is what `stats()` reports.
    `max_tokens`: batches larger than this are not predicted (a long prompt touches most experts anyway,
    and guessing them all would only churn the cache).
    """

    def __init__(self, src: WeightSource, moe_layers: Sequence[int], *, max_tokens: int = 8) -> None:
        self.src = src
        self.cfg = src.config
        self.layers = sorted(int(l) for l in moe_layers)
        self._next = {a: b for a, b in zip(self.layers, self.layers[1:])}
        self._routers: dict[int, Router] = {}
        self.max_tokens = int(max_tokens)
        self._pending: dict[int, frozenset[int]] = {}  # layer -> predicted experts not yet scored
        self.reset_stats()

    def next_layer(self, layer: int) -> Optional[int]:
        return self._next.get(int(layer))

    def _router(self, layer: int) -> Router:
        r = self._routers.get(layer)
        if r is None:
            cfg, p = self.cfg, f"blk.{layer}."
            bias_name = p + "exp_probs_b.bias"
            bias = self.src.dense(bias_name, (cfg.n_expert,)) if self.src.has(bias_name) else None
            r = Router(cfg, self.src.dense(p + "ffn_gate_inp.weight", (cfg.n_expert, cfg.n_embd)), bias)
            self._routers[layer] = r
        return r

    def predict(self, layer: int, x: torch.Tensor) -> Optional[tuple[int, list[int]]]:
        """(next layer, its predicted experts ascending) from layer `layer`'s MoE input x [T, D], or None
        (last MoE layer, or a batch above max_tokens). The guess is remembered for `score`."""
        nxt = self._next.get(int(layer))
        if nxt is None or x.shape[0] > self.max_tokens:
            return None
        ids, _ = self._router(nxt)(x)  # [T, K]
        pred = sorted(set(ids.reshape(-1).tolist()))
        self._pending[nxt] = frozenset(pred)
        self.predictions += 1
        return nxt, pred

    def pending(self, layer: int) -> frozenset[int]:
        """Experts predicted for `layer` and not yet scored (their loads may still be in flight)."""
        return self._pending.get(int(layer), frozenset())

    def score(self, layer: int, actual: Sequence[int]) -> None:
        """Compare the guess for `layer` (if any) with the experts it actually routed to."""
        pred = self._pending.pop(int(layer), None)
        if pred is None:
            return
        act = set(int(e) for e in actual)
        self.scored += 1
        self.actual += len(act)
        self.predicted += len(pred)
        self.correct += len(act & pred)

    def reset_stats(self) -> None:
        self.predictions = self.predicted = self.scored = self.actual = self.correct = 0

    def stats(self) -> dict[str, Any]:
        """accuracy = predicted experts that were used / experts used (recall over scored layers);
        precision = the same over experts predicted."""
        return {"prefetch_predictions": self.predictions,
                "prefetch_accuracy": self.correct / self.actual if self.actual else 0.0,
                "prefetch_precision": self.correct / self.predicted if self.predicted else 0.0}
