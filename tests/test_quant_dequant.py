"""Native dequantization is bit-identical to gguf.quants.dequantize for every GGUF format, on random
valid blocks and gguf-quantized data, at awkward shapes and thread counts; bad arguments raise."""
from __future__ import annotations

import mmap
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf import quants as gq

from kimi_runtime import quant
from kimi_runtime._native import C

ROOT = Path(__file__).resolve().parent.parent

# Byte offsets of the f16 scale fields per format (random bytes there could be inf/nan).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ2_XXS: [0], T.IQ2_XS: [0], T.IQ2_S: [0], T.IQ3_XXS: [0], T.IQ3_S: [0],
    T.IQ1_S: [0], T.IQ4_NL: [0], T.IQ4_XS: [0], T.TQ1_0: [52], T.TQ2_0: [64],
}
BLOCK_FORMATS = list(F16_FIELDS) + [T.IQ1_M, T.MXFP4]
ALL_FORMATS = [T.F32, T.F16, T.BF16] + BLOCK_FORMATS
# (rows, blocks per row): one block, odd row counts, rows not a multiple of the thread count,
# and one long row (split across threads inside the row).
SHAPES = [(1, 1), (3, 2), (7, 1), (33, 3), (1, 37)]


def finite_f16_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random f16 bit patterns over the whole finite range (subnormals and zero included)."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    bad = (bits & 0x7C00) == 0x7C00
    bits[bad] &= np.uint16(0xBFFF)  # clear the top exponent bit: finite, same sign
    return bits


def random_blocks(qtype: T, n_blocks: int, seed: int) -> np.ndarray:
    """n_blocks random but valid blocks of qtype (finite scales), as a flat uint8 array."""
    rng = np.random.default_rng(seed)
    bs, ts = GGML_QUANT_SIZES[qtype]
    if qtype == T.F32:
        return (rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-8, 8, n_blocks)).astype(np.float32).view(np.uint8)
    if qtype in (T.F16, T.BF16):
        bits = finite_f16_bits(rng, n_blocks)
        if qtype == T.BF16:
            bits = rng.integers(0, 1 << 16, size=n_blocks, dtype=np.uint16)
            bits[(bits & 0x7F80) == 0x7F80] &= np.uint16(0xBFFF)
        return bits.view(np.uint8)
    raw = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint8)
    for off in F16_FIELDS.get(qtype, []):
        raw[:, off:off + 2] = finite_f16_bits(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    if qtype == T.IQ1_M:  # f16 d is spread over the top nibbles of the 4 u16 scale words
        d = finite_f16_bits(rng, n_blocks).astype(np.uint16)
        sc = raw[:, 48:56].copy().view(np.uint16)
        for k in range(4):
            sc[:, k] = (sc[:, k] & 0x0FFF) | (((d >> (4 * k)) & 0xF) << 12)
        raw[:, 48:56] = sc.view(np.uint8)
    return raw.reshape(-1)


def gguf_ref(raw: np.ndarray, qtype: T, rows: int, cols: int) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gq.dequantize(raw.reshape(rows, -1), qtype).astype(np.float32, copy=False).reshape(rows, cols)


def assert_bits_equal(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape and got.dtype == ref.dtype
    if not np.array_equal(got.view(np.uint32), ref.view(np.uint32)):
        bad = np.flatnonzero(got.view(np.uint32).ravel() != ref.view(np.uint32).ravel())
        i = bad[0]
        raise AssertionError(f"{bad.size} mismatches; first at {i}: got {got.ravel()[i]!r} ref {ref.ravel()[i]!r}")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}b")
@pytest.mark.parametrize("qtype", ALL_FORMATS, ids=lambda t: t.name)
def test_random_blocks_bit_exact(qtype: T, shape: tuple[int, int]) -> None:
    rows, nb = shape
    bs, _ = GGML_QUANT_SIZES[qtype]
    nb = nb * (64 if bs == 1 else 1)  # give the plain formats more than a handful of values
    raw = random_blocks(qtype, rows * nb, seed=rows * 1000 + nb + int(qtype))
    cols = nb * bs
    got = quant.dequantize(raw, qtype, (rows, cols))
    assert_bits_equal(got, gguf_ref(raw, qtype, rows, cols))


GGUF_QUANTIZABLE = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.TQ1_0, T.TQ2_0, T.MXFP4]


