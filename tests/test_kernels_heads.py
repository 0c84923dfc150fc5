"""Batched-heads gemm (kernels.gemm_heads, one native call for all of MLA's k_b / v_b heads) against a
float64 reference from gguf's exact dequantization, with the per-element tolerance of
tests/test_kernels_gemv.py (same row kernels); HeadLinear equal to its old one-call-per-head form;
bad arguments raise ValueError."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from kimi_runtime import kernels
from kimi_runtime.model.linear import HeadLinear

from test_kernels_gemv import ISAS, dequant, isa, random_weights, tolerance  # noqa: E402,F401 (isa: fixture)

# Float, 32-block int8, 256-block int8 and a grid i-quant (whichever path this build gives it).
FORMATS = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_K, T.Q2_K, T.Q6_K, T.IQ4_XS, T.IQ2_XXS, T.IQ1_S]
# (heads, rows, blocks per row, n): one head, many heads with few rows, rows over one 64-row chunk,
# enough work to go through the thread pool (>= 64 KiB) and n up to a decode batch.
SIZES = [(1, 1, 1, 1), (3, 5, 2, 2), (16, 3, 1, 1), (2, 130, 4, 3), (5, 70, 8, 8), (7, 33, 16, 1)]


def reference(raw: np.ndarray, qtype: T, heads: int, rows: int, cols: int, x: np.ndarray):
    """(float64 [H, n, rows] result, per-head dequantized weights [H, rows, cols])."""
    wd = dequant(raw, qtype, heads * rows, cols).reshape(heads, rows, cols)
    return np.einsum("hnc,hrc->hnr", x.astype(np.float64), wd), wd


@pytest.mark.parametrize("qtype", FORMATS, ids=lambda t: t.name)
def test_gemm_heads_matches_reference(qtype: T, isa: str) -> None:
    bs = GGML_QUANT_SIZES[qtype][0]
    bs = 32 if bs == 1 else bs
    path = kernels.kernel_path(qtype)
    for k, (heads, rows, nblk, n) in enumerate(SIZES):
        cols = nblk * bs
        raw = random_weights(qtype, heads * rows, cols, seed=77 * k + int(qtype))
        x = np.random.default_rng(k).standard_normal((heads, n, cols)).astype(np.float32)
        ref, wd = reference(raw, qtype, heads, rows, cols, x)
        got = kernels.gemm_heads(raw, qtype, heads, rows, cols, x)
        assert got.shape == (heads, n, rows) and got.dtype == np.float32
        for h in range(heads):
            err = np.abs(got[h] - ref[h])
            tol = tolerance(qtype, wd[h], x[h], path)
            assert (err <= tol).all(), f"head {h} of {heads}x{rows}x{cols} n={n}: worst err/tol {(err / tol).max():.3g}"


@pytest.mark.parametrize("qtype", [T.F32, T.Q8_0, T.Q4_K], ids=lambda t: t.name)
def test_gemm_heads_equals_per_head_gemm(qtype: T) -> None:
    """Same row kernels and activation quantization as gemm, so each head's result is bit-identical."""
    heads, rows, cols, n = 6, 40, 512, 3
    raw = random_weights(qtype, heads * rows, cols, seed=11)
    x = np.random.default_rng(4).standard_normal((heads, n, cols)).astype(np.float32)
    got = kernels.gemm_heads(raw, qtype, heads, rows, cols, x)
    hb = raw.nbytes // heads
    for h in range(heads):
        np.testing.assert_array_equal(got[h], kernels.gemm(raw[h * hb:(h + 1) * hb], qtype, rows, cols, x[h]))


