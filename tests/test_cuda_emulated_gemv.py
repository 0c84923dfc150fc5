"""The CUDA GEMV's own per-lane bodies (csrc/cuda/kernels), run lane by lane by the host emulator over
the launch grid, against the CPU kernels and a float64 reference, for every GPU format and odd shapes.

What is exact and what is not:
- Activation quantization (one q8a32 block per 32 values, d = amax/127, round-half-even) is
  bit-identical to the CPU kernels' quantize_act_q8a32 (asserted byte for byte).
- The GPU dots every 32-weight sub-block exactly in int32 with its q8a32 block, then scales in
  float32 and sums lane partials with a 5-level xor butterfly. The CPU kernels use Q8_K (one scale per
  256 values) for k-/i-quants and sum in another order, so results are not bit-identical; both are
  held to the same derived bound against the float64 dequantized reference (test_kernels_gemv's
  docstring, with 32-value activation blocks for every format), and to each other by the sum of
  their bounds.
"""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from kimi_runtime import kernels
from kimi_runtime._native import C
from test_kernels_gemv import EPS32, dequant, random_weights, tolerance

# In order of importance for real Kimi / DeepSeek files.
GPU_FORMATS = [T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_0, T.Q2_K, T.Q3_K, T.IQ1_S, T.IQ1_M, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S,
               T.IQ3_XXS, T.IQ3_S, T.IQ4_XS, T.TQ1_0, T.TQ2_0, T.Q4_0]
# (rows, 32-value sub-blocks... expressed as blocks of the format, n tokens): rows not a multiple of
# the 4 warps per block, rows < 4, more sub-blocks than lanes, and 9 tokens (two launches: 8 + 1).
SIZES = [(1, 1, 1), (3, 2, 2), (5, 1, 8), (17, 5, 3), (6, 9, 9), (33, 1, 5)]


def gpu_tolerance(wd: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bound of the GPU path: activation error per 32-block plus float scaling/accumulation."""
    xd = x.astype(np.float64)
    aw = np.abs(wd)
    amax = np.abs(xd).reshape(x.shape[0], -1, 32).max(axis=2)
    per_val = np.repeat(amax, 32, axis=1) / 254.0
    blocks = wd.shape[1] // 32
    return per_val @ aw.T * (1 + 1e-6) + (blocks + 16) * EPS32 * (np.abs(xd) @ aw.T) + 1e-30


def test_act_quant_bit_exact() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(32 * 37) * 10.0 ** rng.uniform(-3, 3, 32 * 37)).astype(np.float32)
    x[:32] = 0.0  # an all-zero block: d = 0, codes 0
    x[40] = 0.5 * np.abs(x[32:64]).max() / 127 * 127  # ties and extremes mixed in
    assert bytes(C.emu_act_quant(x)) == bytes(C.cpu_act_quant_q8a32(x))


@pytest.mark.parametrize("qtype", GPU_FORMATS, ids=lambda t: t.name)
def test_emulated_gemv_matches_cpu(qtype: T) -> None:
    assert C.emu_gpu_supported(int(qtype))
    bs = GGML_QUANT_SIZES[qtype][0]
    for k, (rows, nblk, n) in enumerate(SIZES):
        cols = nblk * bs
        raw = random_weights(qtype, rows, cols, seed=500 * k + int(qtype))
        x = np.random.default_rng(k + 11).standard_normal((n, cols)).astype(np.float32)
        wd = dequant(raw, qtype, rows, cols)
        ref = x.astype(np.float64) @ wd.T
        got = C.emu_gemv(raw, int(qtype), rows, cols, x)
        assert got.shape == (n, rows) and got.dtype == np.float32
        tol = gpu_tolerance(wd, x)
        err = np.abs(got - ref)
        assert (err <= tol).all(), f"{rows}x{cols} n={n}: worst err/tol {(err / tol).max():.3g}"
        cpu = kernels.gemm(raw, qtype, rows, cols, x)
        both = tol + tolerance(qtype, wd, x, kernels.kernel_path(qtype))
        assert (np.abs(got - cpu) <= both).all()


def test_emulated_gemv_q8_0_per_block_terms_match_cpu() -> None:
    """Q8_0 has the same arithmetic per block on both paths (same activation blocks, d_w * d_a * isum):
    with a single sub-block per row the whole dot is one such term, so the results are bit-identical."""
    rows, cols = 7, 32
    raw = random_weights(T.Q8_0, rows, cols, seed=3)
    x = np.random.default_rng(5).standard_normal((4, cols)).astype(np.float32)
    kernels.set_isa("scalar")
    try:
        cpu = kernels.gemm(raw, T.Q8_0, rows, cols, x)
    finally:
        kernels.set_isa("auto")
    assert np.array_equal(C.emu_gemv(raw, int(T.Q8_0), rows, cols, x).view(np.uint32), cpu.view(np.uint32))


def test_emulated_gemv_rejects_bad_arguments() -> None:
    raw = random_weights(T.Q4_K, 2, 256, seed=1)
    x = np.zeros((1, 256), np.float32)
    with pytest.raises(ValueError):
        C.emu_gemv(raw[:-1], int(T.Q4_K), 2, 256, x)
    with pytest.raises(ValueError):
        C.emu_gemv(raw, int(T.MXFP4), 2, 256, x)  # no GPU integer path for this format
    with pytest.raises(ValueError):
        C.emu_gemv(raw, int(T.Q4_K), 2, 256, np.zeros((1, 128), np.float32))