@pytest.mark.parametrize("qtype", GGUF_QUANTIZABLE, ids=lambda t: t.name)
def test_gguf_quantized_data_bit_exact(qtype: T) -> None:
    rng = np.random.default_rng(int(qtype))
    x = (rng.standard_normal((5, 512)) * rng.uniform(0.01, 3, (5, 1))).astype(np.float32)
    raw = np.ascontiguousarray(gq.quantize(x, qtype)).view(np.uint8)
    got = quant.dequantize(raw, qtype, x.shape)
    assert_bits_equal(got, gguf_ref(raw.reshape(-1), qtype, 5, 512))


def test_q8_k_matches_numpy_reference() -> None:
    # gguf has no Q8_K decoder: y = d * q with f32 d.
    rng = np.random.default_rng(5)
    n = 6
    raw = rng.integers(0, 256, size=(n, 292), dtype=np.uint8)
    raw[:, :4] = (rng.standard_normal(n).astype(np.float32) * 0.01).view(np.uint8).reshape(n, 4)
    d = raw[:, :4].copy().view(np.float32)
    qs = raw[:, 4:260].view(np.int8).astype(np.float32)
    ref = (d * qs).reshape(1, -1)
    assert_bits_equal(quant.dequantize(raw, "Q8_K", (1, n * 256)), ref)


