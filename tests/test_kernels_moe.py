"""Fused MoE FFN against a float64 numpy reference of sum_e w_e * down_e(silu(gate_e x) * up_e x),
with mixed formats, duplicate experts across tokens and skipped slots, on every ISA path.

Tolerance: propagated from the gemv bound (see test_kernels_gemv.py). With e_g, e_u the bounds on
the gate/up outputs, |d silu(g)| <= 1.1 |dg|, so |dh| <= 1.1 e_g (|u| + e_u) + (|silu g| + 1.1 e_g) e_u;
down then adds sum_j |W_dj| |dh_j| plus its own activation quantization of h (amax(h_block)/254 per
value, h taken as the reference plus its bound) and the float accumulation term.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from kimi_runtime import kernels
from test_kernels_gemv import EPS32, ISAS, Q8A32, dequant, isa, random_weights  # noqa: F401 (isa: fixture)

N_EMBD, N_FF = 512, 256
# (gate/up type, down type) per expert: Kimi-like dynamic mixes, one dequant-path format.
RECIPES = [(T.Q4_K, T.Q6_K), (T.IQ2_XXS, T.Q2_K), (T.Q8_0, T.Q8_0), (T.IQ3_S, T.Q4_0), (T.IQ1_S, T.Q5_K)]


def make_experts(seed: int):
    refs, dense = [], []
    for i, (tgu, td) in enumerate(RECIPES):
        g = random_weights(tgu, N_FF, N_EMBD, seed + 3 * i)
        u = random_weights(tgu, N_FF, N_EMBD, seed + 3 * i + 1)
        d = random_weights(td, N_EMBD, N_FF, seed + 3 * i + 2)
        refs.append(kernels.expert_ref(g, u, d, (tgu, tgu, td), N_FF, N_EMBD))
        dense.append((dequant(g, tgu, N_FF, N_EMBD), dequant(u, tgu, N_FF, N_EMBD), dequant(d, td, N_EMBD, N_FF), tgu, td))
    return refs, dense


def act_err(x: np.ndarray, qtype: T) -> np.ndarray:
    """Per-value bound on the activation quantization error for a weight type (0 for float paths)."""
    if "int8" not in kernels.kernel_path(qtype):
        return np.zeros_like(x)
    qk = 32 if qtype in Q8A32 else 256
    amax = np.abs(x).reshape(*x.shape[:-1], -1, qk).max(axis=-1)
    return np.repeat(amax, qk, axis=-1) / 254.0


def bound_dot(w: np.ndarray, x: np.ndarray, dx: np.ndarray, qtype: T) -> np.ndarray:
    """|error| bound of the kernel's w @ x when x itself is known to +-dx."""
    xa = np.abs(x) + dx
    blocks = w.shape[1] // GGML_QUANT_SIZES[qtype][0]
    return np.abs(w) @ (dx + act_err(xa, qtype) * (1 + 1e-6)) + (blocks + 16) * EPS32 * (np.abs(w) @ xa)


def reference(x, dense, sel, w):
    out = np.zeros(x.shape, np.float64)
    tol = np.zeros(x.shape, np.float64)
    for t in range(x.shape[0]):
        xt = x[t].astype(np.float64)
        for j in range(sel.shape[1]):
            e = sel[t, j]
            if e < 0:
                continue
            G, U, D, tgu, td = dense[e]
            g, u = G @ xt, U @ xt
            eg, eu = bound_dot(G, xt, 0 * xt, tgu), bound_dot(U, xt, 0 * xt, tgu)
            s = g / (1 + np.exp(-g))
            h = s * u
            dh = 1.1 * eg * (np.abs(u) + eu) + (np.abs(s) + 1.1 * eg) * eu
            out[t] += w[t, j] * (D @ h)
            tol[t] += abs(w[t, j]) * bound_dot(D, h, dh, td)
    return out, tol + 1e-5 * EPS32 * np.abs(out).max()


