"""Perplexity of a token sequence, scored the same way by our engine and by llama.cpp (through the
optional llama-cpp-python): non-overlapping windows of `window` tokens, each from an empty context,
every token after a window's first scored given the ones before it; ppl = exp(mean NLL)."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

DEFAULT_WINDOW = 128  # the trained model's training length: it never saw positions beyond it


def _windows(ids: Sequence[int], window: int) -> list[list[int]]:
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    ws = [list(ids[i:i + window]) for i in range(0, len(ids), window)]
    ws = [w for w in ws if len(w) >= 2]
    if not ws:
        raise ValueError("perplexity needs at least 2 tokens")
    return ws


def _nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed negative log-likelihood of targets under rows of logits (float64 log-softmax)."""
    x = logits.astype(np.float64)
    x -= x.max(-1, keepdims=True)
    lse = np.log(np.exp(x).sum(-1))
    return float((lse - x[np.arange(len(targets)), targets]).sum())


def engine_perplexity(engine: Any, ids: Sequence[int], window: int = DEFAULT_WINDOW) -> float:
    """Perplexity under a kimi_runtime Engine (its KV cache is reset per window)."""
    tot, n = 0.0, 0
    for w in _windows(ids, window):
        logits = engine.logits(w).float().cpu().numpy()  # [T, V]
        tot += _nll(logits[:-1], np.asarray(w[1:]))
        n += len(w) - 1
    return math.exp(tot / n)


def llamacpp_perplexity(gguf: str, ids: Sequence[int], window: int = DEFAULT_WINDOW, threads: int = 2) -> float:
    """Perplexity under llama.cpp (llama-cpp-python), same windows; F32 KV cache, no flash attention
    (REFERENCE.md section 8: llama.cpp's closest-to-exact settings). ImportError without the package."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=window, n_batch=window, n_ubatch=window, logits_all=True,
                          type_k=0, type_v=0, flash_attn=False, n_threads=threads, verbose=False, seed=0)
    try:
        tot, n = 0.0, 0
        for w in _windows(ids, window):
            llm.reset()
            llm.eval(w)
            logits = np.asarray(llm.scores[:len(w)], dtype=np.float32)
            tot += _nll(logits[:-1], np.asarray(w[1:]))
            n += len(w) - 1
    finally:
        llm.close()
    return math.exp(tot / n)


def llamacpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = ["DEFAULT_WINDOW", "engine_perplexity", "llamacpp_perplexity", "llamacpp_available"]
