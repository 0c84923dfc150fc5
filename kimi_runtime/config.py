"""ModelConfig: the DeepSeek-V3 architecture hyper-parameters, from GGUF `deepseek2.*` metadata
(llama.cpp's defaults where a key is absent) or from a Hugging Face config.json."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

from kimi_runtime.errors import ConfigError

ARCH = "deepseek2"


@dataclass(frozen=True)
class RopeScaling:
    """YaRN parameters. `mscale_all_dim` scales the softmax (llama.cpp: yarn_log_multiplier / 0.1);
    `mscale` scales cos/sin relative to it (GGUF cannot store it: llama.cpp assumes mscale ==
    mscale_all_dim, i.e. a net RoPE magnitude of 1)."""

    type: str = "none"  # "none" | "yarn" | "linear"
    factor: float = 1.0
    original_context_length: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.type == "yarn" and self.factor > 1.0


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1.0 else 0.1 * mscale * math.log(scale) + 1.0


# Far above any real model (Kimi K2: vocab 163840, hidden 7168, 61 layers, 384 experts).
_LIMITS = {
    "n_vocab": 1 << 24, "n_embd": 1 << 20, "n_ff": 1 << 24, "n_ff_exp": 1 << 24, "n_layer": 1 << 14,
    "n_head": 1 << 14, "q_lora_rank": 1 << 20, "kv_lora_rank": 1 << 20, "qk_nope_head_dim": 1 << 16,
    "qk_rope_head_dim": 1 << 16, "v_head_dim": 1 << 16, "n_expert": 1 << 16, "n_expert_shared": 1 << 10,
    "n_group": 1 << 16, "context_length": 1 << 40,
}


@dataclass(frozen=True)
class ModelConfig:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_ff: int  # dense FFN width (leading dense layers)
    n_ff_exp: int  # routed/shared expert width
    n_head: int
    q_lora_rank: int  # 0: plain attn_q projection
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    n_expert: int
    n_expert_used: int
    n_expert_shared: int
    n_leading_dense: int
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = False
    gating: str = "softmax"  # "sigmoid" (DeepSeek V3 / Kimi) or "softmax" (V2)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    context_length: int = 4096
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"model config: {msg}")

        for name in ("n_vocab", "n_embd", "n_layer", "n_head", "kv_lora_rank", "qk_rope_head_dim",
                     "v_head_dim", "n_ff_exp"):
            need(getattr(self, name) > 0, f"{name} must be positive (got {getattr(self, name)})")
        need(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim must be even")
        need(0 <= self.n_leading_dense <= self.n_layer, "leading dense layers exceed block count")
        if self.n_leading_dense < self.n_layer:
            need(self.n_expert > 0, "MoE layers need expert_count > 0")
            need(0 < self.n_expert_used <= self.n_expert, "expert_used_count must be in 1..expert_count")
            need(self.n_group >= 1 and self.n_expert % self.n_group == 0,
                 f"expert_count {self.n_expert} not divisible by expert_group_count {self.n_group}")
            need(1 <= self.topk_group <= self.n_group, "expert_group_used_count must be in 1..groups")
            need(self.n_expert_used <= self.topk_group * (self.n_expert // self.n_group),
                 "expert_used_count exceeds the experts of the selected groups")
        need(self.gating in ("sigmoid", "softmax"), f"unknown gating {self.gating!r}")
        # Absurd sizes (a corrupt or hostile file) would drive loops and allocations downstream.
        for name, limit in _LIMITS.items():
            need(getattr(self, name) <= limit, f"{name} = {getattr(self, name)} exceeds the sanity limit {limit}")

    # ---- derived sizes
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def kv_cache_dim(self) -> int:
        """Values cached per token per layer by MLA: the normalised latent plus the roped key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        s = self.qk_head_dim ** -0.5
        if self.rope_scaling.enabled:
            m = yarn_get_mscale(self.rope_scaling.factor, self.rope_scaling.mscale_all_dim)
            s *= m * m
        return s

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.n_leading_dense

    @property
    def moe_layers(self) -> list[int]:
        return [i for i in range(self.n_layer) if self.is_moe_layer(i)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ---- sources
    @classmethod
    def from_gguf_metadata(cls, md: Mapping[str, Any], source: str = "<gguf>") -> "ModelConfig":
        """`md` maps GGUF keys to Python values (ints, floats, bools, strings, lists)."""
        arch = md.get("general.architecture")
        if arch != ARCH:
            raise ConfigError(f"{source}: general.architecture is {arch!r}, expected {ARCH!r}")
        return _from_gguf(md, source)

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], source: str = "config.json") -> "ModelConfig":
        return _from_hf(hf, source)


