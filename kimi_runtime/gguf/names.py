"""llama.cpp's deepseek2 tensor names (`LLM_TENSOR_NAMES` / `load_arch_tensors`) and the shape each
must have for a ModelConfig, in GGUF ne order (ne[0] contiguous; numpy shape is the reverse).
The synthetic writer and the reader's validation both use this one table."""
from __future__ import annotations

import re
from typing import Optional

from kimi_runtime.config import ModelConfig

TOKEN_EMBD = "token_embd.weight"
OUTPUT = "output.weight"
OUTPUT_NORM = "output_norm.weight"

# per-block roles -> name suffix after "blk.N."
BLOCK_ROLES: dict[str, str] = {
    "attn_norm": "attn_norm.weight",
    "ffn_norm": "ffn_norm.weight",
    "attn_q_a": "attn_q_a.weight",
    "attn_q_a_norm": "attn_q_a_norm.weight",
    "attn_q_b": "attn_q_b.weight",
    "attn_q": "attn_q.weight",
    "attn_kv_a_mqa": "attn_kv_a_mqa.weight",
    "attn_kv_a_norm": "attn_kv_a_norm.weight",
    "attn_k_b": "attn_k_b.weight",
    "attn_v_b": "attn_v_b.weight",
    "attn_kv_b": "attn_kv_b.weight",
    "attn_output": "attn_output.weight",
    "ffn_gate": "ffn_gate.weight",
    "ffn_up": "ffn_up.weight",
    "ffn_down": "ffn_down.weight",
    "ffn_gate_inp": "ffn_gate_inp.weight",
    "exp_probs_b": "exp_probs_b.bias",
    "ffn_gate_exps": "ffn_gate_exps.weight",
    "ffn_up_exps": "ffn_up_exps.weight",
    "ffn_down_exps": "ffn_down_exps.weight",
    "ffn_gate_up_exps": "ffn_gate_up_exps.weight",
    "ffn_gate_shexp": "ffn_gate_shexp.weight",
    "ffn_up_shexp": "ffn_up_shexp.weight",
    "ffn_down_shexp": "ffn_down_shexp.weight",
}
_SUFFIX_TO_ROLE = {v: k for k, v in BLOCK_ROLES.items()}
_BLK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")

EXPERT_ROLES = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_up_exps")
NORM_ROLES = ("attn_norm", "ffn_norm", "attn_q_a_norm", "attn_kv_a_norm")


def blk(layer: int, role: str) -> str:
    return f"blk.{layer}.{BLOCK_ROLES[role]}"


def parse_name(name: str) -> tuple[Optional[int], str]:
    """(layer, role) for block tensors, (None, name) for the others; role "" if unknown."""
    m = _BLK_RE.match(name)
    if not m:
        return None, name if name in (TOKEN_EMBD, OUTPUT, OUTPUT_NORM) else ""
    return int(m[1]), _SUFFIX_TO_ROLE.get(m[2], "")


def is_expert_tensor(name: str) -> bool:
    return parse_name(name)[1] in EXPERT_ROLES


def layer_shapes(cfg: ModelConfig, layer: int, *, layout: str = "split",
                 fused_gate_up: bool = False) -> dict[str, tuple[int, ...]]:
    """Tensors of block `layer`, in the order the converter writes them. layout: "split" (attn_k_b /
    attn_v_b), "legacy" (attn_kv_b) or "all" (every optional tensor, for validation)."""
    E, H, D = cfg.n_embd, cfg.n_head, cfg.n_ff_exp
    nope, rope, v, kvl = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    s: dict[str, tuple[int, ...]] = {"attn_norm": (E,)}
    if cfg.q_lora_rank or layout == "all":
        s["attn_q_a"] = (E, cfg.q_lora_rank)
        s["attn_q_a_norm"] = (cfg.q_lora_rank,)
        s["attn_q_b"] = (cfg.q_lora_rank, H * cfg.qk_head_dim)
    if not cfg.q_lora_rank or layout == "all":
        s["attn_q"] = (E, H * cfg.qk_head_dim)
    s["attn_kv_a_mqa"] = (E, kvl + rope)
    s["attn_kv_a_norm"] = (kvl,)
    if layout in ("legacy", "all"):
        s["attn_kv_b"] = (kvl, H * (nope + v))
    if layout in ("split", "all"):
        s["attn_k_b"] = (nope, kvl, H)
        s["attn_v_b"] = (kvl, v, H)
    s["attn_output"] = (H * v, E)
    s["ffn_norm"] = (E,)
    if not cfg.is_moe_layer(layer):
        s["ffn_gate"] = (E, cfg.n_ff)
        s["ffn_up"] = (E, cfg.n_ff)
        s["ffn_down"] = (cfg.n_ff, E)
    else:
        n = cfg.n_expert
        s["ffn_gate_inp"] = (E, n)
        s["exp_probs_b"] = (n,)
        if fused_gate_up or layout == "all":
            s["ffn_gate_up_exps"] = (E, 2 * D, n)
        if not fused_gate_up or layout == "all":
            s["ffn_gate_exps"] = (E, D, n)
            s["ffn_up_exps"] = (E, D, n)
        s["ffn_down_exps"] = (D, E, n)
        if cfg.n_expert_shared:
            Ds = D * cfg.n_expert_shared
            s["ffn_gate_shexp"] = (E, Ds)
            s["ffn_up_shexp"] = (E, Ds)
            s["ffn_down_shexp"] = (Ds, E)
    return {blk(layer, r): ne for r, ne in s.items()}


