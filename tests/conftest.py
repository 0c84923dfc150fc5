"""Shared fixtures: synthetic models written once per test session.

- `tiny_gguf`: path (str) of the "tiny" preset, default recipe (Q4_K/Q6_K/Q8_0/Q5_0/F32), seed 0.
- `tiny_model_dir`: the same model with its Hugging Face copy: `.gguf`, `.hf_dir`, `.dir` (also as
  `["gguf"]`, `["hf_dir"]`).
- `synth_model(preset="tiny", recipe="default", hf=False, **kw)`: any other synthetic model, cached per
  session by its arguments (kw as for kimi_runtime.synth.write_synthetic: seed, split, legacy_kv_b, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest


@dataclass(frozen=True)
class SynthModel:
    gguf: str  # the GGUF (first part when split)
    hf_dir: Optional[str]  # the HF copy (config.json, model.safetensors, tokenizer.json) or None
    dir: str
    preset: str
    recipe: Any

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __fspath__(self) -> str:
        return self.gguf


@pytest.fixture(scope="session")
def synth_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., SynthModel]:
    from kimi_runtime.synth import write_synthetic

    cache: dict[tuple, SynthModel] = {}

    def make(preset: str = "tiny", recipe: Any = "default", hf: bool = False, **kw: Any) -> SynthModel:
        key = (preset, repr(recipe), hf, repr(sorted(kw.items())))
        if key not in cache:
            d = tmp_path_factory.mktemp(f"synth-{preset}-{recipe if isinstance(recipe, str) else 'custom'}")
            hf_dir = d / "hf" if hf else None
            path = write_synthetic(preset, d / f"{preset}.gguf", recipe=recipe, hf_dir=hf_dir, progress=False, **kw)
            cache[key] = SynthModel(str(path), str(hf_dir) if hf_dir else None, str(d), preset, recipe)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(synth_model: Callable[..., SynthModel]) -> SynthModel:
    return synth_model("tiny", "default", hf=True)


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir: SynthModel) -> str:
    return tiny_model_dir.gguf


@pytest.fixture(scope="session")
def tiny_gguf_path(tiny_gguf: str) -> Path:
    return Path(tiny_gguf)
