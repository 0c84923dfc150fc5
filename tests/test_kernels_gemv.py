"""Fused dequant-dot gemv/gemm against a float64 reference built from gguf's exact dequantization,
for every format on every ISA path this CPU has, at awkward sizes; bad arguments raise ValueError.

Tolerance (per output element, derived, not tuned). Integer paths quantize each activation block
(32 or 256 values) to int8 with d = amax/127 and round-to-nearest, so |x_j - d*q_j| <= d/2 and the
dot's activation error is at most sum_j |w_j| * amax_b(j) / 254 (c = 1/2 in units of amax/127).
Everything after that is exact integer arithmetic except the float32 per-block scaling and
accumulation, bounded by (blocks + 16) * 2^-24 * sum_j |w_j x_j| (one rounding per block term
and per tree-add level; f16 -> f32 scale conversion is exact). Float / dequant+f32 paths have no
activation quantization, only the accumulation term with blocks = cols.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf import quants as gq

from kimi_runtime import kernels

EPS32 = 2.0 ** -24
# Byte offsets of f16 scale fields per format; random bytes there could be inf/nan or huge.
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ2_XXS: [0], T.IQ2_XS: [0], T.IQ2_S: [0], T.IQ3_XXS: [0], T.IQ3_S: [0],
    T.IQ1_S: [0], T.IQ4_NL: [0], T.IQ4_XS: [0], T.TQ1_0: [52], T.TQ2_0: [64],
}
FORMATS = [T.F32, T.F16, T.BF16] + list(F16_FIELDS) + [T.IQ1_M, T.MXFP4]
Q8A32 = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL, T.MXFP4}
# Formats that must have an integer kernel (the rest may use dequant + f32 dot).
INT8 = Q8A32 | {T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS, T.TQ1_0, T.TQ2_0, T.IQ1_S, T.IQ2_XXS, T.IQ3_XXS,
               T.IQ1_M, T.IQ2_XS, T.IQ2_S, T.IQ3_S}
# SIMD kernels this build must provide (priority formats of Kimi dynamic quants).
SIMD = {T.Q8_0, T.Q4_K, T.Q2_K, T.Q6_K, T.Q3_K, T.Q5_K, T.IQ4_XS, T.IQ1_S, T.TQ1_0, T.TQ2_0, T.IQ2_XXS, T.IQ3_XXS, T.F32, T.F16, T.BF16,
        T.IQ1_M, T.IQ2_XS, T.IQ2_S, T.IQ3_S}
ISAS = [i for i in ("scalar", "avx2", "avx512") if ["scalar", "avx2", "avx512"].index(i)
        <= ["scalar", "avx2", "avx512"].index(kernels.best_isa())]
# (rows, blocks per row, n): rows 1/3/17/129, one block and many, n = 1, 2, 5, 32.
SIZES = [(1, 1, 1), (3, 1, 2), (17, 5, 5), (129, 3, 1), (3, 28, 32), (17, 1, 32), (1, 9, 2)]


def sane_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random-sign f16 scales of magnitude 2^-12..2^-3 (finite, typical of real files), as bits."""
    mag = 2.0 ** rng.uniform(-12, -3, n) * rng.choice([-1.0, 1.0], n)
    return mag.astype(np.float16).view(np.uint16)


