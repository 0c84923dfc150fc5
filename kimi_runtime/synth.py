"""Seeded random DeepSeek-V3-architecture models, written as GGUF with llama.cpp's names, shapes and
metadata (arch deepseek2, split `attn_k_b/attn_v_b` or legacy `attn_kv_b` attention), a per-tensor type
recipe, optionally split into parts, plus a Hugging Face copy (config.json + float32 safetensors of the
same weights, dequantized) that transformers' DeepseekV3ForCausalLM loads.

Data is generated and written chunk by chunk (one expert, one head or ~8 MB of rows at a time), each
chunk from its own seed (seed, tensor name, chunk index), so output is deterministic and memory small."""
from __future__ import annotations

import dataclasses
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

import numpy as np

from kimi_runtime.config import ARCH, ModelConfig, RopeScaling, gguf_metadata, hf_config_dict
from kimi_runtime.gguf import names
from kimi_runtime.gguf.format import VType, tensor_nbytes
from kimi_runtime.gguf.writer import TensorSpec, Typed, write_gguf
from kimi_runtime.known_models import KNOWN_MODELS
from kimi_runtime.synth_blocks import FLOAT_TYPES, encode, to_floats
from kimi_runtime.synth_recipes import RecipeSpec, resolve_recipe, tensor_type
from kimi_runtime.synth_vocab import build_synthetic_vocab, hf_tokenizer_files

_CHUNK_ELEMS = 1 << 21  # rows per 2-D chunk: about 8 MB of float32


def _f32(x: float) -> float:
    """Snap to float32 so the GGUF (f32) and the HF copy (json double) hold the same value."""
    return float(np.float32(x))


def _cfg(**kw: Any) -> ModelConfig:
    base: dict[str, Any] = dict(
        q_lora_rank=0, n_group=1, topk_group=1, n_expert_shared=1, n_leading_dense=1,
        routed_scaling_factor=_f32(2.827), norm_topk_prob=True, gating="sigmoid", rms_norm_eps=_f32(1e-6),
        rope_theta=50000.0, context_length=131072,
        rope_scaling=RopeScaling(type="yarn", factor=32.0, original_context_length=4096, beta_fast=32.0,
                                 beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0),
    )
    base.update(kw)
    return ModelConfig(**base)


PRESETS: dict[str, ModelConfig] = {
    # every unit test: a few MB; all 256-block rows except q_b (q_lora 128 -> Q5_0) and k_b (nope 64)
    "tiny": _cfg(n_vocab=1024, n_embd=256, n_layer=3, n_ff=512, n_ff_exp=256, n_head=4, q_lora_rank=128,
                 kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=64, v_head_dim=64,
                 n_expert=16, n_expert_used=4),
    # DeepSeek-V3 routing shape: groups, several dense layers, softmax-free sigmoid, scale 2.5
    "tiny-dsv3": _cfg(n_vocab=1024, n_embd=256, n_layer=4, n_ff=512, n_ff_exp=256, n_head=4, q_lora_rank=128,
                      kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=64, v_head_dim=64,
                      n_expert=16, n_expert_used=4, n_group=4, topk_group=2, n_leading_dense=2,
                      routed_scaling_factor=2.5, rope_theta=10000.0, context_length=163840,
                      rope_scaling=RopeScaling(type="yarn", factor=40.0, original_context_length=4096,
                                               beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)),
    # the demo: tens of MB
    "small": _cfg(n_vocab=4096, n_embd=512, n_layer=4, n_ff=1536, n_ff_exp=512, n_head=8, q_lora_rank=256,
                  kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=64, v_head_dim=64,
                  n_expert=32, n_expert_used=4),
    # the benchmark shape the peers were measured on (REFERENCE.md section 8), ~1.9 GB in q4_k_m
    "medium": _cfg(n_vocab=32000, n_embd=2048, n_layer=8, n_ff=11008, n_ff_exp=1024, n_head=16, q_lora_rank=512,
                   kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                   n_expert=64, n_expert_used=6),
    # Kimi K2's real dimensions (known_models "kimi-k2": 7168 hidden, 64 heads, 384 experts / 8 active,
    # YaRN x32 beta 1/1, n_group 1) cut to a few layers; `synth --layers/--experts` sets the slice
    "k2-slice": dataclasses.replace(KNOWN_MODELS["kimi-k2"], n_layer=4, routed_scaling_factor=_f32(2.827),
                                    rms_norm_eps=_f32(1e-6)),
}

