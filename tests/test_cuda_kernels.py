"""The real CUDA kernels on a GPU (skipped without one): GEMV, grouped MoE and dequantize tiles against
the host emulator that runs the same bodies (bit-exact for the GEMV: the build uses --fmad=false and the
reductions follow the same butterfly), against the CPU kernels, on the stream and device handed in; the
VRAM slot pool against the store's bytes; the converted engine against the CPU engine."""
from __future__ import annotations

import numpy as np
import pytest

from kimi_runtime._native import C, C_cuda
from kimi_runtime.gpu import cuda_status

pytestmark = [
    pytest.mark.requires_cuda,
    pytest.mark.skipif(bool(cuda_status()), reason=f"needs a usable CUDA device ({cuda_status()})"),
]

torch = pytest.importorskip("torch")

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T  # noqa: E402

from test_cuda_emulated_gemv import GPU_FORMATS, SIZES, gpu_tolerance  # noqa: E402
from test_cuda_emulated_moe import N_EMBD, N_FF, make_experts  # noqa: E402
from test_kernels_gemv import dequant, random_weights  # noqa: E402


def _dev(a: np.ndarray, device="cuda"):
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


@pytest.mark.parametrize("qtype", GPU_FORMATS, ids=lambda t: t.name)
def test_gpu_gemv_equals_emulator_bit_exact(qtype) -> None:
    from kimi_runtime.gpu import ops

    bs = GGML_QUANT_SIZES[qtype][0]
    for k, (rows, nblk, n) in enumerate(SIZES + [(4096, 8, 1)]):
        cols = nblk * bs
        raw = random_weights(qtype, rows, cols, seed=500 * k + int(qtype))
        x = np.random.default_rng(k + 11).standard_normal((n, cols)).astype(np.float32)
        got = ops.gemv(_dev(raw), qtype, rows, cols, _dev(x)).cpu().numpy()
        emu = C.emu_gemv(raw, int(qtype), rows, cols, x)
        assert np.array_equal(got.view(np.uint32), emu.view(np.uint32)), f"{rows}x{cols} n={n}"
        ref = x.astype(np.float64) @ dequant(raw, qtype, rows, cols).T
        assert (np.abs(got - ref) <= gpu_tolerance(dequant(raw, qtype, rows, cols), x)).all()


def test_gpu_gemv_on_a_side_stream_and_other_device() -> None:
    from kimi_runtime.gpu import ops

    raw = random_weights(T.Q4_K, 64, 512, seed=1)
    x = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    emu = C.emu_gemv(raw, int(T.Q4_K), 64, 512, x)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        got = ops.gemv(_dev(raw), T.Q4_K, 64, 512, _dev(x))
    s.synchronize()
    assert np.array_equal(got.cpu().numpy(), emu)
    if torch.cuda.device_count() > 1:  # our runtime selects the tensors' device, not torch's current one
        with torch.cuda.device(0):
            got1 = ops.gemv(_dev(raw, "cuda:1"), T.Q4_K, 64, 512, _dev(x, "cuda:1"))
        assert got1.device.index == 1 and np.array_equal(got1.cpu().numpy(), emu)


def test_gpu_moe_matches_emulator() -> None:
    from kimi_runtime.gpu import ops

    raw, _ = make_experts(seed=10)
    rng = np.random.default_rng(2)
    n_tok, k = 5, 4
    x = (0.02 * rng.standard_normal((n_tok, N_EMBD))).astype(np.float32)
    sel = rng.integers(0, len(raw), size=(n_tok, k)).astype(np.int32)
    sel[-1, -1] = -1
    w = rng.uniform(0.05, 1.0, size=(n_tok, k)).astype(np.float32)
    bufs = [tuple(_dev(b) for b in e[:3]) for e in raw]
    ptrs = np.zeros((n_tok * k, 3), np.uint64)
    types = np.zeros((n_tok * k, 3), np.int32)
    for i, e in enumerate(sel.reshape(-1)):
        if e >= 0:
            ptrs[i] = [b.data_ptr() for b in bufs[e]]
            types[i] = raw[e][3:]
    got = ops.moe(_dev(x), ptrs, types, w, N_FF).cpu().numpy()
    emu = C.emu_moe(x, raw, sel, w, N_FF)
    np.testing.assert_allclose(got, emu, rtol=1e-4, atol=1e-5 * np.abs(emu).max())  # expf vs host expf


@pytest.mark.parametrize("qtype", [T.Q4_K, T.IQ2_XXS, T.Q8_0, T.Q5_0], ids=lambda t: t.name)
def test_gpu_dequant_matmul(qtype) -> None:
    from kimi_runtime import quant
    from kimi_runtime.gpu import ops

    rows, cols = 300, 512
    raw = random_weights(qtype, rows, cols, seed=3)
    x = np.random.default_rng(1).standard_normal((20, cols)).astype(np.float32)
    got = ops.dequant_matmul(_dev(x), _dev(raw), qtype, rows, cols, tile_rows=128).cpu()
    wb = quant.dequantize(raw, qtype, (rows, cols), "bfloat16").float()
    ref = torch.from_numpy(x).to(torch.bfloat16).float() @ wb.T
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


def test_vram_pool_loads_equal_store(tmp_path) -> None:
    rng = np.random.default_rng(0)
    blobs, store_rows, off = [], [], 0
    for e in range(12):
        rs = []
        for _ in range(3):
            n = int(rng.integers(4000, 9000))
            blobs.append(rng.integers(0, 256, n, dtype=np.uint8))
            rs.append((0, off, n))
            off += n
        store_rows.append(rs)
    (tmp_path / "e.bin").write_bytes(np.concatenate(blobs).tobytes())
    store = C.ExpertStore([str(tmp_path / "e.bin")], 1, 12)
    for e, rs in enumerate(store_rows):
        store.set_expert(0, e, *rs)
    pool = C_cuda.VramSlotPool(store, 4, 0, 4, 2)
    stream = torch.cuda.current_stream().cuda_stream
    for rep in range(3):
        ids = [int(i) for i in rng.choice(12, 3, replace=False)]
        addrs = pool.acquire(0, ids, stream)
        for a, e in zip(addrs, ids):
            assert C_cuda.read_device(a, store.expert_bytes(0, e), stream) == store.read_expert(0, e).tobytes()
        pool.release(0, ids, stream)
    pool.wait_idle()
    st = pool.stats()
    assert st["loads"] >= 3 and pool.pinned_slots() == 0


def test_cuda_engine_decodes_like_cpu(synth_model) -> None:
    from kimi_runtime.engine import Engine
    from kimi_runtime.gpu.backend import CudaBackend
    from kimi_runtime.gpu.engine import make_provider, to_gpu

    path = synth_model("tiny").gguf
    ids = torch.randint(0, 1024, (12,), generator=torch.Generator().manual_seed(7))
    ref_eng = Engine.from_gguf(path, report=False)
    ref = [ref_eng.prefill(ids[:9])] + [ref_eng.decode(int(t)) for t in ids[9:]]
    for slots in (0, 10):
        eng = Engine.from_gguf(path, report=False)
        be = CudaBackend()
        prov = make_provider(eng, be, n_slots=slots)
        to_gpu(eng, be, prov)
        got = [eng.prefill(ids[:9])] + [eng.decode(int(t)) for t in ids[9:]]
        for a, b in zip(ref, got):
            assert b.device.type == "cuda"
            cos = torch.nn.functional.cosine_similarity(a.reshape(-1), b.cpu().reshape(-1), dim=0).item()
            assert cos >= 0.95
        if slots:
            assert prov.stats.gpu_experts > 0 and prov.pool.pinned_slots() == 0