def model_shapes(cfg: ModelConfig, *, layout: str = "split", fused_gate_up: bool = False,
                 with_output: bool = True) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model in file order (token_embd, blocks, output_norm, output)."""
    out: dict[str, tuple[int, ...]] = {TOKEN_EMBD: (cfg.n_embd, cfg.n_vocab)}
    for i in range(cfg.n_layer):
        out.update(layer_shapes(cfg, i, layout=layout, fused_gate_up=fused_gate_up))
    out[OUTPUT_NORM] = (cfg.n_embd,)
    if with_output:
        out[OUTPUT] = (cfg.n_embd, cfg.n_vocab)
    return out


def expected_shape(cfg: ModelConfig, name: str) -> Optional[tuple[int, ...]]:
    """The shape a tensor of this name must have under `cfg`, or None for names llama.cpp's deepseek2
    loader does not know (or layers beyond block_count)."""
    layer, role = parse_name(name)
    if layer is None:
        if role in (TOKEN_EMBD, OUTPUT):
            return (cfg.n_embd, cfg.n_vocab)
        if role == OUTPUT_NORM:
            return (cfg.n_embd,)
        return None
    if not role or layer >= cfg.n_layer:
        return None
    return layer_shapes(cfg, layer, layout="all").get(name)


# ---- Hugging Face (transformers DeepseekV3ForCausalLM) names of the same tensors

HF_BLOCK_NAMES: dict[str, str] = {
    "attn_norm": "input_layernorm.weight", "ffn_norm": "post_attention_layernorm.weight",
    "attn_q_a": "self_attn.q_a_proj.weight", "attn_q_a_norm": "self_attn.q_a_layernorm.weight",
    "attn_q_b": "self_attn.q_b_proj.weight", "attn_q": "self_attn.q_proj.weight",
    "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa.weight", "attn_kv_a_norm": "self_attn.kv_a_layernorm.weight",
    "attn_kv_b": "self_attn.kv_b_proj.weight", "attn_output": "self_attn.o_proj.weight",
    "ffn_gate": "mlp.gate_proj.weight", "ffn_up": "mlp.up_proj.weight", "ffn_down": "mlp.down_proj.weight",
    "ffn_gate_inp": "mlp.gate.weight", "exp_probs_b": "mlp.gate.e_score_correction_bias",
    "ffn_gate_shexp": "mlp.shared_experts.gate_proj.weight", "ffn_up_shexp": "mlp.shared_experts.up_proj.weight",
    "ffn_down_shexp": "mlp.shared_experts.down_proj.weight",
}
"""Block role -> name after `model.layers.N.` (routed experts are per-expert in HF and not listed)."""

HF_TOP_NAMES: dict[str, str] = {TOKEN_EMBD: "model.embed_tokens.weight", OUTPUT: "lm_head.weight",
                                OUTPUT_NORM: "model.norm.weight"}


def hf_name(name: str) -> Optional[str]:
    """The transformers name of a llama.cpp tensor name, or None when HF has no single tensor for it."""
    if name in HF_TOP_NAMES:
        return HF_TOP_NAMES[name]
    layer, role = parse_name(name)
    if layer is None or role not in HF_BLOCK_NAMES:
        return None
    return f"model.layers.{layer}.{HF_BLOCK_NAMES[role]}"