@pytest.mark.parametrize("n_tok", [1, 3, 6])
def test_moe_matches_reference(n_tok: int, isa: str) -> None:
    refs, dense = make_experts(seed=10)
    rng = np.random.default_rng(n_tok)
    x = (0.02 * rng.standard_normal((n_tok, N_EMBD))).astype(np.float32)  # gate outputs O(1): silu's curved part
    k = 4
    sel = rng.integers(0, len(refs), size=(n_tok, k)).astype(np.int32)
    sel[0, 1] = sel[0, 0]  # same expert twice in one token
    sel[-1, -1] = -1  # skipped slot
    w = rng.uniform(0.05, 1.0, size=(n_tok, k)).astype(np.float32)
    ref, tol = reference(x, dense, sel, w)
    got = kernels.moe_ffn(x, refs, sel, w)
    assert ((np.abs(got - ref) <= tol).all()), f"worst err/tol {(np.abs(got - ref) / tol).max():.3g}"
    # accumulate adds onto out; torch tensors cross zero-copy.
    base = rng.standard_normal(x.shape).astype(np.float32)
    out = torch.from_numpy(base.copy())
    kernels.moe_ffn(torch.from_numpy(x), refs, torch.from_numpy(sel), torch.from_numpy(w), out=out, accumulate=True)
    assert (np.abs(out.numpy() - (base + ref)) <= tol + 4 * EPS32 * np.abs(base)).all()


def test_all_skipped_and_address_refs() -> None:
    refs, dense = make_experts(seed=20)
    x = np.random.default_rng(1).standard_normal((2, N_EMBD)).astype(np.float32)
    sel = -np.ones((2, 3), np.int32)
    np.testing.assert_array_equal(kernels.moe_ffn(x, refs, sel, np.ones((2, 3), np.float32)), 0.0)
    # (address, nbytes) refs, as the expert cache hands out slots, give identical results.
    g = random_weights(T.Q4_K, N_FF, N_EMBD, 1)
    u = random_weights(T.Q4_K, N_FF, N_EMBD, 2)
    d = random_weights(T.Q6_K, N_EMBD, N_FF, 3)
    by_buf = kernels.expert_ref(g, u, d, (T.Q4_K, T.Q4_K, T.Q6_K), N_FF, N_EMBD)
    by_addr = kernels.expert_ref(*((a.ctypes.data, a.nbytes) for a in (g, u, d)), ("q4_k", "q4_k", "q6_k"), N_FF, N_EMBD)
    sel1 = np.zeros((2, 1), np.int32)
    w1 = np.full((2, 1), 0.5, np.float32)
    np.testing.assert_array_equal(kernels.moe_ffn(x, [by_buf], sel1, w1), kernels.moe_ffn(x, [by_addr], sel1, w1))


def test_moe_equals_composed_gemm() -> None:
    """One expert, one token: the fused call equals gemm(gate), gemm(up), silu*up, gemm(down) bit for bit
    is not required (different chunking), but it must agree to float rounding."""
    g = random_weights(T.Q8_0, N_FF, N_EMBD, 4)
    u = random_weights(T.Q8_0, N_FF, N_EMBD, 5)
    d = random_weights(T.Q8_0, N_EMBD, N_FF, 6)
    x = (0.02 * np.random.default_rng(2).standard_normal((1, N_EMBD))).astype(np.float32)
    gv = kernels.gemm(g, T.Q8_0, N_FF, N_EMBD, x)
    h = (gv / (1 + np.exp(-gv)) * kernels.gemm(u, T.Q8_0, N_FF, N_EMBD, x)).astype(np.float32)
    y = kernels.gemm(d, T.Q8_0, N_EMBD, N_FF, h)
    got = kernels.moe_ffn(x, [kernels.expert_ref(g, u, d, T.Q8_0, N_FF, N_EMBD)], np.zeros((1, 1), np.int32),
                          np.ones((1, 1), np.float32))
    np.testing.assert_allclose(got, y, rtol=1e-5, atol=1e-5 * np.abs(y).max())


