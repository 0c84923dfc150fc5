"""-ngl wires the GPU tier into the CLI's loader: on a machine without a GPU a one-line warning and the CPU
engine; with KR_GPU_BACKEND=emu the same wiring through the host emulator of the CUDA kernels (every
layer's dense part on the "device", VRAM slots sized by plan_gpu, the hybrid provider for experts)."""
from __future__ import annotations

import io

import pytest
import torch

from kimi_runtime import _native
from kimi_runtime.commands.loading import load_generator
from kimi_runtime.gpu.hybrid import HybridProvider


@pytest.mark.skipif(_native.cuda_available(), reason="checks the no-GPU message; this machine has a GPU")
def test_ngl_without_a_gpu_warns_and_runs_on_the_cpu(tiny_gguf: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KR_GPU_BACKEND", raising=False)
    err = io.StringIO()
    gen = load_generator(tiny_gguf, err, n_gpu_layers=99)
    assert "warning: -ngl 99 ignored" in err.getvalue() and len(err.getvalue().strip().splitlines()) >= 2
    assert not isinstance(gen.engine.provider, HybridProvider)


def test_ngl_with_the_emulated_gpu_converts_the_engine(tiny_gguf: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = load_generator(tiny_gguf, io.StringIO()).engine
    monkeypatch.setenv("KR_GPU_BACKEND", "emu")
    err = io.StringIO()
    eng = load_generator(tiny_gguf, err, n_gpu_layers=2).engine
    text = err.getvalue()
    assert "gpu (emu): every layer's dense part" in text and "VRAM expert slots" in text
    assert "layers are not split" in text  # -ngl 2 on a model with more layers
    assert isinstance(eng.provider, HybridProvider) and eng.model.native is None and eng.n_gpu_layers == 2
    ids = [1, 5, 9, 13]
    a, b = ref.prefill(ids), eng.prefill(ids)
    assert torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).min() > 0.95
