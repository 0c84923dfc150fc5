"""ModelConfig from deepseek2 GGUF metadata and from HF config.json: round trips, llama.cpp's defaults
for absent keys, YaRN, and typed errors for wrong or absurd values."""
from __future__ import annotations

import dataclasses
import math

import pytest

from kimi_runtime.config import (ARCH, ModelConfig, RopeScaling, gguf_metadata, hf_config_dict,
                                 yarn_get_mscale)
from kimi_runtime.errors import ConfigError
from kimi_runtime.synth import PRESETS


def _md(cfg: ModelConfig, legacy: bool = False, **extra) -> dict:
    md = {"general.architecture": ARCH, **gguf_metadata(cfg, legacy_kv_b=legacy)}
    md.update(extra)
    return md


def _approx_equal(a: ModelConfig, b: ModelConfig) -> None:
    """Equal up to float32 rounding (GGUF stores floats as f32)."""
    def flat(c: ModelConfig) -> dict:
        d = dataclasses.asdict(c)
        rs = d.pop("rope_scaling")
        return {**d, **{f"rope_scaling.{k}": v for k, v in rs.items()}}

    da, db = flat(a), flat(b)
    assert da.keys() == db.keys()
    for k in da:
        if isinstance(da[k], float):
            assert da[k] == pytest.approx(db[k], rel=1e-6), k
        else:
            assert da[k] == db[k], k


