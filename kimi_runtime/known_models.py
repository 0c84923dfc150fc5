"""Configurations of the real models this runtime targets (REFERENCE.md section 4) and per-projection
type recipes modelled on Unsloth's dynamic GGUFs, so `plan` can answer "what would Kimi K2 at
UD-Q2_K_XL need?" without the 381 GB file.

The recipes (Unsloth does not publish per-tensor tables; these follow the pattern its files show:
routed ffn_down one step above gate/up, the first MoE layers and the last one higher, attention,
shared experts and the output head well above the experts, routers and norms in F32):

| recipe      | gate/up exps | down exps | higher layers (gate/up, down)             | non-expert          |
|-------------|--------------|-----------|-------------------------------------------|---------------------|
| UD-TQ1_0    | TQ1_0        | IQ2_XXS   | first 3 MoE + last: IQ2_XXS, Q2_K         | low: Q4_K, Q6_K     |
| UD-IQ1_S    | IQ1_S        | Q2_K      | first 20 MoE + last: IQ2_XXS, Q3_K        | low: Q4_K, Q6_K     |
| UD-Q2_K_XL  | Q2_K         | Q3_K      | first 3 MoE + last: Q3_K, Q4_K            | mid: Q6_K, Q8_0     |
| UD-Q4_K_XL  | Q4_K         | Q4_K      | first 12 MoE: Q4_K, Q5_K                  | high: Q8_0, Q6_K    |

Totals for Kimi K2 (tests/test_plan_recipes.py) against the published sizes 245 / 281 / 381 / 588 GB:
241.4 (-1.5%), 277.8 (-1.1%), 384.9 (+1.0%), 591.9 (+0.7%).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping, Optional

import gguf

from kimi_runtime.config import ModelConfig, RopeScaling
from kimi_runtime.gguf.names import EXPERT_ROLES, parse_name

Q = gguf.GGMLQuantizationType

_K2 = ModelConfig(
    n_vocab=163840, n_embd=7168, n_layer=61, n_ff=18432, n_ff_exp=2048, n_head=64, q_lora_rank=1536,
    kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_expert=384,
    n_expert_used=8, n_expert_shared=1, n_leading_dense=1, n_group=1, topk_group=1,
    routed_scaling_factor=2.827, norm_topk_prob=True, gating="sigmoid", rms_norm_eps=1e-6,
    rope_theta=50000.0, context_length=131072,
    rope_scaling=RopeScaling("yarn", 32.0, 4096, 1.0, 1.0, 1.0, 1.0))
_DSV3 = ModelConfig(
    n_vocab=129280, n_embd=7168, n_layer=61, n_ff=18432, n_ff_exp=2048, n_head=128, q_lora_rank=1536,
    kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_expert=256,
    n_expert_used=8, n_expert_shared=1, n_leading_dense=3, n_group=8, topk_group=4,
    routed_scaling_factor=2.5, norm_topk_prob=True, gating="sigmoid", rms_norm_eps=1e-6,
    rope_theta=10000.0, context_length=163840,
    rope_scaling=RopeScaling("yarn", 40.0, 4096, 32.0, 1.0, 1.0, 1.0))

# K2-Thinking and K2.5 share K2's shapes; their longer context (yarn x64, 262144) is from K2.5's
# text_config, and K2-Thinking's beta_fast is UNCONFIRMED (REFERENCE.md 4). Sizes do not depend on it.
_LONG = RopeScaling("yarn", 64.0, 4096, 32.0, 1.0, 1.0, 1.0)

KNOWN_MODELS: dict[str, ModelConfig] = {
    "kimi-k2": _K2,
    "kimi-k2-thinking": replace(_K2, context_length=262144, rope_scaling=_LONG),
    "kimi-k2.5": replace(_K2, context_length=262144, rope_scaling=_LONG),
    "deepseek-v3": _DSV3,
    "deepseek-r1": _DSV3,  # the same architecture and shapes as V3
}

TypeFor = Callable[[str, tuple[int, ...]], Q]


def _fits(q: Q, ne: tuple[int, ...]) -> bool:
    return ne[0] % gguf.GGML_QUANT_SIZES[q][0] == 0


def _float_role(role: str, ne: tuple[int, ...]) -> bool:
    return len(ne) == 1 or role in ("ffn_gate_inp", "exp_probs_b")


def uniform_recipe(expert_type: Q, other_type: Q = Q.Q8_0) -> TypeFor:
    """Routed experts in `expert_type`, other matrices in `other_type` (a 32-block fallback when a row
    is not a multiple of the type's block), norms / router / bias in F32."""

    def type_for(name: str, ne: tuple[int, ...]) -> Q:
        _, role = parse_name(name)
        if _float_role(role, ne):
            return Q.F32
        q = expert_type if role in EXPERT_ROLES else other_type
        return q if _fits(q, ne) else Q.Q8_0

    return type_for


# Non-expert types by role ("default" for every other matrix, "fallback" for rows that are not a
# multiple of 256, e.g. attn_k_b's 128).
_LOW = {"default": Q.Q4_K, "output.weight": Q.Q6_K, "attn_kv_a_mqa": Q.Q6_K, "attn_v_b": Q.Q6_K,
        "ffn_down_shexp": Q.Q6_K, "fallback": Q.Q5_0}
_MID = {"default": Q.Q6_K, "token_embd.weight": Q.Q4_K, "attn_kv_a_mqa": Q.Q8_0, "attn_v_b": Q.Q8_0,
        "fallback": Q.Q8_0}
_HIGH = {"default": Q.Q8_0, "token_embd.weight": Q.Q6_K, "fallback": Q.Q8_0}


@dataclass(frozen=True)
class Recipe:
    """Per-projection types of a dynamic quant: routed gate/up and down, the same for the `first`
    MoE layers and (when `last`) the final one, and the non-expert table."""

    name: str
    gate_up: Q
    down: Q
    gate_up_hi: Q
    down_hi: Q
    first: int
    last: bool
    non_expert: Mapping[str, Q]
    published_gb: Optional[float] = None  # Kimi K2's file size on Hugging Face, GB (10^9 bytes)

    def type_for(self, cfg: ModelConfig) -> TypeFor:
        moe = list(cfg.moe_layers)
        hi = set(moe[:self.first]) | ({moe[-1]} if self.last and moe else set())

        def type_for(name: str, ne: tuple[int, ...]) -> Q:
            layer, role = parse_name(name)
            if _float_role(role, ne):
                return Q.F32
            up = layer in hi
            if role in ("ffn_gate_exps", "ffn_up_exps", "ffn_gate_up_exps"):
                q = self.gate_up_hi if up else self.gate_up
            elif role == "ffn_down_exps":
                q = self.down_hi if up else self.down
            else:
                q = self.non_expert.get(name, self.non_expert.get(role, self.non_expert["default"]))
            return q if _fits(q, ne) else self.non_expert["fallback"]

        return type_for

    def describe(self) -> str:
        return (f"{self.name}: experts gate/up {self.gate_up.name}, down {self.down.name}; first {self.first} "
                f"MoE layers{' and the last' if self.last else ''} {self.gate_up_hi.name}/{self.down_hi.name}; "
                f"non-expert mostly {self.non_expert['default'].name}")


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("UD-TQ1_0", Q.TQ1_0, Q.IQ2_XXS, Q.IQ2_XXS, Q.Q2_K, 3, True, _LOW, 245),
    Recipe("UD-IQ1_S", Q.IQ1_S, Q.Q2_K, Q.IQ2_XXS, Q.Q3_K, 20, True, _LOW, 281),
    Recipe("UD-Q2_K_XL", Q.Q2_K, Q.Q3_K, Q.Q3_K, Q.Q4_K, 3, True, _MID, 381),
    Recipe("UD-Q4_K_XL", Q.Q4_K, Q.Q4_K, Q.Q4_K, Q.Q5_K, 12, False, _HIGH, 588),
)}


def recipe_for(name: str) -> Recipe:
    key = {k.upper(): k for k in RECIPES}.get(name.strip().upper())
    if key is None:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[key]