def random_weights(qtype: T, rows: int, cols: int, seed: int) -> np.ndarray:
    """rows x cols of random valid blocks (any code bytes, sane scales), flat uint8."""
    rng = np.random.default_rng(seed)
    bs, ts = GGML_QUANT_SIZES[qtype]
    nb = rows * cols // bs
    if qtype == T.F32:
        return rng.standard_normal(nb).astype(np.float32).view(np.uint8)
    if qtype == T.F16:
        return rng.standard_normal(nb).astype(np.float16).view(np.uint8)
    if qtype == T.BF16:
        return (rng.standard_normal(nb).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    raw = rng.integers(0, 256, size=(nb, ts), dtype=np.uint8)
    for off in F16_FIELDS.get(qtype, []):
        raw[:, off:off + 2] = sane_f16(rng, nb).view(np.uint8).reshape(nb, 2)
    if qtype == T.IQ1_M:  # f16 d spread over the top nibbles of the 4 u16 scale words
        d = sane_f16(rng, nb).astype(np.uint16)
        sc = raw[:, 48:56].copy().view(np.uint16)
        for k in range(4):
            sc[:, k] = (sc[:, k] & 0x0FFF) | (((d >> (4 * k)) & 0xF) << 12)
        raw[:, 48:56] = sc.view(np.uint8)
    if qtype == T.MXFP4:
        raw[:, 0] = rng.integers(118, 134, size=nb)
    return raw.reshape(-1)


def dequant(raw: np.ndarray, qtype: T, rows: int, cols: int) -> np.ndarray:
    return gq.dequantize(raw.reshape(rows, -1), qtype).astype(np.float64).reshape(rows, cols)


def tolerance(qtype: T, wd: np.ndarray, x: np.ndarray, path: str) -> np.ndarray:
    """Per-element bound [n, rows] from the module docstring."""
    xd = x.astype(np.float64)
    aw = np.abs(wd)
    acc_blocks = wd.shape[1] // GGML_QUANT_SIZES[qtype][0] if "int8" in path else wd.shape[1]
    tol = (acc_blocks + 16) * EPS32 * (np.abs(xd) @ aw.T)
    if "int8" in path:
        qk = 32 if qtype in Q8A32 else 256
        amax = np.abs(xd).reshape(x.shape[0], -1, qk).max(axis=2)  # [n, blocks]
        per_val = np.repeat(amax, qk, axis=1) / 254.0  # bound on |x - x_hat| per value
        tol += per_val @ aw.T * (1 + 1e-6)
    return tol + 1e-30


@pytest.fixture(params=ISAS)
def isa(request):
    kernels.set_isa(request.param)
    yield request.param
    kernels.set_isa("auto")


@pytest.mark.parametrize("qtype", FORMATS, ids=lambda t: t.name)
def test_gemm_matches_reference(qtype: T, isa: str) -> None:
    bs = GGML_QUANT_SIZES[qtype][0]
    bs = 32 if bs == 1 else bs  # float formats: "blocks" of 32 to get cols like the others
    path = kernels.kernel_path(qtype)
    if qtype in INT8:
        assert path.endswith("int8"), path
    if isa != "scalar" and qtype in SIMD:
        assert path.startswith(isa), path
    for k, (rows, nblk, n) in enumerate(SIZES):
        cols = nblk * bs
        raw = random_weights(qtype, rows, cols, seed=1000 * k + int(qtype))
        x = np.random.default_rng(k).standard_normal((n, cols)).astype(np.float32)
        wd = dequant(raw, qtype, rows, cols)
        ref = x.astype(np.float64) @ wd.T
        got = kernels.gemm(raw, qtype, rows, cols, x)
        assert got.shape == (n, rows) and got.dtype == np.float32
        err = np.abs(got - ref)
        tol = tolerance(qtype, wd, x, path)
        assert (err <= tol).all(), f"{rows}x{cols} n={n}: worst err/tol {(err / tol).max():.3g}"


@pytest.mark.parametrize("qtype", sorted(INT8 | {T.F16}, key=int), ids=lambda t: t.name)
def test_isa_paths_agree(qtype: T) -> None:
    """SIMD paths compute the same integer dots as scalar; only float summation order differs."""
    rows, cols = 33, 4 * 256
    raw = random_weights(qtype, rows, cols, seed=7)
    x = np.random.default_rng(3).standard_normal((4, cols)).astype(np.float32)
    outs = {}
    try:
        for i in ISAS:
            kernels.set_isa(i)
            outs[i] = kernels.gemm(raw, qtype, rows, cols, x)
    finally:
        kernels.set_isa("auto")
    scale = np.abs(x) @ np.abs(dequant(raw, qtype, rows, cols)).T
    for i, o in outs.items():
        np.testing.assert_array_less(np.abs(o - outs["scalar"]), 64 * EPS32 * scale + 1e-30, err_msg=i)


def test_gemv_torch_batches_and_dense_path() -> None:
    qtype, rows, cols = T.Q4_K, 19, 512
    raw = random_weights(qtype, rows, cols, seed=5)
    wd = dequant(raw, qtype, rows, cols)
    rng = np.random.default_rng(9)
    x1 = rng.standard_normal(cols).astype(np.float32)
    y1 = kernels.gemv(raw, qtype, rows, cols, x1)
    assert y1.shape == (rows,)
    assert (np.abs(y1 - wd @ x1) <= tolerance(qtype, wd, x1[None], "int8")[0]).all()
    # n above one native batch (chunked) and above the dense threshold; torch in, torch out.
    for n in (kernels.MAX_BATCH + 7, kernels.DENSE_MIN_ROWS + 3):
        x = rng.standard_normal((n, cols)).astype(np.float32)
        y = kernels.gemm(torch.from_numpy(raw), qtype.name.lower(), rows, cols, torch.from_numpy(x))
        assert isinstance(y, torch.Tensor) and y.shape == (n, rows)
        assert (np.abs(y.numpy() - x @ wd.T) <= tolerance(qtype, wd, x, "int8")).all()
    y3 = kernels.matmul(torch.from_numpy(rng.standard_normal((2, 3, cols)).astype(np.float32)), raw, int(qtype), rows, cols)
    assert tuple(y3.shape) == (2, 3, rows)


def test_thread_counts_agree() -> None:
    qtype, rows, cols = T.Q8_0, 301, 2048
    raw = random_weights(qtype, rows, cols, seed=2)
    x = np.random.default_rng(4).standard_normal((3, cols)).astype(np.float32)
    old = kernels.num_threads()
    try:
        kernels.set_num_threads(1)
        a = kernels.gemm(raw, qtype, rows, cols, x)
        kernels.set_num_threads(3)
        b = kernels.gemm(raw, qtype, rows, cols, x)
    finally:
        kernels.set_num_threads(old)
    np.testing.assert_array_equal(a, b)  # same kernel per row, rows split only: bit-identical


def test_weights_from_memmap_no_copy(tmp_path) -> None:
    qtype, rows, cols = T.Q6_K, 5, 256
    raw = random_weights(qtype, rows, cols, seed=8)
    p = tmp_path / "w.bin"
    p.write_bytes(b"\0" * 7 + raw.tobytes())
    mm = np.memmap(p, dtype=np.uint8, mode="r")
    x = np.ones((1, cols), np.float32)
    np.testing.assert_array_equal(kernels.gemm(mm[7:], qtype, rows, cols, x), kernels.gemm(raw, qtype, rows, cols, x))


def test_bad_arguments_raise_value_error() -> None:
    raw = random_weights(T.Q4_K, 2, 256, seed=1)
    x = np.zeros((1, 256), np.float32)
    with pytest.raises(ValueError, match="too short"):
        kernels.gemm(raw[:-1], T.Q4_K, 2, 256, x)
    with pytest.raises(ValueError, match="multiple"):
        kernels.gemm(raw, T.Q4_K, 1, 128, np.zeros((1, 128), np.float32))
    with pytest.raises(ValueError, match="unknown"):
        kernels.gemm(raw, "Q9_K", 2, 256, x)
    with pytest.raises(ValueError, match="unknown"):
        kernels.gemm(raw, 77, 2, 256, x)
    with pytest.raises(ValueError, match="float32"):
        kernels.gemm(raw, T.Q4_K, 2, 256, x.astype(np.float64))
    with pytest.raises(ValueError, match="shape"):
        kernels.gemm(raw, T.Q4_K, 2, 256, np.zeros((1, 512), np.float32))
    with pytest.raises(ValueError):
        kernels.gemm(raw, T.Q8_K, 2, 256, x)  # activation-only format: no weight kernel
    with pytest.raises(ValueError):
        kernels.set_isa("neon")
    # The native layer checks sizes itself too, not only the Python face.
    from kimi_runtime._native import C

    with pytest.raises(ValueError, match="too short"):
        C.gemm(raw[:10], int(T.Q4_K), 2, 256, x, np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError):
        C.gemm(raw, int(T.Q4_K), 2, 256, x, np.zeros((1, 3), np.float32))


def test_membw_probe() -> None:
    from kimi_runtime._native import C

    gbs = C.membw_read_gbs(8 << 20, 2)
    assert np.isfinite(gbs) and 0.1 < gbs < 10_000  # GB/s; any real machine falls in this range
    with pytest.raises(ValueError):
        C.membw_read_gbs(1000, 1)


# Formats with a multi-row kernel on both SIMD builds (the expert formats of real Kimi files among them).
MULTIROW = [T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K, T.Q2_K, T.Q3_K, T.IQ4_XS, T.IQ1_S, T.IQ1_M, T.IQ2_XXS, T.IQ2_XS,
            T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.TQ1_0, T.TQ2_0]


@pytest.mark.parametrize("qtype", MULTIROW, ids=lambda t: t.name)
def test_multirow_bit_identical_to_single_row(qtype: T, isa: str) -> None:
    """Batches use the multi-row kernels (one weight-block decode for up to 4 activation rows),
    which keep each row's accumulation order: every output must equal the n=1 call exactly.
    n = 11 covers full groups of 4 and a remainder of 3."""
    from kimi_runtime._native import C

    if isa != "scalar":
        assert kernels.has_multirow(qtype), f"{qtype.name} has no multi-row kernel on {isa}"

    rows, cols, n = 9, 3 * 256, 11
    raw = random_weights(qtype, rows, cols, seed=31 + int(qtype))
    x = np.random.default_rng(17).standard_normal((n, cols)).astype(np.float32)
    batch = np.empty((n, rows), np.float32)
    C.gemm(raw, int(qtype), rows, cols, x, batch)
    for i in range(n):
        one = np.empty((1, rows), np.float32)
        C.gemm(raw, int(qtype), rows, cols, x[i:i + 1], one)
        np.testing.assert_array_equal(batch[i], one[0], err_msg=f"row {i}")
    wd = dequant(raw, qtype, rows, cols)
    assert (np.abs(batch - x.astype(np.float64) @ wd.T) <= tolerance(qtype, wd, x, "int8")).all()