def test_bad_arguments() -> None:
    refs, _ = make_experts(seed=30)
    x = np.zeros((2, N_EMBD), np.float32)
    w = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match="out of range"):
        kernels.moe_ffn(x, refs, np.array([[0, 9], [1, 2]], np.int32), w)
    with pytest.raises(ValueError, match="out of range"):
        kernels.moe_ffn(x, refs, np.array([[0, -2], [1, 2]], np.int32), w)
    with pytest.raises(ValueError):
        kernels.moe_ffn(x, refs, np.zeros((3, 2), np.int32), w)
    with pytest.raises(ValueError, match="n_embd"):
        kernels.moe_ffn(np.zeros((2, 256), np.float32), refs, np.zeros((2, 2), np.int32), w)
    g = random_weights(T.Q4_K, N_FF, N_EMBD, 1)
    with pytest.raises(ValueError, match="too short"):
        kernels.expert_ref(g, g, g[:-1], T.Q4_K, N_FF, N_EMBD)
    with pytest.raises(ValueError, match="multiple"):
        kernels.expert_ref(g, g, g, T.Q4_K, N_FF, 300)


def test_moe_batched_bit_identical_to_per_token(isa: str) -> None:
    """A 12-token call (every expert gets >= 4 tokens: multi-row kernels in gate/up and down) must
    equal 12 one-token calls (single-row kernels) exactly, since the multi-row kernels keep each
    row's accumulation order and the weighted sum runs in fixed slot order."""
    refs, _ = make_experts(seed=40)
    rng = np.random.default_rng(5)
    n_tok, k = 12, 3
    x = (0.02 * rng.standard_normal((n_tok, N_EMBD))).astype(np.float32)
    sel = np.array([[(t + j) % len(refs) for j in range(k)] for t in range(n_tok)], np.int32)
    w = rng.uniform(0.05, 1.0, size=(n_tok, k)).astype(np.float32)
    assert min(np.bincount(sel.ravel(), minlength=len(refs))) >= 4
    got = kernels.moe_ffn(x, refs, sel, w)
    for t in range(n_tok):
        np.testing.assert_array_equal(got[t], kernels.moe_ffn(x[t:t + 1], refs, sel[t:t + 1], w[t:t + 1])[0])


KIMI_EXPERT_TYPES = [(T.IQ1_S, T.IQ2_XXS), (T.IQ1_M, T.IQ2_XS), (T.TQ1_0, T.TQ2_0), (T.Q2_K, T.Q3_K),
                     (T.IQ2_S, T.IQ3_XXS), (T.IQ3_S, T.IQ4_XS)]


@pytest.mark.parametrize("types", KIMI_EXPERT_TYPES, ids=lambda t: f"{t[0].name}-{t[1].name}")
def test_tokens_sharing_an_expert_equal_one_token_calls(types, isa: str) -> None:
    """When an expert has several tokens the fused FFN runs the multi-row kernels (one block decode for
    up to 4 tokens); each token's output must still be bit-identical to running that token alone."""
    tgu, td = types
    if isa != "scalar":
        assert kernels.has_multirow(tgu) and kernels.has_multirow(td)
    n_exp, n_tok, k = 3, 7, 2
    refs = []
    for e in range(n_exp):
        g, u = random_weights(tgu, N_FF, N_EMBD, 90 + 3 * e), random_weights(tgu, N_FF, N_EMBD, 91 + 3 * e)
        d = random_weights(td, N_EMBD, N_FF, 92 + 3 * e)
        refs.append(kernels.expert_ref(g, u, d, (tgu, tgu, td), N_FF, N_EMBD))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n_tok, N_EMBD)).astype(np.float32)
    sel = np.stack([rng.permutation(n_exp)[:k] for _ in range(n_tok)]).astype(np.int32)  # ~5 tokens per expert
    w = rng.uniform(0.2, 1.0, (n_tok, k)).astype(np.float32)
    batch = kernels.moe_ffn(x, refs, sel, w)
    assert np.isfinite(batch).all() and np.abs(batch).max() > 0
    for t in range(n_tok):
        one = kernels.moe_ffn(x[t:t + 1], refs, sel[t:t + 1], w[t:t + 1])
        np.testing.assert_array_equal(batch[t], one[0], err_msg=f"token {t}")
