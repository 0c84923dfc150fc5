"""Known models and the Unsloth-style per-projection recipes: Kimi K2 totals within 3% of the
published file sizes, types per projection and layer as documented in known_models.py."""
import gguf
import pytest

from kimi_runtime.experts.placement import Footprint
from kimi_runtime.known_models import KNOWN_MODELS, RECIPES, recipe_for

Q = gguf.GGMLQuantizationType


def test_known_models() -> None:
    assert set(KNOWN_MODELS) == {"kimi-k2", "kimi-k2-thinking", "kimi-k2.5", "deepseek-v3", "deepseek-r1"}
    for name in ("kimi-k2-thinking", "kimi-k2.5"):  # K2's shapes, a longer context
        cfg = KNOWN_MODELS[name]
        assert cfg.n_expert == 384 and cfg.n_head == 64 and cfg.context_length == 262144
    assert KNOWN_MODELS["deepseek-r1"].n_expert == 256 and KNOWN_MODELS["deepseek-r1"].n_leading_dense == 3


@pytest.mark.parametrize("name, published", [("UD-TQ1_0", 245), ("UD-IQ1_S", 281), ("UD-Q2_K_XL", 381),
                                             ("UD-Q4_K_XL", 588)])
def test_kimi_k2_totals_within_3_percent(name: str, published: float) -> None:
    r = RECIPES[name]
    assert r.published_gb == published
    cfg = KNOWN_MODELS["kimi-k2"]
    total = Footprint.from_config(cfg, r.type_for(cfg)).total_bytes / 1e9
    assert abs(total / published - 1) < 0.03, f"{name}: {total:.1f} GB vs {published} GB"


def test_recipe_types_per_projection_and_layer() -> None:
    cfg = KNOWN_MODELS["kimi-k2"]
    fp = Footprint.from_config(cfg, RECIPES["UD-Q2_K_XL"].type_for(cfg))
    t = {x.name: x.ggml_type for x in fp.tensors}
    assert t["blk.10.ffn_gate_exps.weight"] == t["blk.10.ffn_up_exps.weight"] == Q.Q2_K
    assert t["blk.10.ffn_down_exps.weight"] == Q.Q3_K  # down one step above gate/up
    assert t["blk.1.ffn_gate_exps.weight"] == Q.Q3_K and t["blk.3.ffn_down_exps.weight"] == Q.Q4_K  # first MoE
    assert t["blk.4.ffn_down_exps.weight"] == Q.Q3_K
    assert t["blk.60.ffn_down_exps.weight"] == Q.Q4_K  # the last layer
    assert t["blk.5.attn_k_b.weight"] == Q.Q8_0  # 128-wide rows: the 32-block fallback
    assert t["blk.5.ffn_gate_inp.weight"] == Q.F32 and t["blk.5.exp_probs_b.bias"] == Q.F32
    # DeepSeek's MoE layers start at 3: "the first 3 MoE layers" are 3, 4, 5.
    ds = KNOWN_MODELS["deepseek-v3"]
    t = {x.name: x.ggml_type for x in Footprint.from_config(ds, RECIPES["UD-Q2_K_XL"].type_for(ds)).tensors}
    assert t["blk.5.ffn_up_exps.weight"] == Q.Q3_K and t["blk.6.ffn_up_exps.weight"] == Q.Q2_K


def test_recipe_lookup() -> None:
    assert recipe_for("ud-q2_k_xl").name == "UD-Q2_K_XL"
    with pytest.raises(ValueError, match="known: UD-TQ1_0"):
        recipe_for("Q9_K")


def test_parser_name_lists_match_their_sources() -> None:
    # The parsers spell these out so that building them imports neither gguf nor numpy.
    from kimi_runtime.commands import plan, synth
    from kimi_runtime.synth_recipes import RECIPES as SYNTH_RECIPES

    assert set(plan.KNOWN_NAMES) == set(KNOWN_MODELS)
    assert tuple(plan.RECIPE_NAMES) == tuple(RECIPES)
    assert set(synth.RECIPE_NAMES) == set(SYNTH_RECIPES)
