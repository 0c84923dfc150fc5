"""Quantizers: Q8_0 / Q4_0 / F16 / BF16 bit-identical to gguf.quants.quantize; Q4_K / Q6_K (ggml's
reference algorithms, which gguf lacks) within their format's step on round trip; Q8_K equal to an
independent numpy statement of ggml's activation quantizer."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from kimi_runtime import quant
from kimi_runtime._native import C

SHAPES = [(1, 256), (3, 512), (7, 256), (33, 768)]


def data(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Normal values with per-row scales over several decades, plus hard cases in the first rows."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) * np.float32(10.0) ** rng.uniform(-4, 2, (*shape[:-1], 1)).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    flat[0, :32] = 0.0  # an all-zero block
    if flat.shape[0] > 1:  # at the row's own scale, so k-quant sub-blocks stay comparable
        s = np.float32(np.abs(flat[1, 64:]).max() / 16)
        flat[1, :32] = (np.arange(32, dtype=np.float32) - 15.5) * s  # halves: ties in rounding
        flat[1, 32:64] = -3.0 * s  # constant block, negative max
    return x


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0, T.F16, T.BF16], ids=lambda t: t.name)
def test_bit_exact_to_gguf(qtype: T, shape: tuple[int, int]) -> None:
    x = data(shape, seed=int(qtype) + shape[0])
    got = quant.quantize(x, qtype)
    ref = np.ascontiguousarray(gq.quantize(x, qtype)).view(np.uint8).reshape(got.shape)
    assert np.array_equal(got, ref)


def test_f32_is_identity() -> None:
    x = data((3, 256), 1)
    assert np.array_equal(quant.quantize(x, "F32").view(np.float32), x)


def _half_ulp(v: np.ndarray) -> np.ndarray:
    """Half the f16 spacing at |v| (2^-25 for subnormals): the error of storing v as f16."""
    return np.maximum(np.float32(2.0 ** -25), np.abs(v) * np.float32(2.0 ** -11))


def _k_steps(q: np.ndarray, qtype: T, n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per weight: the step (d * sub-block scale), whether its level is an end level (clipped), and
    the error bound for clipped weights. Fields are unpacked with gguf's own helpers, so the bound
    does not trust the code under test. ggml's scale search may clip the extreme weights by up to
    one step (it tries scales up to (nmax+1)/range), and rounding the sub-block scale to an integer
    multiple of d costs up to d/2 per level at the end level (plus dmin/2 for Q4_K's min), and
    storing d as f16 (often subnormal for real weights) up to half an f16 ulp per scale unit."""
    blocks = q.reshape(-1, gq.GGML_QUANT_SIZES[qtype][1])
    n = blocks.shape[0]
    if qtype == T.Q4_K:
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
        dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
        sc, _ = gq.Q4_K.get_scale_min(blocks[:, 4:16])
        step = np.repeat(d * sc.astype(np.float32), 32, axis=1)
        qs = blocks[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
        level = (qs & 0xF).reshape(n, 256).astype(np.int32)
        clamped = (level == 0) | (level == 15)
        clip_bound = step + 15 * (0.5 * d + 63 * _half_ulp(d)) + 0.5 * dmin + 63 * _half_ulp(dmin)
    else:
        d = blocks[:, 208:210].copy().view(np.float16).astype(np.float32)
        sc = blocks[:, 192:208].view(np.int8).astype(np.float32)
        step = np.abs(np.repeat(d * sc, 16, axis=1))
        ql = blocks[:, :128].reshape(n, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
        qh = blocks[:, 128:192].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
        level = ((ql & 0xF).reshape(n, 256) | ((qh & 3).reshape(n, 256) << 4)).astype(np.int32) - 32
        clamped = (level == -32) | (level == 31)
        clip_bound = step + 32 * (0.5 * np.abs(d) + 128 * _half_ulp(d))
    return step.reshape(n_rows, -1), clamped.reshape(n_rows, -1), clip_bound.reshape(n_rows, -1)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_k_quant_round_trip_within_step(qtype: T, shape: tuple[int, int]) -> None:
    x = data(shape, seed=7 * shape[0] + int(qtype))
    q = quant.quantize(x, qtype)
    assert q.shape == (shape[0], quant.row_bytes(qtype, shape[1]))
    y = gq.dequantize(q, qtype).reshape(shape)  # decoded by gguf, not by us
    err = np.abs(y - x)
    step, clamped, clip_bound = _k_steps(q, qtype, shape[0])
    tol = np.float32(1e-5) * (np.abs(x) + step)  # f32 rounding of the scale products
    # Interior levels: rounded to the nearest level, so within half a step.
    assert np.all(err[~clamped] <= (0.5 * step + tol)[~clamped])
    assert np.all(err[clamped] <= (clip_bound + tol)[clamped])
    # Overall quality for normal data (ggml's reference reaches ~0.07 sigma for Q4_K, ~0.02 Q6_K).
    norm = x.reshape(shape[0], -1, 256)
    sig = np.sqrt((norm ** 2).mean(axis=-1, keepdims=True)) + 1e-30
    rel = np.sqrt((((y - x).reshape(norm.shape) / sig) ** 2).mean())
    assert rel < (0.12 if qtype == T.Q4_K else 0.035)


def q8_k_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml quantize_row_q8_K_ref in numpy: iscale = -127/max (max = signed value of largest |x|,
    first occurrence), q = min(127, round-half-even(iscale*x)), d = 1/iscale, bsums of 16."""
    b = x.reshape(-1, 256)
    idx = np.abs(b).argmax(axis=1)
    mx = b[np.arange(b.shape[0]), idx][:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(mx != 0, np.float32(-127.0) / mx, np.float32(0)).astype(np.float32)
        q = np.minimum(127, np.rint(iscale * b)).astype(np.int8)
        d = np.where(mx != 0, np.float32(1.0) / iscale, np.float32(0)).astype(np.float32)
    bsums = q.reshape(-1, 16, 16).astype(np.int16).sum(axis=-1, dtype=np.int16)
    return d.ravel(), q, bsums


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_q8_k_matches_ggml_rule(shape: tuple[int, int]) -> None:
    x = data(shape, seed=shape[0] + 99)
    q = quant.quantize(x, "Q8_K").reshape(-1, 292)
    d_ref, q_ref, bs_ref = q8_k_reference(x)
    assert np.array_equal(q[:, :4].copy().view(np.float32).ravel().view(np.uint32), d_ref.view(np.uint32))
    assert np.array_equal(q[:, 4:260].view(np.int8), q_ref)
    assert np.array_equal(q[:, 260:].copy().view(np.int16), bs_ref)
    y = quant.dequantize(q, "Q8_K", shape)
    assert np.all(np.abs(y - x) <= 0.5 * np.abs(np.repeat(d_ref, 256).reshape(shape)) * (1 + 1e-5) + 1e-30)


def test_threads_do_not_change_results() -> None:
    x = data((13, 1024), 3)
    old = C.num_threads()
    try:
        C.set_num_threads(1)
        one = [quant.quantize(x, t) for t in ("Q4_K", "Q6_K", "Q8_K")]
        C.set_num_threads(3)
        three = [quant.quantize(x, t) for t in ("Q4_K", "Q6_K", "Q8_K")]
    finally:
        C.set_num_threads(old)
    assert all(np.array_equal(a, b) for a, b in zip(one, three))


def test_nd_input_and_float64_converted() -> None:
    x = data((2, 3, 256), 4)
    q = quant.quantize(x.astype(np.float64), "Q8_0")
    assert q.shape == (2, 3, 272)
    assert np.array_equal(q, quant.quantize(x, "Q8_0"))


def test_bad_arguments() -> None:
    x = data((2, 256), 5)
    with pytest.raises(ValueError, match="no quantizer"):
        quant.quantize(x, "Q2_K")
    with pytest.raises(ValueError, match="multiple"):
        quant.quantize(x[:, :200].copy(), "Q4_K")
    with pytest.raises(ValueError, match="contiguous"):
        quant.quantize(np.asfortranarray(np.repeat(x, 2, axis=0)), "Q8_0")
    bad = x.copy()
    bad[0, 3] = np.inf
    with pytest.raises(ValueError, match="inf"):
        quant.quantize(bad, "Q8_0")
    with pytest.raises(ValueError):
        quant.quantize(np.ones((2, 256), np.int32), "Q8_0")
    with pytest.raises(ValueError):
        quant.quantize(x, "nope")
    out = np.empty(2 * 272, np.uint8)
    with pytest.raises(ValueError):  # native checks: output too small, input too short
        C.quantize(x.reshape(-1), int(T.Q8_0), 2, 256, out[:-1])
    with pytest.raises(ValueError):
        C.quantize(x.reshape(-1)[:-1], int(T.Q8_0), 2, 256, out)
