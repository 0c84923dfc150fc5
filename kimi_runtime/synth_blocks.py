"""Seeded random tensor data for synthetic models: floats, floats quantized by gguf-py, or random
*valid* quantized blocks for the formats gguf-py cannot quantize (K-quants, i-quants, ternary, MXFP4).

Random blocks start as random bytes; then the fields that carry scale are rewritten so the weights
are zero-mean with a chosen standard deviation: the f16 super-scale `d` gets a per-block jitter and,
for formats without a min, a random sign; formats with mins (Q2_K/Q4_K/Q5_K, Q4_1/Q5_1) get
min = scale * mean(q) so each sub-block is centred. Each format's std at d = 1 is measured once by
dequantizing a sample with gguf-py."""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, Optional

import numpy as np
from gguf import quants

from kimi_runtime.gguf.format import QType, block_info

# formats gguf-py quantizes from floats (we use them where a float source exists)
QUANTIZABLE = (QType.Q8_0, QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1)
FLOAT_TYPES = (QType.F32, QType.F16, QType.BF16)

_JITTER = (0.75, 1.25)
_JITTER_RMS = float(np.sqrt((_JITTER[1] ** 3 - _JITTER[0] ** 3) / (3 * (_JITTER[1] - _JITTER[0]))))


def _set_f16(b: np.ndarray, off: int, v: np.ndarray) -> None:
    b[:, off:off + 2] = v.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _pack_k_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """8 six-bit scales and 8 six-bit mins -> the 12-byte Q4_K/Q5_K field (inverse of get_scale_min)."""
    out = np.empty((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (m[:, 0:4] & 0x3F) | ((m[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((m[:, 4:8] & 0x0F) << 4)
    return out


# Valid ternary bytes, one entry per digit combination: TQ1_0 packs 5 trits (qs) or 4 trits (qh)
# per byte as ceil(v * 256 / 243); TQ2_0 packs 4 trits (0..2) as 2-bit fields.
_TQ1_QS = ((np.arange(243, dtype=np.uint32) * 256 + 242) // 243).astype(np.uint8)
_TQ1_QH = ((np.arange(81, dtype=np.uint32) * 3 * 256 + 242) // 243).astype(np.uint8)
_TQ2 = np.array([sum(((u // 3 ** k) % 3) << (2 * k) for k in range(4)) for u in range(81)], np.uint8)


def _fix_tq1(b: np.ndarray, rng: np.random.Generator) -> None:
    n = b.shape[0]
    b[:, 0:48] = _TQ1_QS[rng.integers(0, 243, size=(n, 48), dtype=np.uint8)]
    b[:, 48:52] = _TQ1_QH[rng.integers(0, 81, size=(n, 4), dtype=np.uint8)]


def _fix_tq2(b: np.ndarray, rng: np.random.Generator) -> None:
    b[:, 0:64] = _TQ2[rng.integers(0, 81, size=(b.shape[0], 64), dtype=np.uint8)]


# Per format: fixup(b, rng) rewrites structure; scale(b, d) writes the scale fields for per-block d.
Fixup = Callable[[np.ndarray, np.random.Generator], None]
Scale = Callable[[np.ndarray, np.ndarray], None]


def _d_at(off: int) -> Scale:
    return lambda b, d: _set_f16(b, off, d)


def _d_min(d_off: int, m_off: int, factor: float) -> Scale:
    def f(b: np.ndarray, d: np.ndarray) -> None:
        _set_f16(b, d_off, d)
        _set_f16(b, m_off, factor * d.astype(np.float16).astype(np.float32))
    return f


def _fix_q2k(b: np.ndarray, rng: np.random.Generator) -> None:
    sc = rng.integers(4, 16, size=(b.shape[0], 16), dtype=np.uint8)
    b[:, 0:16] = sc | (sc << 4)  # min == scale, dmin == 1.5 d: each 16-group is centred


def _fix_q45k(b: np.ndarray, rng: np.random.Generator) -> None:
    sc = rng.integers(16, 64, size=(b.shape[0], 8), dtype=np.uint8)
    b[:, 4:16] = _pack_k_scales(sc, sc)


def _fix_q6k(b: np.ndarray, rng: np.random.Generator) -> None:
    mag = rng.integers(4, 41, size=(b.shape[0], 16)).astype(np.int8)
    sign = np.where(rng.random((b.shape[0], 16)) < 0.5, -1, 1).astype(np.int8)
    b[:, 192:208] = (mag * sign).view(np.uint8)


def _scale_iq1m(b: np.ndarray, d: np.ndarray) -> None:
    bits = d.astype(np.float16).view(np.uint16)
    sc = b[:, 48:56].copy().view("<u2")  # (n, 4)
    for i in range(4):
        sc[:, i] = (sc[:, i] & 0x0FFF) | (((bits >> (4 * i)) & 0xF) << 12)
    b[:, 48:56] = sc.view(np.uint8)


def _scale_mxfp4(b: np.ndarray, d: np.ndarray) -> None:
    # E8M0: w = 2^(e-128) * kvalue; only powers of two are representable
    e = np.clip(np.round(np.log2(np.abs(d))) + 128, 1, 254)
    b[:, 0] = e.astype(np.uint8)


_NOFIX: Fixup = lambda b, rng: None  # noqa: E731

# format -> (fixup, scale writer, whether d takes a random sign)
_FORMATS: dict[QType, tuple[Fixup, Scale, bool]] = {
    QType.Q4_0: (_NOFIX, _d_at(0), True),
    QType.Q5_0: (_NOFIX, _d_at(0), True),
    QType.Q8_0: (_NOFIX, _d_at(0), True),
    QType.Q4_1: (_NOFIX, _d_min(0, 2, -7.5), False),
    QType.Q5_1: (_NOFIX, _d_min(0, 2, -15.5), False),
    QType.Q2_K: (_fix_q2k, _d_min(80, 82, 1.5), False),
    QType.Q3_K: (_NOFIX, _d_at(108), True),
    QType.Q4_K: (_fix_q45k, _d_min(0, 2, 7.5), False),
    QType.Q5_K: (_fix_q45k, _d_min(0, 2, 15.5), False),
    QType.Q6_K: (_fix_q6k, _d_at(208), False),
    QType.IQ2_XXS: (_NOFIX, _d_at(0), True),
    QType.IQ2_XS: (_NOFIX, _d_at(0), True),
    QType.IQ2_S: (_NOFIX, _d_at(0), True),
    QType.IQ3_XXS: (_NOFIX, _d_at(0), True),
    QType.IQ3_S: (_NOFIX, _d_at(0), True),
    QType.IQ1_S: (_NOFIX, _d_at(0), True),
    QType.IQ1_M: (_NOFIX, _scale_iq1m, True),
    QType.IQ4_NL: (_NOFIX, _d_at(0), True),
    QType.IQ4_XS: (_NOFIX, _d_at(0), True),
    QType.TQ1_0: (_fix_tq1, _d_at(52), True),
    QType.TQ2_0: (_fix_tq2, _d_at(64), True),
    QType.MXFP4: (_NOFIX, _scale_mxfp4, False),
}
RANDOM_BLOCK_TYPES = tuple(_FORMATS)


def _raw_blocks(qtype: QType, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    _, size = block_info(qtype)
    n = n_blocks * size
    b = rng.bit_generator.random_raw((n + 7) // 8).view(np.uint8)[:n].reshape(n_blocks, size)
    _FORMATS[qtype][0](b, rng)
    return b


@lru_cache(maxsize=None)
def unit_std(qtype: QType) -> float:
    """Std of the dequantized weights of this format's random blocks at d = 1 (jitter excluded)."""
    b = _raw_blocks(qtype, 512, np.random.default_rng(12345))
    _FORMATS[qtype][1](b, np.ones(b.shape[0], np.float32))
    w = quants.dequantize(b, qtype)
    return float(np.std(w))


def random_blocks(qtype: QType, n_blocks: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """(n_blocks, type_size) uint8 of valid `qtype` blocks whose weights have about this std."""
    if qtype not in _FORMATS:
        raise ValueError(f"no random-block generator for {qtype.name}")
    fix, scale, signed = _FORMATS[qtype]
    b = _raw_blocks(qtype, n_blocks, rng)
    d = (std / unit_std(qtype) / _JITTER_RMS) * rng.uniform(*_JITTER, size=n_blocks).astype(np.float32)
    if signed:
        d *= np.where(rng.random(n_blocks) < 0.5, -1.0, 1.0).astype(np.float32)
    scale(b, d)
    return b


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_floats(x: np.ndarray, qtype: QType) -> np.ndarray:
    """Encode float32 rows (..., ne0) as `qtype`; returns the raw bytes as uint8 (rows, row_bytes)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows = x.reshape(-1, x.shape[-1])
    if qtype == QType.F32:
        out = rows
    elif qtype == QType.F16:
        out = rows.astype(np.float16)
    elif qtype == QType.BF16:
        out = to_bf16_bits(rows)
    elif qtype in QUANTIZABLE:
        out = quants.quantize(rows, qtype)
    else:
        raise ValueError(f"cannot encode floats as {qtype.name}")
    return np.ascontiguousarray(out).view(np.uint8).reshape(rows.shape[0], -1)


def to_floats(raw: np.ndarray, qtype: QType, ne0: int) -> np.ndarray:
    """Decode raw bytes (rows, row_bytes) to float32 (rows, ne0) with gguf-py (the reference)."""
    rows = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, raw.shape[-1] if raw.ndim > 1 else raw.size)
    if qtype == QType.F32:
        return rows.view(np.float32).reshape(-1, ne0)
    if qtype == QType.F16:
        return rows.view(np.float16).astype(np.float32).reshape(-1, ne0)
    if qtype == QType.BF16:
        return (rows.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(-1, ne0)
    return quants.dequantize(rows, qtype).reshape(-1, ne0)


def encode(qtype: QType, shape: tuple[int, ...], std: float, rng: np.random.Generator,
           floats: Optional[np.ndarray] = None, mean: float = 0.0) -> np.ndarray:
    """Bytes of one chunk of numpy `shape` (last dim ne0), as uint8 (rows, row_bytes). Float types hold
    `floats` (or N(mean, std) draws); quantized types encode `floats` when given and gguf-py can, and
    are random valid blocks otherwise (fast: ~0.2-1 G weights/s)."""
    ne0 = shape[-1]
    n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    if qtype in FLOAT_TYPES or (floats is not None and qtype in QUANTIZABLE):
        if floats is None:
            floats = rng.standard_normal((n_rows, ne0), dtype=np.float32) * np.float32(std) + np.float32(mean)
        return from_floats(floats.reshape(n_rows, ne0), qtype)
    blck, _ = block_info(qtype)
    return random_blocks(qtype, n_rows * (ne0 // blck), std, rng).reshape(n_rows, -1)
