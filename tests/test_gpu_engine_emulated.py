"""The GPU engine path end to end on the CPU: an Engine converted by kimi_runtime.gpu.engine.to_gpu with
the EmuBackend (the CUDA kernels' bodies through the host emulator, expert slots in the emulated device
pool, the hybrid provider's lane split and next-layer prefetch) decodes like the CPU engine.

This is a plumbing check (weights, caches, slots, lanes wired right), not the accuracy check: the GPU
path quantizes activations per 32 values and the CPU kernels per 256 for k-/i-quants, and the tiny
random model amplifies such differences into logit differences of several percent, with the slot
pool on or off. The kernel-level bounds are asserted in
test_cuda_emulated_gemv.py / _moe.py. Tolerance here: cosine >= 0.95 per step, the same argmax on at
least 3 of 4 steps; a wiring error (wrong weight, stale cache, lost expert) gives cosine near 0."""
from __future__ import annotations

import pytest
import torch

from kimi_runtime.engine import Engine
from kimi_runtime.gpu.backend import EmuBackend
from kimi_runtime.gpu.engine import make_provider, to_gpu


@pytest.fixture(scope="module")
def reference(synth_model):
    path = synth_model("tiny").gguf
    ids = torch.randint(0, 1024, (12,), generator=torch.Generator().manual_seed(7))
    eng = Engine.from_gguf(path, report=False)
    ref = [eng.prefill(ids[:9])] + [eng.decode(int(t)) for t in ids[9:]]
    eng.close()
    return path, ids, ref


@pytest.mark.parametrize("slots", [0, 10, 40])
def test_emulated_gpu_engine_decodes_like_cpu(reference, slots) -> None:
    path, ids, ref = reference
    eng = Engine.from_gguf(path, report=False)
    be = EmuBackend(seed=slots + 1)
    prov = make_provider(eng, be, n_slots=slots)
    to_gpu(eng, be, prov)
    got = [eng.prefill(ids[:9])] + [eng.decode(int(t)) for t in ids[9:]]
    same = 0
    for a, b in zip(ref, got):
        a, b = a.reshape(-1), b.reshape(-1)
        assert torch.nn.functional.cosine_similarity(a, b, dim=0).item() >= 0.95
        same += int(a.argmax() == b.argmax())
    assert same >= 3
    st = prov.stats
    assert st.layers == 5 * len(eng.config.moe_layers)  # prefill = 2 forwards (all but last, last) + 3 decodes
    if slots == 0:
        assert st.gpu_experts == 0 and st.cpu_experts > 0
    else:
        assert st.gpu_experts > 0 and st.prefetches > 0
        assert prov.pool.pinned_slots() == 0  # every acquire released
        assert len(prov.pool.resident()) <= slots
    if slots == 10:
        assert st.cpu_experts > 0  # the cache cannot hold everything: both lanes ran


def test_emulated_gpu_engine_prompt_path(reference) -> None:
    """A 12-token prompt takes the prompt path (dequantized bf16 tiles; each slot expert read once for
    all its tokens) on both lanes' GPU side; last-token logits agree with the CPU engine."""
    path, ids, _ = reference
    cpu = Engine.from_gguf(path, report=False)
    ref = cpu.logits(ids)  # all 12 tokens in one forward
    eng = Engine.from_gguf(path, report=False)
    be = EmuBackend(seed=3)
    prov = make_provider(eng, be, n_slots=40)  # all 2 x 16 experts fit: the GPU lane takes most of them
    to_gpu(eng, be, prov)
    prov.pool.prefetch(1, list(range(16)))
    prov.pool.prefetch(2, list(range(16)))
    prov.pool.wait_idle()
    got = eng.logits(ids)
    assert prov.stats.gpu_experts > 0
    for a, b in zip(ref, got):
        assert torch.nn.functional.cosine_similarity(a, b, dim=0).item() >= 0.95
