"""Configurations of the real models this runtime targets (REFERENCE.md section 4), so `plan` can
answer "what would Kimi K2 at Q2_K need?" without the 360 GB file."""
from __future__ import annotations

from typing import Callable

import gguf

from kimi_runtime.config import ModelConfig, RopeScaling
from kimi_runtime.gguf.names import EXPERT_ROLES, parse_name

Q = gguf.GGMLQuantizationType

KNOWN_MODELS: dict[str, ModelConfig] = {
    "kimi-k2": ModelConfig(
        n_vocab=163840, n_embd=7168, n_layer=61, n_ff=18432, n_ff_exp=2048, n_head=64, q_lora_rank=1536,
        kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_expert=384,
        n_expert_used=8, n_expert_shared=1, n_leading_dense=1, n_group=1, topk_group=1,
        routed_scaling_factor=2.827, norm_topk_prob=True, gating="sigmoid", rms_norm_eps=1e-6,
        rope_theta=50000.0, context_length=131072,
        rope_scaling=RopeScaling("yarn", 32.0, 4096, 1.0, 1.0, 1.0, 1.0)),
    "deepseek-v3": ModelConfig(
        n_vocab=129280, n_embd=7168, n_layer=61, n_ff=18432, n_ff_exp=2048, n_head=128, q_lora_rank=1536,
        kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_expert=256,
        n_expert_used=8, n_expert_shared=1, n_leading_dense=3, n_group=8, topk_group=4,
        routed_scaling_factor=2.5, norm_topk_prob=True, gating="sigmoid", rms_norm_eps=1e-6,
        rope_theta=10000.0, context_length=163840,
        rope_scaling=RopeScaling("yarn", 40.0, 4096, 32.0, 1.0, 1.0, 1.0)),
}


def uniform_recipe(expert_type: Q, other_type: Q = Q.Q8_0) -> Callable[[str, tuple[int, ...]], Q]:
    """Routed experts in `expert_type`, other matrices in `other_type` (a 32-block fallback when a row
    is not a multiple of the type's block), norms / router / bias in F32."""

    def type_for(name: str, ne: tuple[int, ...]) -> Q:
        _, role = parse_name(name)
        if len(ne) == 1 or role in ("ffn_gate_inp", "exp_probs_b"):
            return Q.F32
        q = expert_type if role in EXPERT_ROLES else other_type
        if ne[0] % gguf.GGML_QUANT_SIZES[q][0]:
            q = Q.Q8_0
        return q

    return type_for
