"""The trained tiny Kimi-architecture model that ships with the package (kimi_runtime/assets/): its
config, its tokenizer as GGUF keys, and the conversion of a transformers DeepseekV3ForCausalLM state
dict to GGUF with llama.cpp's deepseek2 names (split attn_k_b / attn_v_b layout) in a type recipe.

scripts/train_tiny_kimi.py trains the model and calls `write_recipes`; the demo, the tests and the
cache study only read the shipped files (`asset_path`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping, Union

import numpy as np

from kimi_runtime.config import ARCH, ModelConfig, gguf_metadata
from kimi_runtime.gguf import names
from kimi_runtime.gguf.format import tensor_nbytes
from kimi_runtime.gguf.writer import TensorSpec, write_gguf
from kimi_runtime.gguf.format import QType
from kimi_runtime.synth_blocks import QUANTIZABLE, from_floats
from kimi_runtime.synth_recipes import resolve_recipe, tensor_type
from kimi_runtime.synth_vocab import SPECIAL_TOKENS, TOKEN_CONTROL, TOKEN_NORMAL

ASSETS = Path(__file__).resolve().parent / "assets"
MODEL_STEM = "tiny-kimi-shakespeare"
HELDOUT_FILE = "heldout.txt"
REFERENCE_FILE = "reference_logits.npz"

# Kimi K2's shape at toy scale: one dense layer, sigmoid routing with a correction bias, no groups
# (K2 has n_group 1), one shared expert, 6 of 64 routed experts, MLA with a q and a kv latent.
# hidden 256 keeps the routed experts' gate/up rows K-quantizable (256-multiples) as in real files.
CONFIG = ModelConfig(
    n_vocab=1024, n_embd=256, n_layer=4, n_ff=256, n_ff_exp=32, n_head=4, q_lora_rank=128, kv_lora_rank=64,
    qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_expert=64, n_expert_used=6, n_expert_shared=1,
    n_leading_dense=1, n_group=1, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True, gating="sigmoid",
    rms_norm_eps=1e-6, rope_theta=10000.0, context_length=1024,
)

# The shipped recipes. "ud_lowbit" follows Unsloth's dynamic quants in spirit: the routed experts (most
# of the bytes) ternary, everything the model touches for every token at 6-8 bits.
RECIPES: dict[str, Union[str, dict[str, str]]] = {
    "f16": "f16",
    "q8_0": "q8_0",
    "q4_k_m": "q4_k_m",
    "ud_lowbit": {"base": "q4_k_m", "ffn_gate_exps": "TQ2_0", "ffn_up_exps": "TQ2_0", "ffn_down_exps": "Q4_0",
                  "token_embd": "Q8_0", "output": "Q6_K", "attn_q_b": "Q8_0", "attn_output": "Q6_K"},
}


def asset_path(recipe: str = "q8_0") -> Path:
    """The shipped GGUF of one recipe (FileNotFoundError with the training command when missing)."""
    p = ASSETS / f"{MODEL_STEM}-{recipe}.gguf"
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing; it ships with the package (regenerate it with "
                                f"scripts/train_tiny_kimi.py, see its docstring)")
    return p


def heldout_text() -> str:
    """The held-out public-domain sample (never trained on) the demo and tests measure perplexity on."""
    return (ASSETS / HELDOUT_FILE).read_text(encoding="utf-8")


# ---- tokenizer

def vocab_keys(tokenizer_json: str) -> dict[str, Any]:
    """GGUF `tokenizer.*` keys (llama.cpp `gpt2` model, `kimi-k2` pre-tokenizer) of a byte-level BPE
    trained with synth_vocab's pipeline; Kimi's special tokens take the last ids, [BOS] first."""
    model = json.loads(tokenizer_json)["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    if [i for _, i in vocab] != list(range(len(vocab))):
        raise ValueError("tokenizer vocabulary ids are not contiguous")
    tokens = [t for t, _ in vocab]
    types = [TOKEN_NORMAL] * len(tokens)
    first_special = len(tokens)
    tokens += SPECIAL_TOKENS
    types += [TOKEN_CONTROL] * len(SPECIAL_TOKENS)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "kimi-k2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.asarray(types, dtype=np.int32),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": first_special + SPECIAL_TOKENS.index("[BOS]"),
        "tokenizer.ggml.eos_token_id": first_special + SPECIAL_TOKENS.index("[EOS]"),
        "tokenizer.ggml.add_bos_token": False,
    }


# ---- HF state dict -> GGUF

def _gguf_floats(cfg: ModelConfig, sd: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """The float32 numpy array (numpy order = reversed ne) of one llama.cpp tensor, from HF weights.
    Inverse of synth._hf_write: per-expert HF weights stack into [E, rows, cols]; kv_b_proj splits
    per head into k_b [H, kv_lora, nope] (transposed, as convert_hf_to_gguf does) and v_b [H, v, kv_lora]."""
    layer, role = names.parse_name(name)
    if layer is None:
        return np.asarray(sd[names.HF_TOP_NAMES[name]], np.float32)
    pre = f"model.layers.{layer}."
    if role in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
        w = role.split("_")[1]
        if f"{pre}mlp.experts.gate_up_proj" in sd:  # transformers 5 fused layout [E, 2D, hidden]
            if w == "down":
                return np.asarray(sd[f"{pre}mlp.experts.down_proj"], np.float32)
            gu = np.asarray(sd[f"{pre}mlp.experts.gate_up_proj"], np.float32)
            return gu[:, :cfg.n_ff_exp] if w == "gate" else gu[:, cfg.n_ff_exp:]
        return np.stack([np.asarray(sd[f"{pre}mlp.experts.{e}.{w}_proj.weight"], np.float32)
                         for e in range(cfg.n_expert)])
    if role in ("attn_k_b", "attn_v_b"):
        kv = np.asarray(sd[f"{pre}self_attn.kv_b_proj.weight"], np.float32)
        kv = kv.reshape(cfg.n_head, cfg.qk_nope_head_dim + cfg.v_head_dim, cfg.kv_lora_rank)
        if role == "attn_k_b":
            return np.ascontiguousarray(kv[:, :cfg.qk_nope_head_dim].transpose(0, 2, 1))
        return np.ascontiguousarray(kv[:, cfg.qk_nope_head_dim:])
    return np.asarray(sd[pre + names.HF_BLOCK_NAMES[role]], np.float32)


def encode_floats(rows: np.ndarray, qtype: QType) -> np.ndarray:
    """float32 rows -> raw blocks (rows, row_bytes): gguf-py for the float and legacy types and the
    ternary/MXFP4 ones, the native ggml reference quantizers for Q4_K / Q6_K."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if qtype in (QType.F32, QType.F16, QType.BF16) or qtype in QUANTIZABLE:
        return from_floats(rows, qtype)
    if qtype in (QType.Q4_K, QType.Q6_K):
        from kimi_runtime.quant import quantize

        return quantize(rows, int(qtype)).reshape(rows.shape[0], -1)
    from gguf import quants

    try:
        out = quants.quantize(rows, qtype)
    except NotImplementedError:
        raise ValueError(f"no quantizer for {qtype.name}") from None
    return np.ascontiguousarray(out).view(np.uint8).reshape(rows.shape[0], -1)


