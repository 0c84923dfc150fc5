"""Weight sources for the model, addressed by llama.cpp tensor names (blk.N.attn_q_a.weight, ...):
a GGUF file (weights stay as mmapped bytes) or a Hugging Face directory (config.json + safetensors,
float32, kv_b_proj served as the legacy attn_kv_b or split into attn_k_b / attn_v_b)."""
from __future__ import annotations

import json
import os
import re
from typing import Any, Optional

import numpy as np
import torch
from gguf import GGMLQuantizationType

from kimi_runtime.config import ModelConfig
from kimi_runtime.errors import GGUFError
from kimi_runtime.gguf.names import hf_name
from kimi_runtime.model.linear import FLOAT_TYPES, QLinear, float_from_raw

EXPERT_KINDS = ("gate", "up", "down")


class WeightSource:
    """What the model binds to. Subclasses implement `_raw`/`has`; names are llama.cpp's."""

    config: ModelConfig
    path: str

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def _raw(self, name: str) -> tuple[Optional[np.ndarray], GGMLQuantizationType, tuple[int, ...],
                                       Optional[torch.Tensor]]:
        """(raw bytes or None, type, numpy-order shape, float tensor or None)."""
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        return self._raw(name)[2]

    def linear(self, name: str, out_features: int, in_features: int) -> QLinear:
        raw, qt, shape, t = self._raw(name)
        if shape != (out_features, in_features):
            raise GGUFError(f"{self.path}: {name} has shape {shape}, expected {(out_features, in_features)}")
        if t is not None:
            return QLinear.from_float(t)
        return QLinear(raw, qt, out_features, in_features)

    def dense(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A float32 tensor (zero-copy for F32 GGUF tensors, dequantized otherwise)."""
        raw, qt, got, t = self._raw(name)
        if got != tuple(shape):
            raise GGUFError(f"{self.path}: {name} has shape {got}, expected {tuple(shape)}")
        return t.to(torch.float32) if t is not None else float_from_raw(raw, qt, tuple(shape))

    def quantized_tensor(self, name: str) -> Optional[tuple[np.ndarray, GGMLQuantizationType, tuple[int, ...]]]:
        """(raw bytes, type, numpy-order shape) of a block-quantized tensor, else None (float or absent)."""
        if not self.has(name):
            return None
        raw, qt, shape, t = self._raw(name)
        if t is not None or raw is None or qt in FLOAT_TYPES:
            return None
        return raw, qt, shape

    def expert(self, layer: int, expert: int, kind: str) -> QLinear:
        """One routed expert's projection ("gate" / "up": [n_ff_exp, n_embd], "down": the reverse)."""
        raise NotImplementedError


# ---- GGUF


class GGUFSource(WeightSource):
    """Over kimi_runtime.gguf.open_gguf (mmap, zero-copy views); gguf-py's GGUFReader (also mmap)
    stands in where the project reader is not importable."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        # name -> (ggml type, numpy-order shape, raw uint8 view)
        self._t: dict[str, tuple[GGMLQuantizationType, tuple[int, ...], np.ndarray]] = {}
        try:
            from kimi_runtime.gguf import open_gguf  # noqa: PLC0415 - built in parallel
        except ImportError:
            open_gguf = None
        if open_gguf is not None:
            self.model = open_gguf(self.path)
            self.config: ModelConfig = self.model.config
            for name, ti in self.model.tensors.items():
                self._t[name] = (GGMLQuantizationType(ti.ggml_type), tuple(int(s) for s in ti.shape), ti.data)
        else:
            self._open_with_gguf_py()

    def _open_with_gguf_py(self) -> None:
        from gguf import GGUFReader  # noqa: PLC0415

        try:
            r = GGUFReader(self.path, "r")
        except (ValueError, OSError) as e:
            raise GGUFError(f"{self.path}: {e}") from e
        self.model = r
        md = {name: f.contents() for name, f in r.fields.items()}
        self.config = ModelConfig.from_gguf_metadata(md, self.path)
        for t in r.tensors:
            raw = r.data[t.data_offset:t.data_offset + t.n_bytes]
            shape = tuple(int(s) for s in reversed([int(x) for x in t.shape]))
            self._t[t.name] = (GGMLQuantizationType(t.tensor_type), shape, raw)

    def has(self, name: str) -> bool:
        return name in self._t

    def tensor_table(self) -> dict[str, tuple[GGMLQuantizationType, tuple[int, ...], int]]:
        """name -> (type, numpy-order shape, bytes) of every tensor in the file."""
        return {name: (qt, shape, raw.nbytes) for name, (qt, shape, raw) in self._t.items()}

    @property
    def quantized(self) -> bool:
        """True when any tensor is stored in a block-quantized (non-float) type."""
        return any(qt not in FLOAT_TYPES for qt, _, _ in self._t.values())

    def _raw(self, name: str):
        if name not in self._t:
            raise GGUFError(f"{self.path}: tensor {name} is missing")
        qt, shape, raw = self._t[name]
        return raw, qt, shape, None

    def expert(self, layer: int, expert: int, kind: str) -> QLinear:
        if kind not in EXPERT_KINDS:
            raise ValueError(f"expert kind must be one of {EXPERT_KINDS} (got {kind!r})")
        experts = getattr(self.model, "experts", None)
        if experts is not None and hasattr(experts, "slice"):  # the project reader's validated index
            try:
                sl = experts.slice(layer, expert, kind)
            except IndexError as e:
                raise ValueError(str(e)) from e
            return QLinear(sl.data, GGMLQuantizationType(int(sl.ggml_type)), sl.rows, sl.cols)
        name = f"blk.{layer}.ffn_{kind}_exps.weight"
        fused = f"blk.{layer}.ffn_gate_up_exps.weight"
        part = 0
        if not self.has(name) and kind != "down" and self.has(fused):
            name, part = fused, (0 if kind == "gate" else 1)  # gate first
        if name not in self._t:
            raise GGUFError(f"{self.path}: tensor {name} is missing")
        qt, shape, raw = self._t[name]
        n_e, rows, cols = shape
        if not 0 <= expert < n_e:
            raise ValueError(f"{name}: expert {expert} out of range 0..{n_e - 1}")
        per = raw.nbytes // n_e  # experts are contiguous byte ranges (torch.stack in the converter)
        rb = per // rows
        lo = expert * per
        if name == fused:
            rows //= 2
            lo += part * rows * rb
        return QLinear(raw[lo:lo + rows * rb], qt, rows, cols)


# ---- Hugging Face

class HFSource(WeightSource):
    """A transformers DeepseekV3 directory. `split_kv_b` serves kv_b_proj as attn_k_b / attn_v_b
    (llama.cpp's newer layout) instead of the legacy attn_kv_b, to exercise both attention layouts."""

    def __init__(self, path: str, split_kv_b: bool = False) -> None:
        from safetensors import safe_open  # noqa: PLC0415

        self.path = str(path)
        with open(os.path.join(self.path, "config.json")) as f:
            self.hf_config: dict[str, Any] = json.load(f)
        self.config = ModelConfig.from_hf_config(self.hf_config, os.path.join(self.path, "config.json"))
        self.split_kv_b = split_kv_b
        self.tensors: dict[str, torch.Tensor] = {}
        files = sorted(f for f in os.listdir(self.path) if f.endswith(".safetensors"))
        if not files:
            raise FileNotFoundError(f"{self.path}: no .safetensors files")
        for fn in files:
            with safe_open(os.path.join(self.path, fn), framework="pt") as f:
                for k in f.keys():
                    self.tensors[k] = f.get_tensor(k).to(torch.float32)

    def _hf_name(self, name: str) -> Optional[str]:
        hf = hf_name(name)
        if hf == "lm_head.weight" and hf not in self.tensors:
            hf = "model.embed_tokens.weight"  # tied embeddings
        return hf

    def _split(self, name: str) -> Optional[torch.Tensor]:
        m = re.fullmatch(r"blk\.(\d+)\.attn_([kv])_b\.weight", name)
        if not (self.split_kv_b and m):
            return None
        cfg = self.config
        kvb = self.tensors.get(f"model.layers.{m.group(1)}.self_attn.kv_b_proj.weight")
        if kvb is None:
            return None
        kvb = kvb.view(cfg.n_head, cfg.qk_nope_head_dim + cfg.v_head_dim, cfg.kv_lora_rank)
        if m.group(2) == "k":  # llama.cpp stores k_b transposed: [H, kv_lora, nope]
            return kvb[:, :cfg.qk_nope_head_dim].transpose(1, 2).contiguous()
        return kvb[:, cfg.qk_nope_head_dim:].contiguous()  # [H, v, kv_lora]

    def has(self, name: str) -> bool:
        if re.fullmatch(r"blk\.\d+\.attn_kv_b\.weight", name) and self.split_kv_b:
            return False
        if self._split(name) is not None:
            return True
        hf = self._hf_name(name)
        return hf is not None and hf in self.tensors

    def _raw(self, name: str):
        t = self._split(name)
        if t is None:
            if not self.has(name):
                raise KeyError(f"{self.path}: no tensor for {name}")
            t = self.tensors[self._hf_name(name)]
        return None, GGMLQuantizationType.F32, tuple(t.shape), t

    def expert(self, layer: int, expert: int, kind: str) -> QLinear:
        key = f"model.layers.{layer}.mlp.experts.{expert}.{kind}_proj.weight"
        if key in self.tensors:
            return QLinear.from_float(self.tensors[key])
        fused = self.tensors.get(f"model.layers.{layer}.mlp.experts.gate_up_proj")  # [E, 2F, D]
        if fused is not None and kind in ("gate", "up"):
            f = fused.shape[1] // 2
            return QLinear.from_float(fused[expert, :f] if kind == "gate" else fused[expert, f:])
        down = self.tensors.get(f"model.layers.{layer}.mlp.experts.down_proj")  # [E, D, F]
        if down is not None and kind == "down":
            return QLinear.from_float(down[expert])
        raise KeyError(f"{self.path}: no weights for layer {layer} expert {expert} {kind}")


def open_source(path: str, **kw: Any) -> WeightSource:
    """GGUFSource for a file, HFSource for a directory."""
    return HFSource(path, **kw) if os.path.isdir(path) else GGUFSource(path)