@pytest.mark.parametrize("legacy", [False, True], ids=["mla_keys", "legacy_keys"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_gguf_round_trip(preset, legacy):
    cfg = PRESETS[preset]
    _approx_equal(ModelConfig.from_gguf_metadata(_md(cfg, legacy)), cfg)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_hf_round_trip(preset):
    cfg = PRESETS[preset]
    _approx_equal(ModelConfig.from_hf_config(hf_config_dict(cfg)), cfg)


def test_key_lengths_mla_vs_legacy():
    cfg = PRESETS["medium"]
    new, old = gguf_metadata(cfg), gguf_metadata(cfg, legacy_kv_b=True)
    assert new[f"{ARCH}.attention.key_length"] == 512 + 64 and new[f"{ARCH}.attention.value_length"] == 512
    assert new[f"{ARCH}.attention.key_length_mla"] == 192 and new[f"{ARCH}.attention.head_count_kv"] == 1
    assert old[f"{ARCH}.attention.key_length"] == 192 and f"{ARCH}.attention.key_length_mla" not in old
    assert old[f"{ARCH}.attention.head_count_kv"] == 16


def test_llama_cpp_defaults_for_absent_keys():
    md = _md(PRESETS["tiny-dsv3"])
    for k in ("expert_gating_func", "expert_group_count", "expert_group_used_count", "expert_weights_scale",
              "expert_weights_norm", "rope.freq_base", "rope.scaling.type", "rope.scaling.factor"):
        md.pop(f"{ARCH}.{k}", None)
    cfg = ModelConfig.from_gguf_metadata(md)
    assert cfg.gating == "softmax"  # absent -> softmax, as llama.cpp
    assert (cfg.n_group, cfg.topk_group) == (1, 1)
    assert cfg.routed_scaling_factor == 1.0 and cfg.norm_topk_prob is False
    assert cfg.rope_theta == 10000.0 and not cfg.rope_scaling.enabled


def test_group_used_ignored_when_one_group():
    md = _md(PRESETS["tiny"], **{f"{ARCH}.expert_group_count": 1, f"{ARCH}.expert_group_used_count": 3})
    assert ModelConfig.from_gguf_metadata(md).topk_group == 1


def test_yarn_betas_defaults_and_honoured():
    cfg = PRESETS["tiny"]
    md = _md(cfg)
    md.pop(f"{ARCH}.rope.scaling.yarn_beta_fast")
    md.pop(f"{ARCH}.rope.scaling.yarn_beta_slow")
    rs = ModelConfig.from_gguf_metadata(md).rope_scaling
    assert (rs.beta_fast, rs.beta_slow) == (32.0, 1.0)
    md[f"{ARCH}.rope.scaling.yarn_beta_fast"] = 1.0
    md[f"{ARCH}.rope.scaling.yarn_beta_slow"] = 1.0
    rs = ModelConfig.from_gguf_metadata(md).rope_scaling
    assert (rs.beta_fast, rs.beta_slow) == (1.0, 1.0) and rs.factor == 32.0 and rs.original_context_length == 4096


def test_kimi_k2_softmax_scale():
    # REFERENCE.md section 7: 192^-0.5 * (1 + 0.1 * ln 32)^2 = 0.130861 for K2
    k2 = dataclasses.replace(PRESETS["medium"], rope_scaling=RopeScaling(
        type="yarn", factor=32.0, original_context_length=4096, mscale=1.0, mscale_all_dim=1.0))
    assert k2.softmax_scale == pytest.approx(0.130861, abs=1e-6)
    assert yarn_get_mscale(1.0, 1.0) == 1.0
    assert dataclasses.replace(k2, rope_scaling=RopeScaling()).softmax_scale == pytest.approx(192 ** -0.5)
    # through the GGUF keys: yarn_log_multiplier = 0.1 * mscale_all_dim
    cfg = ModelConfig.from_gguf_metadata(_md(k2))
    assert cfg.softmax_scale == pytest.approx(0.130861, abs=1e-6)


def test_derived_sizes():
    cfg = PRESETS["medium"]
    assert cfg.qk_head_dim == 192 and cfg.kv_cache_dim == 576
    assert cfg.moe_layers == list(range(1, 8)) and not cfg.is_moe_layer(0)


def test_vocab_size_from_tokens_when_absent():
    md = _md(PRESETS["tiny"])
    md.pop(f"{ARCH}.vocab_size")
    md["tokenizer.ggml.tokens"] = ["a"] * 777
    assert ModelConfig.from_gguf_metadata(md).n_vocab == 777
    md["tokenizer.ggml.tokens"] = 5
    with pytest.raises(ConfigError, match="tokenizer.ggml.tokens"):
        ModelConfig.from_gguf_metadata(md)
    del md["tokenizer.ggml.tokens"]
    with pytest.raises(ConfigError, match="vocab_size"):
        ModelConfig.from_gguf_metadata(md)


@pytest.mark.parametrize("key,value,fragment", [
    ("embedding_length", "256", "embedding_length"),
    ("block_count", 3.0, "block_count"),
    ("block_count", True, "block_count"),
    ("expert_weights_norm", 1, "expert_weights_norm"),
    ("expert_weights_scale", "2.5", "expert_weights_scale"),
    ("expert_weights_scale", math.inf, "not finite"),
    ("rope.freq_base", math.nan, "not finite"),
    ("attention.head_count", -4, "negative"),
    ("rope.scaling.type", 7, "rope.scaling.type"),
    ("expert_gating_func", 3, "expert_gating_func"),
    ("rope.dimension_count", 63, "even"),
    ("attention.key_length_mla", 32, "key length"),
    ("expert_used_count", 0, "expert_used_count"),
    ("expert_group_count", 3, "divisible"),
    ("leading_dense_block_count", 9, "dense"),
    ("block_count", 1 << 20, "sanity limit"),
    ("context_length", 1 << 60, "sanity limit"),
])
def test_bad_values_raise_config_error(key, value, fragment):
    md = _md(PRESETS["tiny"], **{f"{ARCH}.{key}": value})
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        ModelConfig.from_gguf_metadata(md, source="x.gguf")


@pytest.mark.parametrize("key", ["embedding_length", "attention.head_count", "rope.dimension_count",
                                 "attention.kv_lora_rank", "block_count", "feed_forward_length",
                                 "attention.layer_norm_rms_epsilon", "expert_feed_forward_length"])
def test_missing_required_key(key):
    md = _md(PRESETS["tiny"])
    md.pop(f"{ARCH}.{key}")
    with pytest.raises(ConfigError, match="x.gguf"):
        ModelConfig.from_gguf_metadata(md, source="x.gguf")


def test_wrong_architecture():
    md = _md(PRESETS["tiny"], **{"general.architecture": "llama"})
    with pytest.raises(ConfigError, match="llama"):
        ModelConfig.from_gguf_metadata(md)


def test_hf_config_dict_for_transformers():
    d = hf_config_dict(PRESETS["tiny-dsv3"])
    assert d["model_type"] == "deepseek_v3" and d["scoring_func"] == "sigmoid"
    assert (d["n_group"], d["topk_group"], d["first_k_dense_replace"]) == (4, 2, 2)
    assert d["rope_scaling"]["type"] == "yarn" and d["rope_interleave"] is True
    transformers = pytest.importorskip("transformers")
    c = transformers.DeepseekV3Config(**d)
    assert c.qk_head_dim == 128 and c.rope_parameters["rope_type"] == "yarn"