@pytest.mark.parametrize("qtype", [T.Q4_K, T.IQ2_XXS, T.Q8_0, T.F16], ids=lambda t: t.name)
def test_half_outputs_round_to_nearest_even(qtype: T) -> None:
    bs, _ = GGML_QUANT_SIZES[qtype]
    cols = bs * (64 if bs == 1 else 3)
    raw = random_blocks(qtype, 5 * cols // bs, seed=11)
    ref = gguf_ref(raw, qtype, 5, cols)
    with np.errstate(over="ignore"):
        ref16 = ref.astype(np.float16)
    assert np.array_equal(quant.dequantize(raw, qtype, (5, cols), np.float16).view(np.uint16), ref16.view(np.uint16))
    ref_bf = torch.from_numpy(ref).to(torch.bfloat16)
    got_bf = quant.dequantize(raw, qtype, (5, cols), "bfloat16")
    assert got_bf.dtype == torch.bfloat16 and tuple(got_bf.shape) == (5, cols)
    assert torch.equal(got_bf.view(torch.int16), ref_bf.view(torch.int16))
    bits = quant.dequantize(raw, qtype, (5, cols), np.uint16)
    assert np.array_equal(bits, ref_bf.view(torch.int16).numpy().view(np.uint16))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_agree(threads: int) -> None:
    raw = random_blocks(T.IQ3_S, 7 * 9, seed=3)
    ref = gguf_ref(raw, T.IQ3_S, 7, 9 * 256)
    old = C.num_threads()
    try:
        C.set_num_threads(threads)
        assert_bits_equal(quant.dequantize(raw, T.IQ3_S, (7, 9 * 256)), ref)
        # many tasks per thread: 300 rows of Q4_0
        raw2 = random_blocks(T.Q4_0, 300 * 17, seed=4)
        assert_bits_equal(quant.dequantize(raw2, "q4_0", (300, 17 * 32)), gguf_ref(raw2, T.Q4_0, 300, 17 * 32))
    finally:
        C.set_num_threads(old)


def test_input_kinds_zero_copy_and_nd_shapes(tmp_path: Path) -> None:
    raw = random_blocks(T.Q6_K, 2 * 3 * 2, seed=9)
    ref = gguf_ref(raw, T.Q6_K, 6, 512).reshape(2, 3, 512)
    for src in (raw.tobytes(), bytearray(raw.tobytes()), memoryview(raw.tobytes()), raw.reshape(6, -1)):
        assert_bits_equal(quant.dequantize(src, T.Q6_K, (2, 3, 512)), ref)
    f = tmp_path / "w.bin"
    f.write_bytes(raw.tobytes())
    with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        assert_bits_equal(quant.dequantize(mm, int(T.Q6_K), [2, 3, 512]), ref)
    t = quant.dequantize_torch(raw, "Q6_K", (6, 512))
    assert t.dtype == torch.float32 and torch.equal(t, torch.from_numpy(ref.reshape(6, 512)))
    out = np.empty((2, 3, 512), np.float32)
    assert quant.dequantize(raw, T.Q6_K, (2, 3, 512), out=out) is out
    assert_bits_equal(out, ref)


def test_empty_tensor() -> None:
    assert quant.dequantize(b"", "Q4_K", (0, 256)).shape == (0, 256)


def test_type_table_matches_gguf() -> None:
    for qt in ALL_FORMATS + [T.Q8_K]:
        info = quant.qtype_info(qt)
        assert (info.block_size, info.type_size) == GGML_QUANT_SIZES[qt]
        assert info.name == qt.name and info.can_dequantize
        assert quant.qtype_info(qt.name.lower()) is info and quant.qtype_info(int(qt)) is info
        cols = info.block_size * 3
        assert quant.tensor_bytes(qt, (5, cols)) == 5 * gq.quant_shape_to_byte_shape((5, cols), qt)[-1]
    assert quant.row_bytes("IQ1_S", 512) == 100
    assert not quant.qtype_info(T.Q8_1).can_dequantize


def test_generated_tables_up_to_date() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_quant_tables.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- bad arguments


def test_bad_arguments_raise_value_error() -> None:
    raw = random_blocks(T.Q4_K, 4, seed=1)
    with pytest.raises(ValueError, match="needs"):
        quant.dequantize(raw[:-1], T.Q4_K, (4, 256))  # too short
    with pytest.raises(ValueError, match="needs"):
        quant.dequantize(np.concatenate([raw, raw[:1]]), T.Q4_K, (4, 256))  # too long
    with pytest.raises(ValueError, match="multiple"):
        quant.dequantize(raw, T.Q4_K, (2, 288))
    with pytest.raises(ValueError, match="Q9_Z"):
        quant.dequantize(raw, "Q9_Z", (4, 256))
    with pytest.raises(ValueError, match="99"):
        quant.dequantize(raw, 99, (4, 256))
    with pytest.raises(ValueError, match="Q8_1"):
        quant.dequantize(raw, T.Q8_1, (4, 256))
    with pytest.raises(ValueError, match="contiguous"):
        quant.dequantize(np.repeat(raw, 2)[::2], T.Q4_K, (4, 256))
    with pytest.raises(ValueError):
        quant.dequantize(raw, T.Q4_K, (4, 256), out_dtype=np.int32)
    with pytest.raises(ValueError):
        quant.dequantize(raw, T.Q4_K, (4, 256), out=np.empty((4, 256), np.float64))
    with pytest.raises(ValueError):
        quant.dequantize(raw, T.Q4_K, (-4, 256))
    with pytest.raises(ValueError):
        quant.dequantize(raw, T.Q4_K, ())
    with pytest.raises(ValueError):
        quant.dequantize([1, 2, 3], T.Q4_K, (4, 256))


def test_native_layer_checks_sizes_itself() -> None:
    # The Python layer checks first; these go straight to the ops layer to prove it checks too.
    raw = random_blocks(T.Q8_0, 4, seed=2)
    out = np.empty(128, np.float32)
    with pytest.raises(ValueError):
        C.dequantize(raw[:-1], int(T.Q8_0), 1, 128, out, 0)
    with pytest.raises(ValueError):
        C.dequantize(raw, int(T.Q8_0), 2, 128, out, 0)  # shape bigger than the buffers
    with pytest.raises(ValueError):
        C.dequantize(raw, int(T.Q8_0), 1, 128, out[:-1], 0)  # output too small
    with pytest.raises(ValueError):
        C.dequantize(raw, int(T.Q8_0), 1, 100, out, 0)  # ragged row
    with pytest.raises(ValueError):
        C.dequantize(raw, 77, 1, 128, out, 0)
    with pytest.raises(ValueError):
        C.dequantize(raw, int(T.Q8_0), 1, 128, out, 5)
    with pytest.raises(ValueError):
        C.dequantize(raw, int(T.Q8_0), 1, 128, out[::2], 0)
    with pytest.raises(ValueError):
        C.dequantize(raw, int(T.Q8_0), 1 << 62, 1 << 40, out, 0)  # overflowing shape
    with pytest.raises(ValueError):
        C.row_bytes(int(T.Q4_K), 100)
