"""The grouped MoE launch sequence (quantize x; gate+up+SiLU per route; quantize h; down per route;
weighted sum over k), run through the CUDA kernels' own bodies by the host emulator, against a float64
reference and the CPU fused MoE (kimi_runtime.kernels.moe_ffn).

Tolerance: test_kernels_moe's propagated bound, with the GPU's activation blocks (32 values for every
format, see test_cuda_emulated_gemv.py) for x and for h, plus 8 float32 ulps of each output for SiLU
(expf vs exp) and the k-sum order. The CPU kernel's own bound is added when comparing the two.
"""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from kimi_runtime import kernels
from kimi_runtime._native import C
from test_kernels_gemv import EPS32, dequant, random_weights
from test_kernels_moe import reference as cpu_reference

N_EMBD, N_FF = 512, 256
RECIPES = [(T.Q4_K, T.Q6_K), (T.IQ2_XXS, T.Q2_K), (T.Q8_0, T.Q8_0), (T.IQ3_S, T.Q4_0), (T.IQ1_S, T.Q5_K),
           (T.IQ1_M, T.Q3_K), (T.IQ2_S, T.IQ4_XS), (T.TQ2_0, T.TQ1_0)]


def make_experts(seed: int):
    raw, dense = [], []
    for i, (tgu, td) in enumerate(RECIPES):
        g = random_weights(tgu, N_FF, N_EMBD, seed + 3 * i)
        u = random_weights(tgu, N_FF, N_EMBD, seed + 3 * i + 1)
        d = random_weights(td, N_EMBD, N_FF, seed + 3 * i + 2)
        raw.append((g, u, d, int(tgu), int(tgu), int(td)))
        dense.append((dequant(g, tgu, N_FF, N_EMBD), dequant(u, tgu, N_FF, N_EMBD), dequant(d, td, N_EMBD, N_FF), tgu, td))
    return raw, dense


def act_err32(x: np.ndarray) -> np.ndarray:
    amax = np.abs(x).reshape(*x.shape[:-1], -1, 32).max(axis=-1)
    return np.repeat(amax, 32, axis=-1) / 254.0


def bound_dot(w: np.ndarray, x: np.ndarray, dx: np.ndarray) -> np.ndarray:
    xa = np.abs(x) + dx
    return np.abs(w) @ (dx + act_err32(xa) * (1 + 1e-6)) + (w.shape[1] // 32 + 16) * EPS32 * (np.abs(w) @ xa)


def gpu_reference(x, dense, sel, w):
    out = np.zeros(x.shape, np.float64)
    tol = np.zeros(x.shape, np.float64)
    for t in range(x.shape[0]):
        xt = x[t].astype(np.float64)
        for j in range(sel.shape[1]):
            e = sel[t, j]
            if e < 0:
                continue
            G, U, D, _, _ = dense[e]
            g, u = G @ xt, U @ xt
            eg, eu = bound_dot(G, xt, 0 * xt), bound_dot(U, xt, 0 * xt)
            s = g / (1 + np.exp(-g))
            h = s * u
            dh = 1.1 * eg * (np.abs(u) + eu) + (np.abs(s) + 1.1 * eg) * eu + 4 * EPS32 * np.abs(h)
            y = D @ h
            out[t] += w[t, j] * y
            tol[t] += abs(w[t, j]) * (bound_dot(D, h, dh) + 8 * EPS32 * np.abs(y))
    return out, tol + 1e-5 * EPS32 * np.abs(out).max()


@pytest.mark.parametrize("n_tok", [1, 3, 8])
def test_emulated_moe_matches_reference_and_cpu(n_tok: int) -> None:
    raw, dense = make_experts(seed=10)
    rng = np.random.default_rng(n_tok)
    x = (0.02 * rng.standard_normal((n_tok, N_EMBD))).astype(np.float32)
    k = 4
    sel = rng.integers(0, len(raw), size=(n_tok, k)).astype(np.int32)
    sel[0, 1] = sel[0, 0]  # same expert twice in one token
    sel[-1, -1] = -1  # skipped slot
    w = rng.uniform(0.05, 1.0, size=(n_tok, k)).astype(np.float32)
    ref, tol = gpu_reference(x, dense, sel, w)
    got = C.emu_moe(x, raw, sel, w, N_FF)
    assert (np.abs(got - ref) <= tol).all(), f"worst err/tol {(np.abs(got - ref) / tol).max():.3g}"
    refs = [kernels.expert_ref(g, u, d, (tg, tu, td), N_FF, N_EMBD) for g, u, d, tg, tu, td in raw]
    cpu = kernels.moe_ffn(x, refs, sel, w)
    _, cpu_tol = cpu_reference(x, dense, sel, w)
    assert (np.abs(got - cpu) <= tol + cpu_tol).all()
    base = rng.standard_normal(x.shape).astype(np.float32)
    acc = C.emu_moe(x, raw, sel, w, N_FF, True, base)
    assert (np.abs(acc - (base + ref)) <= tol + 4 * EPS32 * np.abs(base)).all()


def test_emulated_moe_all_skipped_and_bad_arguments() -> None:
    raw, _ = make_experts(seed=20)
    x = np.ones((2, N_EMBD), np.float32)
    assert (C.emu_moe(x, raw, -np.ones((2, 3), np.int32), np.ones((2, 3), np.float32), N_FF) == 0).all()
    with pytest.raises(ValueError, match="out of range"):
        C.emu_moe(x, raw, np.full((2, 3), 99, np.int32), np.ones((2, 3), np.float32), N_FF)
    bad = [(raw[0][0][:-1],) + raw[0][1:]]
    with pytest.raises(ValueError, match="wrong size"):
        C.emu_moe(x, bad, np.zeros((2, 1), np.int32), np.ones((2, 1), np.float32), N_FF)


@pytest.mark.parametrize("qtype", [T.Q4_K, T.IQ2_XXS, T.Q8_0, T.TQ1_0, T.F16], ids=lambda t: t.name)
def test_emulated_dequant_tile_bit_exact(qtype: T) -> None:
    """Dequantize-to-tile (prompt GEMMs) decodes with decode.h: bit-identical to the CPU dequantizer."""
    from kimi_runtime import quant

    bs = GGML_QUANT_SIZES[qtype][0]
    rows, cols = 7, 2 * max(bs, 32)
    raw = random_weights(qtype, rows, cols, seed=4)
    full = quant.dequantize(raw, qtype, (rows, cols))
    tile = C.emu_dequant_tile(raw, int(qtype), rows, cols, 2, 6, 0)
    assert np.array_equal(tile.view(np.uint32), full[2:6].view(np.uint32))
    bf = C.emu_dequant_tile(raw, int(qtype), rows, cols, 1, 7, 2)
    ref = quant.dequantize(raw, qtype, (rows, cols), "bfloat16")[1:7].view(__import__("torch").int16).numpy()
    assert np.array_equal(bf.view(np.int16), ref)
    with pytest.raises(ValueError):
        C.emu_dequant_tile(raw, int(qtype), rows, cols, 3, 9, 0)