_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "q4_k_m": 15, "default": 15, "q2_k": 10, "iq1_s": 24, "bf16": 32,
               "tq1_0": 36, "mxfp4": 38, "ud-tq1_0": 36, "ud-iq1_s": 24, "ud-q2_k_xl": 10}


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """A preset's ModelConfig with fields replaced (validated again by ModelConfig)."""
    try:
        cfg = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


# ---- the tensor plan

@dataclass(frozen=True)
class _Plan:
    spec: TensorSpec
    layer: Optional[int]
    role: str
    std: float
    mean: float = 0.0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.spec.ne))


def _role(name: str) -> tuple[Optional[int], str]:
    layer, role = names.parse_name(name)
    if role in names.NORM_ROLES or role == names.OUTPUT_NORM:
        return layer, "norm"
    if role == names.TOKEN_EMBD:
        return layer, "token_embd"
    if role == names.OUTPUT:
        return layer, "output"
    return layer, role


def plan_tensors(cfg: ModelConfig, recipe: RecipeSpec = "default", *, legacy_kv_b: bool = False,
                 fused_gate_up: bool = False) -> list[_Plan]:
    table = resolve_recipe(recipe)
    shapes = names.model_shapes(cfg, layout="legacy" if legacy_kv_b else "split", fused_gate_up=fused_gate_up)
    plans = []
    for name, ne in shapes.items():
        layer, role = _role(name)
        qt = tensor_type(table, role, ne)
        mean, std = 0.0, 1.0 / math.sqrt(ne[0])
        if role == "norm":
            mean, std = 1.0, 0.1
        elif role == "token_embd":
            std = 1.0
        elif role == "exp_probs_b":
            std = 0.05
        elif role in ("attn_k_b", "attn_v_b", "attn_kv_b"):
            std = 1.0 / math.sqrt(cfg.kv_lora_rank)
        plans.append(_Plan(TensorSpec(name, qt, ne), layer, role, std, mean))
    return plans


