"""GPU dequantization (csrc/cuda/dequant.cu) equals the CPU's, bit for bit, for every format.

decode.h computes d*q - m*dmin with explicitly rounded products (__fmul_rn), so nvcc's default FMA
contraction cannot change a bit; f16/bf16 outputs use the same rounding as the CPU path."""
from __future__ import annotations

import numpy as np
import pytest

from kimi_runtime import quant
from kimi_runtime._native import C_cuda, cuda_available

pytestmark = [
    pytest.mark.requires_cuda,
    pytest.mark.skipif(not cuda_available() or not hasattr(C_cuda, "dequantize"),
                       reason="needs a CUDA device and the CUDA dequantizer"),
]

torch = pytest.importorskip("torch")

from test_quant_dequant import ALL_FORMATS, random_blocks  # noqa: E402  (same generator as the CPU test)

SHAPES = [(1, 1), (7, 3), (33, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}b")
@pytest.mark.parametrize("qtype", ALL_FORMATS + ["Q8_K"], ids=str)
def test_gpu_equals_cpu(qtype, shape) -> None:
    info = quant.qtype_info(qtype)
    rows, nb = shape
    nb *= 64 if info.block_size == 1 else 1
    if info.name == "Q8_K":
        rng = np.random.default_rng(1)
        raw = rng.integers(0, 256, size=(rows * nb, 292), dtype=np.uint8)
        raw[:, :4] = rng.standard_normal(rows * nb).astype(np.float32).view(np.uint8).reshape(-1, 4)
        raw = raw.reshape(-1)
    else:
        raw = random_blocks(info.ggml_type, rows * nb, seed=rows + nb)
    dims = (rows, nb * info.block_size)
    cpu = quant.dequantize(raw, qtype, dims)
    dev = torch.from_numpy(raw).cuda()
    gpu = quant.dequantize_cuda(dev, qtype, dims).cpu().numpy()
    assert np.array_equal(gpu.view(np.uint32), cpu.view(np.uint32))
    g16 = quant.dequantize_cuda(dev, qtype, dims, torch.float16).cpu().numpy()
    assert np.array_equal(g16.view(np.uint16), quant.dequantize(raw, qtype, dims, np.float16).view(np.uint16))
    gbf = quant.dequantize_cuda(dev, qtype, dims, torch.bfloat16).cpu()
    assert torch.equal(gbf.view(torch.int16), quant.dequantize(raw, qtype, dims, "bfloat16").view(torch.int16))


def test_gpu_bad_arguments() -> None:
    dev = torch.zeros(144 * 2, dtype=torch.uint8, device="cuda")
    with pytest.raises(ValueError):
        quant.dequantize_cuda(dev[:-1], "Q4_K", (2, 256))
    with pytest.raises(ValueError):
        quant.dequantize_cuda(dev, "Q4_K", (1, 300))
    with pytest.raises(ValueError):
        quant.dequantize_cuda(dev.cpu(), "Q4_K", (2, 256))
    with pytest.raises(ValueError):  # the native ops layer checks sizes on its own
        C_cuda.dequantize(dev.data_ptr(), 288, 12, 4, 256, dev.data_ptr(), 100, 0, 0)