def _typed(md: Mapping[str, Any], key: str, kind: type, source: str, default: Any = None,
           required: bool = False) -> Any:
    full = f"{ARCH}.{key}"
    if full not in md:
        if required:
            raise ConfigError(f"{source}: required key {full} is missing")
        return default
    v = md[full]
    if kind is bool:
        ok = isinstance(v, bool)
    elif kind is int:
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif kind is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    else:
        ok = isinstance(v, kind)
    if not ok:
        raise ConfigError(f"{source}: key {full} has type {type(v).__name__}, expected {kind.__name__}")
    if kind is int and v < 0:
        raise ConfigError(f"{source}: key {full} is negative ({v})")
    if kind is float and not math.isfinite(float(v)):
        raise ConfigError(f"{source}: key {full} is not finite ({v})")
    return kind(v)


def _from_gguf(md: Mapping[str, Any], src: str) -> ModelConfig:
    def g(key: str, kind: type, default: Any = None, required: bool = False) -> Any:
        return _typed(md, key, kind, src, default, required)

    n_embd = g("embedding_length", int, required=True)
    n_head = g("attention.head_count", int, required=True)
    rope_dim = g("rope.dimension_count", int, required=True)
    kv_lora = g("attention.kv_lora_rank", int, required=True)
    # New files: key_length = kv_lora + rope (576) and the per-head dims in *_mla; legacy: per-head.
    k_len = g("attention.key_length_mla", int) or g("attention.key_length", int, required=True)
    v_len = g("attention.value_length_mla", int) or g("attention.value_length", int, required=True)
    if k_len <= rope_dim:
        raise ConfigError(f"{src}: key length {k_len} must exceed rope.dimension_count {rope_dim}")

    gating_id = g("expert_gating_func", int, default=1)  # llama.cpp: absent -> softmax
    if gating_id not in (1, 2):
        raise ConfigError(f"{src}: {ARCH}.expert_gating_func={gating_id} is not 1 (softmax) or 2 (sigmoid)")
    n_group = max(1, g("expert_group_count", int, default=1))
    topk_group = max(1, g("expert_group_used_count", int, default=1))
    if n_group == 1:
        topk_group = 1

    st = md.get(f"{ARCH}.rope.scaling.type", "none")
    if not isinstance(st, str):
        raise ConfigError(f"{src}: key {ARCH}.rope.scaling.type has type {type(st).__name__}, expected str")
    factor = g("rope.scaling.factor", float, default=1.0)
    log_mul = g("rope.scaling.yarn_log_multiplier", float, default=0.0)
    mscale_all = log_mul / 0.1
    rope = RopeScaling(
        type=st,
        factor=factor,
        original_context_length=g("rope.scaling.original_context_length", int, default=0),
        beta_fast=g("rope.scaling.yarn_beta_fast", float, default=32.0),
        beta_slow=g("rope.scaling.yarn_beta_slow", float, default=1.0),
        mscale=mscale_all,
        mscale_all_dim=mscale_all,
    )
    n_expert = g("expert_count", int, default=0)
    return ModelConfig(
        n_vocab=g("vocab_size", int) or _vocab_from_tokens(md, src),
        n_embd=n_embd,
        n_layer=g("block_count", int, required=True),
        n_ff=g("feed_forward_length", int, required=True),
        n_ff_exp=g("expert_feed_forward_length", int, required=n_expert > 0, default=0) or 1,
        n_head=n_head,
        q_lora_rank=g("attention.q_lora_rank", int, default=0),
        kv_lora_rank=kv_lora,
        qk_nope_head_dim=k_len - rope_dim,
        qk_rope_head_dim=rope_dim,
        v_head_dim=v_len,
        n_expert=n_expert,
        n_expert_used=g("expert_used_count", int, default=0),
        n_expert_shared=g("expert_shared_count", int, default=0),
        n_leading_dense=g("leading_dense_block_count", int, default=0),
        n_group=n_group,
        topk_group=topk_group,
        routed_scaling_factor=g("expert_weights_scale", float, default=1.0),
        norm_topk_prob=g("expert_weights_norm", bool, default=False),
        gating="sigmoid" if gating_id == 2 else "softmax",
        rms_norm_eps=g("attention.layer_norm_rms_epsilon", float, required=True),
        rope_theta=g("rope.freq_base", float, default=10000.0),
        rope_scaling=rope,
        context_length=g("context_length", int, default=4096),
    )