def _recipe_role(name: str) -> str:
    """The synth_recipes role of a tensor name (as synth._role does)."""
    _, role = names.parse_name(name)
    if role in names.NORM_ROLES or role == names.OUTPUT_NORM:
        return "norm"
    return {names.TOKEN_EMBD: "token_embd", names.OUTPUT: "output"}.get(role, role)


def write_model(cfg: ModelConfig, state_dict: Mapping[str, Any], vocab: Mapping[str, Any], out_path: Path,
                recipe: Union[str, Mapping[str, str]], extra_md: Mapping[str, Any] = ()) -> Path:
    """One GGUF of the trained weights (`state_dict`: HF names -> arrays or tensors) in `recipe`."""
    sd = {k: (v.detach().float().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
          for k, v in state_dict.items()}
    table = resolve_recipe(recipe)
    specs = []
    for name, ne in names.model_shapes(cfg, layout="split").items():
        specs.append(TensorSpec(name, tensor_type(table, _recipe_role(name), ne), ne))
    md: dict[str, Any] = {"general.architecture": ARCH, "general.type": "model",
                          "general.name": "kimi-runtime tiny Kimi (Shakespeare)", "general.quantization_version": 2}
    md.update(gguf_metadata(cfg))
    md.update(vocab)
    md.update(dict(extra_md))

    def chunks(spec: TensorSpec) -> Iterator[np.ndarray]:
        x = _gguf_floats(cfg, sd, spec.name)
        want = tuple(reversed(spec.ne))
        if x.shape != want:
            raise ValueError(f"{spec.name}: shape {x.shape}, expected {want}")
        yield encode_floats(x.reshape(-1, x.shape[-1]), spec.ggml_type)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(out_path, md, specs, chunks)
    return out_path


def recipe_bytes(cfg: ModelConfig, recipe: Union[str, Mapping[str, str]]) -> int:
    table = resolve_recipe(recipe)
    total = 0
    for name, ne in names.model_shapes(cfg, layout="split").items():
        total += tensor_nbytes(tensor_type(table, _recipe_role(name), ne), ne)
    return total


__all__ = ["CONFIG", "RECIPES", "ASSETS", "MODEL_STEM", "asset_path", "heldout_text", "vocab_keys",
           "write_model", "recipe_bytes"]
