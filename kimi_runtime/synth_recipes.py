"""Per-tensor ggml type recipes for synthetic models, in the spirit of Unsloth's dynamic quants: the
routed experts (almost all the bytes) get the low-bit type with ffn_down one step higher; attention,
shared expert and embeddings stay at 4-8 bits; norms, router and its bias are always F32.
A row length that a 256-block type cannot take falls back as llama.cpp's quantizer does."""
from __future__ import annotations

from typing import Mapping, Union

from kimi_runtime.gguf.format import QType, block_info, qtype_of

# roles that are F32 in every recipe (llama.cpp keeps them F32 too)
ALWAYS_F32 = ("norm", "ffn_gate_inp", "exp_probs_b")
MATRIX_ROLES = ("token_embd", "output", "attn_q_a", "attn_q_b", "attn_q", "attn_kv_a_mqa", "attn_k_b", "attn_v_b",
                "attn_kv_b", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "ffn_gate_exps", "ffn_up_exps",
                "ffn_down_exps", "ffn_gate_up_exps", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp")


def _uniform(t: str) -> dict[str, str]:
    return {r: t for r in MATRIX_ROLES}


# non-expert part of the quantized recipes
_NON_EXPERT = {
    "token_embd": "Q4_K", "output": "Q6_K",
    "attn_q_a": "Q4_K", "attn_q_b": "Q4_K", "attn_q": "Q4_K", "attn_kv_a_mqa": "Q6_K",
    "attn_k_b": "Q8_0", "attn_v_b": "Q8_0", "attn_kv_b": "Q6_K", "attn_output": "Q4_K",
    "ffn_gate": "Q4_K", "ffn_up": "Q4_K", "ffn_down": "Q6_K",
    "ffn_gate_shexp": "Q6_K", "ffn_up_shexp": "Q6_K", "ffn_down_shexp": "Q6_K",
}


def _experts(gate_up: str, down: str, **extra: str) -> dict[str, str]:
    return {**_NON_EXPERT, "ffn_gate_exps": gate_up, "ffn_up_exps": gate_up, "ffn_gate_up_exps": gate_up,
            "ffn_down_exps": down, **extra}


RECIPES: dict[str, dict[str, str]] = {
    "f32": _uniform("F32"),
    "f16": _uniform("F16"),
    "bf16": _uniform("BF16"),
    "q8_0": _uniform("Q8_0"),
    "q4_k_m": _experts("Q4_K", "Q6_K"),
    "q2_k": _experts("Q2_K", "Q3_K", token_embd="Q8_0"),
    "iq1_s": _experts("IQ1_S", "IQ2_XXS", token_embd="Q8_0"),
    "tq1_0": _experts("TQ1_0", "TQ2_0", token_embd="Q8_0"),
    "mxfp4": _experts("MXFP4", "MXFP4", token_embd="Q8_0"),
}
RECIPES["default"] = RECIPES["q4_k_m"]

# Unsloth-dynamic-like recipes of the real Kimi K2 files (UD-TQ1_0, UD-IQ1_S, UD-Q2_K_XL): routed
# experts low-bit with down_exps one step higher, token_embd Q4_K, output Q6_K, attn_k_b (128-wide rows)
# Q8_0, the latent projection and the shared expert's down at 8 bits, the rest at 4-6 bits.
_UD = {"attn_kv_a_mqa": "Q8_0", "ffn_down_shexp": "Q8_0"}
RECIPES.update({
    "ud-tq1_0": _experts("TQ1_0", "IQ1_M", **_UD),
    "ud-iq1_s": _experts("IQ1_S", "IQ2_XXS", **_UD),
    "ud-q2_k_xl": _experts("Q2_K", "Q3_K", **_UD, attn_q_b="Q6_K", attn_output="Q6_K"),
})

# llama.cpp (llama-quant.cpp) when ne0 is not a multiple of 256
_FALLBACK = {
    QType.TQ1_0: QType.Q4_0, QType.TQ2_0: QType.Q4_0,
    **{t: QType.IQ4_NL for t in (QType.IQ2_XXS, QType.IQ2_XS, QType.IQ2_S, QType.IQ3_XXS, QType.IQ3_S, QType.IQ1_S,
                                 QType.IQ1_M, QType.Q2_K, QType.Q3_K, QType.IQ4_XS)},
    QType.Q4_K: QType.Q5_0, QType.Q5_K: QType.Q5_1, QType.Q6_K: QType.Q8_0,
}

RecipeSpec = Union[str, Mapping[str, str]]


def resolve_recipe(recipe: RecipeSpec) -> dict[str, QType]:
    """A recipe name, or a mapping of role -> type with an optional "base" recipe name (default
    "default"); roles as in MATRIX_ROLES."""
    if isinstance(recipe, str):
        key = recipe.lower()
        if key not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose from {', '.join(sorted(RECIPES))}")
        table = dict(RECIPES[key])
    else:
        over = dict(recipe)
        table = dict(RECIPES[str(over.pop("base", "default")).lower()])
        for role in over:
            if role not in MATRIX_ROLES:
                raise ValueError(f"unknown recipe role {role!r}; roles: {', '.join(MATRIX_ROLES)}")
        table.update(over)
    return {r: qtype_of(t) for r, t in table.items()}


def tensor_type(table: Mapping[str, QType], role: str, ne: tuple[int, ...]) -> QType:
    """The ggml type of a tensor of this role and shape under a resolved recipe."""
    if role in ALWAYS_F32 or len(ne) == 1:
        return QType.F32
    t = table[role]
    for _ in range(3):
        blck, _ = block_info(t)
        if ne[0] % blck == 0:
            return t
        t = _FALLBACK.get(t, QType.F16)
    return QType.F16