def _vocab_from_tokens(md: Mapping[str, Any], src: str) -> int:
    toks = md.get("tokenizer.ggml.tokens")
    if toks is None:
        raise ConfigError(f"{src}: neither {ARCH}.vocab_size nor tokenizer.ggml.tokens is present")
    if not isinstance(toks, (list, tuple)):
        raise ConfigError(f"{src}: key tokenizer.ggml.tokens has type {type(toks).__name__}, expected an array "
                          f"of strings")
    return len(toks)


def _from_hf(hf: Mapping[str, Any], src: str) -> ModelConfig:
    def need(key: str, kind: type = int) -> Any:
        if key not in hf:
            raise ConfigError(f"{src}: required field {key!r} is missing")
        return kind(hf[key])

    rs = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    rtype = rs.get("rope_type", rs.get("type", "none")) if rs else "none"
    theta = float(hf.get("rope_theta", rs.get("rope_theta", 10000.0) if rs else 10000.0))
    rope = RopeScaling()
    if rtype == "yarn":
        rope = RopeScaling(
            type="yarn",
            factor=float(rs.get("factor", 1.0)),
            original_context_length=int(rs.get("original_max_position_embeddings", 0)),
            beta_fast=float(rs.get("beta_fast", 32.0)),
            beta_slow=float(rs.get("beta_slow", 1.0)),
            mscale=float(rs.get("mscale", 1.0)),
            mscale_all_dim=float(rs.get("mscale_all_dim", 0.0)),
        )
    scoring = hf.get("scoring_func", "sigmoid")
    n_group = int(hf.get("n_group") or 1)
    return ModelConfig(
        n_vocab=need("vocab_size"),
        n_embd=need("hidden_size"),
        n_layer=need("num_hidden_layers"),
        n_ff=need("intermediate_size"),
        n_ff_exp=need("moe_intermediate_size"),
        n_head=need("num_attention_heads"),
        q_lora_rank=int(hf.get("q_lora_rank") or 0),
        kv_lora_rank=need("kv_lora_rank"),
        qk_nope_head_dim=need("qk_nope_head_dim"),
        qk_rope_head_dim=need("qk_rope_head_dim"),
        v_head_dim=need("v_head_dim"),
        n_expert=int(hf.get("n_routed_experts") or 0),
        n_expert_used=int(hf.get("num_experts_per_tok") or 0),
        n_expert_shared=int(hf.get("n_shared_experts") or 0),
        n_leading_dense=int(hf.get("first_k_dense_replace", 0)),
        n_group=n_group,
        topk_group=int(hf.get("topk_group") or 1) if n_group > 1 else 1,
        routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
        norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
        gating="softmax" if scoring == "softmax" else "sigmoid",
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=rope,
        context_length=int(hf.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """A transformers DeepseekV3Config-compatible dict (model_type deepseek_v3) for this config."""
    d: dict[str, Any] = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": cfg.n_vocab,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.n_ff,
        "moe_intermediate_size": cfg.n_ff_exp,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,
        "n_shared_experts": cfg.n_expert_shared,
        "n_routed_experts": cfg.n_expert,
        "routed_scaling_factor": cfg.routed_scaling_factor,
        "kv_lora_rank": cfg.kv_lora_rank,
        "q_lora_rank": cfg.q_lora_rank or None,
        "qk_rope_head_dim": cfg.qk_rope_head_dim,
        "v_head_dim": cfg.v_head_dim,
        "qk_nope_head_dim": cfg.qk_nope_head_dim,
        "n_group": cfg.n_group,
        "topk_group": cfg.topk_group,
        "num_experts_per_tok": cfg.n_expert_used,
        "first_k_dense_replace": cfg.n_leading_dense,
        "norm_topk_prob": cfg.norm_topk_prob,
        "scoring_func": cfg.gating,
        "topk_method": "noaux_tc",
        "hidden_act": "silu",
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_interleave": True,
        "attention_bias": False,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": "float32",
    }
    rs = cfg.rope_scaling
    if rs.enabled:
        d["rope_scaling"] = {
            "type": "yarn", "rope_type": "yarn", "factor": rs.factor,
            "original_max_position_embeddings": rs.original_context_length,
            "beta_fast": rs.beta_fast, "beta_slow": rs.beta_slow,
            "mscale": rs.mscale, "mscale_all_dim": rs.mscale_all_dim,
        }
    return d


def gguf_metadata(cfg: ModelConfig, legacy_kv_b: bool = False) -> dict[str, Any]:
    """The `deepseek2.*` keys llama.cpp's converter writes for this config (values as Python types;
    the writer picks u32/f32/bool/str)."""
    a = ARCH
    md: dict[str, Any] = {
        f"{a}.block_count": cfg.n_layer,
        f"{a}.context_length": cfg.context_length,
        f"{a}.embedding_length": cfg.n_embd,
        f"{a}.feed_forward_length": cfg.n_ff,
        f"{a}.attention.head_count": cfg.n_head,
        f"{a}.attention.head_count_kv": cfg.n_head if legacy_kv_b else 1,
        f"{a}.rope.freq_base": cfg.rope_theta,
        f"{a}.attention.layer_norm_rms_epsilon": cfg.rms_norm_eps,
        f"{a}.expert_used_count": cfg.n_expert_used,
        f"{a}.leading_dense_block_count": cfg.n_leading_dense,
        f"{a}.vocab_size": cfg.n_vocab,
        f"{a}.attention.kv_lora_rank": cfg.kv_lora_rank,
        f"{a}.rope.dimension_count": cfg.qk_rope_head_dim,
        f"{a}.expert_feed_forward_length": cfg.n_ff_exp,
        f"{a}.expert_count": cfg.n_expert,
        f"{a}.expert_shared_count": cfg.n_expert_shared,
        f"{a}.expert_weights_scale": cfg.routed_scaling_factor,
        f"{a}.expert_weights_norm": cfg.norm_topk_prob,
        f"{a}.expert_gating_func": 2 if cfg.gating == "sigmoid" else 1,
    }
    if cfg.q_lora_rank:
        md[f"{a}.attention.q_lora_rank"] = cfg.q_lora_rank
    if cfg.n_group > 1:
        md[f"{a}.expert_group_count"] = cfg.n_group
        md[f"{a}.expert_group_used_count"] = cfg.topk_group
    if legacy_kv_b:
        md[f"{a}.attention.key_length"] = cfg.qk_head_dim
        md[f"{a}.attention.value_length"] = cfg.v_head_dim
    else:
        md[f"{a}.attention.key_length"] = cfg.kv_lora_rank + cfg.qk_rope_head_dim
        md[f"{a}.attention.value_length"] = cfg.kv_lora_rank
        md[f"{a}.attention.key_length_mla"] = cfg.qk_head_dim
        md[f"{a}.attention.value_length_mla"] = cfg.v_head_dim
    rs = cfg.rope_scaling
    if rs.enabled:
        md[f"{a}.rope.scaling.type"] = "yarn"
        md[f"{a}.rope.scaling.factor"] = rs.factor
        md[f"{a}.rope.scaling.original_context_length"] = rs.original_context_length
        md[f"{a}.rope.scaling.yarn_log_multiplier"] = 0.1 * rs.mscale_all_dim
        md[f"{a}.rope.scaling.yarn_beta_fast"] = rs.beta_fast
        md[f"{a}.rope.scaling.yarn_beta_slow"] = rs.beta_slow
    return md




KV_CACHE_ELEMENT_BYTES = {"f16": 2, "f32": 4}


def kv_cache_bytes(cfg: ModelConfig, n_ctx: int, cache_type: str = "f16") -> int:
    """Bytes of the latent KV cache for `n_ctx` positions: per layer and position the normalised latent
    (kv_lora_rank) and the roped key (qk_rope_head_dim), in f16 or f32. The one formula the engine
    allocates by and `run`, `inspect` and `plan` report; here so that the CLI can use it before torch."""
    if cache_type not in KV_CACHE_ELEMENT_BYTES:
        raise ValueError(f"cache type must be one of {', '.join(KV_CACHE_ELEMENT_BYTES)} (got {cache_type!r})")
    return cfg.n_layer * int(n_ctx) * cfg.kv_cache_dim * KV_CACHE_ELEMENT_BYTES[cache_type]