def _chunks(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Row ranges along numpy axis 0: one per expert/head for 3-D, ~8 MB for 2-D, whole for 1-D."""
    if len(shape) == 1:
        return [(0, 1)]
    if len(shape) == 3:
        return [(i, i + 1) for i in range(shape[0])]
    per = max(1, _CHUNK_ELEMS // shape[1])
    return [(i, min(i + per, shape[0])) for i in range(0, shape[0], per)]


def _rng(seed: int, name: str, chunk: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), chunk])


class _Generator:
    """Produces each tensor's bytes chunk by chunk, and the dequantized floats for the HF copy."""

    def __init__(self, cfg: ModelConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, seed
        self._kv_b: dict[int, np.ndarray] = {}

    def kv_b_floats(self, layer: int) -> np.ndarray:
        """The float kv_b_proj [H*(nope+v), kv_lora] both attention layouts derive from, so one seed
        gives the same attention weights in either layout (before quantization)."""
        if layer not in self._kv_b:
            c = self.cfg
            name = names.blk(layer, "attn_kv_b")
            shape = (c.n_head * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank)
            std = np.float32(1.0 / math.sqrt(c.kv_lora_rank))
            self._kv_b = {layer: np.concatenate([
                _rng(self.seed, name, i).standard_normal((b - a, shape[1]), dtype=np.float32) * std
                for i, (a, b) in enumerate(_chunks(shape))])}
        return self._kv_b[layer]

    def chunks(self, p: _Plan) -> Iterator[tuple[int, int, np.ndarray]]:
        """(row0, row1, raw uint8 (rows, row_bytes)) along numpy axis 0."""
        shape, qt = p.shape, p.spec.ggml_type
        for i, (a, b) in enumerate(_chunks(shape)):
            cshape = (b - a,) + shape[1:] if len(shape) > 1 else shape
            floats = self._source_floats(p, a, b)
            raw = encode(qt, cshape, p.std, _rng(self.seed, p.spec.name, i), floats=floats, mean=p.mean)
            yield a, b, raw

    def _source_floats(self, p: _Plan, a: int, b: int) -> Optional[np.ndarray]:
        c = self.cfg
        if p.role not in ("attn_k_b", "attn_v_b", "attn_kv_b") or p.layer is None:
            return None
        kv = self.kv_b_floats(p.layer)
        if p.role == "attn_kv_b":
            return kv[a:b]
        per_head = kv.reshape(c.n_head, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank)[a]
        if p.role == "attn_k_b":  # converter: k_b = kv_b[:, :nope].transpose(1, 2) -> [H, kv_lora, nope]
            return np.ascontiguousarray(per_head[:c.qk_nope_head_dim].T)
        return np.ascontiguousarray(per_head[c.qk_nope_head_dim:])  # v_b [H, v, kv_lora]


# ---- Hugging Face copy

def hf_tensor_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The checkpoint tensors of DeepseekV3ForCausalLM (per-expert layout, as real checkpoints are)."""
    out: dict[str, tuple[int, ...]] = {}
    for name, ne in names.model_shapes(cfg, layout="legacy").items():
        layer, role = names.parse_name(name)
        shape = tuple(reversed(ne))
        if layer is None:
            out[names.HF_TOP_NAMES[name]] = shape
        elif role in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
            w = role.split("_")[1]
            for e in range(cfg.n_expert):
                out[f"model.layers.{layer}.mlp.experts.{e}.{w}_proj.weight"] = shape[1:]
        else:
            out[f"model.layers.{layer}.{names.HF_BLOCK_NAMES[role]}"] = shape
    return out


class _SafetensorsStream:
    """A float32 safetensors file written in any order: header first from the shapes, then rows."""

    def __init__(self, path: Path, shapes: Mapping[str, tuple[int, ...]]) -> None:
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        self.where: dict[str, tuple[int, int]] = {}  # name -> (offset, row bytes)
        off = 0
        for n, s in shapes.items():
            nbytes = 4 * int(np.prod(s))
            header[n] = {"dtype": "F32", "shape": list(s), "data_offsets": [off, off + nbytes]}
            self.where[n] = (off, 4 * int(np.prod(s[1:])) if len(s) > 1 else nbytes)
            off += nbytes
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)
        self.f = open(path, "wb")
        self.f.write(len(hb).to_bytes(8, "little") + hb)
        self.base = 8 + len(hb)
        self.f.truncate(self.base + off)
        self.remaining = off

    def write(self, name: str, row0: int, arr: np.ndarray) -> None:
        off, row_bytes = self.where[name]
        data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        self.f.seek(self.base + off + row0 * row_bytes)
        self.f.write(data)
        self.remaining -= len(data)

    def close(self) -> None:
        self.f.close()
        if self.remaining != 0:
            raise RuntimeError(f"HF copy incomplete: {self.remaining} bytes not written")


def _hf_write(st: _SafetensorsStream, cfg: ModelConfig, p: _Plan, a: int, w: np.ndarray) -> None:
    """Route one dequantized chunk (numpy shape, rows a..) to its HF tensor(s)."""
    if p.layer is None:
        st.write(names.HF_TOP_NAMES[p.spec.name], a, w)
        return
    pre, role = f"model.layers.{p.layer}.", names.parse_name(p.spec.name)[1]
    if role in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
        st.write(f"{pre}mlp.experts.{a}.{role.split('_')[1]}_proj.weight", 0, w[0])
    elif role == "ffn_gate_up_exps":
        D = cfg.n_ff_exp
        st.write(f"{pre}mlp.experts.{a}.gate_proj.weight", 0, w[0][:D])
        st.write(f"{pre}mlp.experts.{a}.up_proj.weight", 0, w[0][D:])
    elif role in ("attn_k_b", "attn_v_b"):
        per = cfg.qk_nope_head_dim + cfg.v_head_dim
        if role == "attn_k_b":  # [kv_lora, nope] -> rows h*per .. +nope of kv_b_proj
            st.write(f"{pre}self_attn.kv_b_proj.weight", a * per, w[0].T)
        else:
            st.write(f"{pre}self_attn.kv_b_proj.weight", a * per + cfg.qk_nope_head_dim, w[0])
    else:
        st.write(pre + names.HF_BLOCK_NAMES[role], a, w if w.ndim > 1 else w.reshape(1, -1))


def write_hf_config(cfg: ModelConfig, hf_dir: Path, vocab: Mapping[str, Any]) -> None:
    hf = hf_config_dict(cfg)
    hf["bos_token_id"] = int(vocab["tokenizer.ggml.bos_token_id"])
    hf["eos_token_id"] = int(vocab["tokenizer.ggml.eos_token_id"])
    (hf_dir / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    for fname, text in hf_tokenizer_files(vocab).items():
        (hf_dir / fname).write_text(text)


# ---- the entry point

def write_synthetic(preset: Union[str, ModelConfig], out_path: Union[str, Path], *, recipe: RecipeSpec = "default",
                    hf_dir: Union[str, Path, None] = None, split: Optional[int] = None, seed: int = 0,
                    legacy_kv_b: bool = False, fused_gate_up: bool = False, progress: bool = True,
                    n_layer: Optional[int] = None, n_expert: Optional[int] = None) -> Path:
    """Write a seeded synthetic model; returns the GGUF path (the first part when split).
    `preset`: a PRESETS name or a ModelConfig; `recipe`: a recipe name or {role: type, "base": name};
    `hf_dir`: also write the HF copy there; `split`: number of parts; `legacy_kv_b`: attn_kv_b layout;
    `n_layer` / `n_expert`: replace the preset's depth / routed-expert count (e.g. a K2 slice)."""
    cfg = preset_config(preset) if isinstance(preset, str) else preset
    over = {k: v for k, v in (("n_layer", n_layer), ("n_expert", n_expert)) if v is not None}
    if over:
        cfg = dataclasses.replace(cfg, **over)
    preset_name = preset if isinstance(preset, str) else "custom"
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    vocab = build_synthetic_vocab(cfg.n_vocab)
    plans = plan_tensors(cfg, recipe, legacy_kv_b=legacy_kv_b, fused_gate_up=fused_gate_up)
    recipe_name = recipe if isinstance(recipe, str) else "custom"

    md: dict[str, Any] = {
        "general.architecture": ARCH,
        "general.type": "model",
        "general.name": f"kimi-runtime synthetic {preset_name}",
        "general.quantization_version": 2,
    }
    if recipe_name.lower() in _FILE_TYPES:
        md["general.file_type"] = _FILE_TYPES[recipe_name.lower()]
    md.update(gguf_metadata(cfg, legacy_kv_b=legacy_kv_b))
    md.update(vocab)
    md["kimi_runtime.synth.preset"] = preset_name
    md["kimi_runtime.synth.recipe"] = recipe_name if isinstance(recipe, str) else json.dumps(dict(recipe))
    md["kimi_runtime.synth.seed"] = Typed(seed, VType.UINT64)

    gen = _Generator(cfg, seed)
    by_name = {p.spec.name: p for p in plans}
    st: Optional[_SafetensorsStream] = None
    if hf_dir is not None:
        hf_dir = Path(hf_dir)
        hf_dir.mkdir(parents=True, exist_ok=True)
        write_hf_config(cfg, hf_dir, vocab)
        st = _SafetensorsStream(hf_dir / "model.safetensors", hf_tensor_shapes(cfg))

    def chunks(spec: TensorSpec) -> Iterator[np.ndarray]:
        p = by_name[spec.name]
        for a, b, raw in gen.chunks(p):
            if st is not None:
                w = to_floats(raw, spec.ggml_type, spec.ne[0])
                cshape = (b - a,) + p.shape[1:] if len(p.shape) > 1 else p.shape
                _hf_write(st, cfg, p, a, w.reshape(cshape))
            yield raw

    total = sum(tensor_nbytes(p.spec.ggml_type, p.spec.ne) for p in plans)
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, desc=f"synth {preset_name}", disable=not progress) as bar:
        paths = write_gguf(out_path, md, [p.spec for p in plans], chunks, split=split, progress=bar.update)
    if st is not None:
        st.close()
    return paths[0]


def float_types_only(recipe: RecipeSpec) -> bool:
    """True when every matrix of the recipe is F32/F16/BF16 (an exactly reproducible model)."""
    return all(t in FLOAT_TYPES for t in resolve_recipe(recipe).values())


__all__ = ["PRESETS", "preset_config", "write_synthetic", "plan_tensors", "hf_tensor_shapes", "float_types_only"]