def test_gemm_heads_torch_in_torch_out() -> None:
    heads, rows, cols = 4, 9, 64
    w = torch.randn(heads, rows, cols, generator=torch.Generator().manual_seed(1))
    x = torch.randn(cols, heads, 2, generator=torch.Generator().manual_seed(2)).permute(1, 2, 0)  # non-contiguous
    got = kernels.gemm_heads(w.numpy().view(np.uint8), T.F32, heads, rows, cols, x)
    assert isinstance(got, torch.Tensor)
    torch.testing.assert_close(got, torch.bmm(x, w.transpose(1, 2)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("qtype", [T.F32, T.Q8_0], ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 5])
def test_head_linear_unchanged(qtype: T, n: int, monkeypatch) -> None:
    """HeadLinear through the one batched call equals the previous one-gemm-call-per-head form."""
    heads, rows, cols = 16, 96, 128
    raw = random_weights(qtype, heads * rows, cols, seed=5)
    hl = HeadLinear(raw, qtype, heads, rows, cols)
    assert hl._gemm_heads is not None
    x = torch.randn(heads, n, cols, generator=torch.Generator().manual_seed(n))
    new = hl(x)
    monkeypatch.setattr(hl, "_gemm_heads", None)  # the per-head loop it replaced
    old = hl(x)
    torch.testing.assert_close(new, old, rtol=0, atol=0)
    _, wd = reference(raw, qtype, heads, rows, cols, x.numpy())
    path = kernels.kernel_path(qtype)
    ref = np.einsum("hnc,hrc->hnr", x.numpy().astype(np.float64), wd)
    for h in range(heads):
        assert (np.abs(new[h].numpy() - ref[h]) <= tolerance(qtype, wd[h], x[h].numpy(), path)).all()


def test_gemm_heads_bad_args() -> None:
    heads, rows, cols = 3, 4, 32
    raw = random_weights(T.Q8_0, heads * rows, cols, seed=0)
    x = np.zeros((heads, 1, cols), np.float32)
    bad = [
        (raw[:-1], T.Q8_0, heads, rows, cols, x),  # one byte short
        (raw, T.Q8_0, heads + 1, rows, cols, np.zeros((heads + 1, 1, cols), np.float32)),  # too few heads
        (raw, T.Q8_0, 0, rows, cols, x[:0]),  # no heads
        (raw, T.Q8_0, heads, -1, cols, x),  # negative rows
        (raw, T.Q8_0, heads, rows, 33, np.zeros((heads, 1, 33), np.float32)),  # not a block multiple
        (raw, 1234, heads, rows, cols, x),  # unknown type
        (raw, T.Q8_0, heads, rows, cols, x[0]),  # 2-D x
        (raw, T.Q8_0, heads, rows, cols, x[:2]),  # wrong head count in x
        (raw, T.Q8_0, heads, rows, cols, np.zeros((heads, 1, 64), np.float32)),  # wrong cols in x
        (raw, T.Q8_0, heads, rows, cols, x.astype(np.float64)),  # wrong dtype
        (raw, T.Q8_0, heads, rows, cols, np.zeros((heads, 0, cols), np.float32)),  # no rows
        (raw, T.Q8_0, heads, rows, cols, [[0.0] * cols] * heads),  # not an array
    ]
    for args in bad:
        with pytest.raises(ValueError):
            kernels.gemm_heads(*args)


def test_native_gemm_heads_checks_before_touching_memory() -> None:
    """The binding itself (bypassing kernels.py's checks) rejects short buffers and bad shapes."""
    from kimi_runtime._native import C

    heads, rows, cols = 2, 8, 32
    raw = random_weights(T.Q8_0, heads * rows, cols, seed=1)
    x = np.zeros((heads, 2, cols), np.float32)
    out = np.empty((heads, 2, rows), np.float32)
    C.gemm_heads(raw, int(T.Q8_0), heads, rows, cols, x, out)  # valid call works
    with pytest.raises(ValueError):
        C.gemm_heads(raw[: raw.nbytes // 2], int(T.Q8_0), heads, rows, cols, x, out)
    with pytest.raises(ValueError):  # heads disagreeing with x
        C.gemm_heads(raw, int(T.Q8_0), heads + 1, rows, cols, x, out)
    with pytest.raises(ValueError):
        C.gemm_heads(raw, int(T.Q8_0), heads, rows, cols, x, np.empty((heads, 2, rows + 1), np.float32))
    with pytest.raises(ValueError):
        C.gemm_heads(raw, int(T.Q8_0), heads, rows, cols, x, np.empty((heads, 2, rows), np.float64))

