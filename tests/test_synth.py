"""Synthetic models: presets, recipes, determinism, weight statistics, the HF copy (same weights,
loadable by transformers), kv_b reconstruction, split output, the vocabulary and the CLI."""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import quants

from kimi_runtime.gguf import QType, open_gguf
from kimi_runtime.gguf import names
from kimi_runtime.synth import PRESETS, hf_tensor_shapes, plan_tensors, preset_config, write_synthetic
from kimi_runtime.synth_recipes import RECIPES, resolve_recipe, tensor_type
from kimi_runtime.synth_vocab import SPECIAL_TOKENS, build_synthetic_vocab, special_token_ids


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _deq(m, name: str) -> np.ndarray:
    """A GGUF tensor dequantized by gguf-py, in numpy shape."""
    t = m.tensors[name]
    if t.ggml_type == QType.F32:
        return np.array(m.array(name))
    return quants.dequantize(m.array(name) if t.ggml_type not in (QType.F16, QType.BF16)
                             else t.data.reshape(t.n_rows, t.row_bytes), t.ggml_type).reshape(t.shape)


# ---- presets

def test_medium_preset_is_the_benchmark_shape():
    c = PRESETS["medium"]
    assert (c.n_embd, c.n_layer, c.n_leading_dense, c.n_expert, c.n_expert_used, c.n_expert_shared) == \
        (2048, 8, 1, 64, 6, 1)
    assert (c.n_ff_exp, c.n_head, c.q_lora_rank, c.kv_lora_rank) == (1024, 16, 512, 512)
    assert (c.qk_rope_head_dim, c.qk_nope_head_dim, c.v_head_dim, c.n_vocab, c.n_group) == (64, 128, 128, 32000, 1)
    assert c.n_ff % 256 == 0
    # ~1.9 GB in the default recipe (computed from the plan, not written)
    total = sum(p.spec.nbytes for p in plan_tensors(c))
    assert 1.8e9 < total < 2.2e9


def test_dsv3_preset_routing_shape():
    c = PRESETS["tiny-dsv3"]
    assert c.n_group > 1 and c.topk_group < c.n_group and c.n_leading_dense > 1
    assert preset_config("tiny", n_group=4, topk_group=2).n_group == 4
    with pytest.raises(ValueError):
        preset_config("nope")


@pytest.mark.parametrize("preset", ["tiny", "tiny-dsv3", "small", "medium"])
def test_preset_rows_fit_their_types(preset):
    for p in plan_tensors(PRESETS[preset]):
        from kimi_runtime.gguf.format import block_info

        assert p.spec.ne[0] % block_info(p.spec.ggml_type)[0] == 0, p.spec


def test_k2_slice_is_kimi_k2_cut_to_a_few_layers():
    from kimi_runtime.known_models import KNOWN_MODELS

    k2, c = KNOWN_MODELS["kimi-k2"], PRESETS["k2-slice"]
    # the same config but float fields snapped to float32 (the GGUF stores them so)
    assert dataclasses.replace(c, n_layer=k2.n_layer, routed_scaling_factor=k2.routed_scaling_factor,
                               rms_norm_eps=k2.rms_norm_eps) == k2
    assert c.routed_scaling_factor == pytest.approx(2.827, rel=1e-6)
    assert (c.n_embd, c.n_head, c.q_lora_rank, c.kv_lora_rank, c.qk_rope_head_dim) == (7168, 64, 1536, 512, 64)
    assert (c.n_expert, c.n_expert_used, c.n_expert_shared, c.n_ff_exp, c.n_ff) == (384, 8, 1, 2048, 18432)
    assert (c.n_vocab, c.n_group, c.n_leading_dense, c.n_layer) == (163840, 1, 1, 4)
    rs = c.rope_scaling
    assert (rs.type, rs.factor, rs.beta_fast, rs.beta_slow) == ("yarn", 32.0, 1.0, 1.0)


@pytest.mark.parametrize("recipe,per_expert", [
    ("ud-iq1_s", 2 * 7168 * 2048 // 256 * 50 + 7168 * 2048 // 256 * 66),  # IQ1_S gate/up, IQ2_XXS down
    ("ud-q2_k_xl", 2 * 7168 * 2048 // 256 * 84 + 7168 * 2048 // 256 * 110),  # Q2_K gate/up, Q3_K down
    ("ud-tq1_0", 2 * 7168 * 2048 // 256 * 54 + 7168 * 2048 // 256 * 56),  # TQ1_0 gate/up, IQ1_M down
])
def test_k2_slice_recipes_plan(recipe, per_expert):
    cfg = preset_config("k2-slice", n_layer=3, n_expert=16)
    plans = {p.spec.name: p.spec for p in plan_tensors(cfg, recipe)}
    assert plans["token_embd.weight"].ggml_type == QType.Q4_K and plans["output.weight"].ggml_type == QType.Q6_K
    assert plans["blk.1.attn_k_b.weight"].ggml_type == QType.Q8_0  # 128-wide rows
    assert plans["blk.0.ffn_gate.weight"].ne == (7168, 18432) and "blk.0.ffn_gate_exps.weight" not in plans
    exp = sum(plans[f"blk.1.ffn_{w}_exps.weight"].nbytes for w in ("gate", "up", "down"))
    assert exp == 16 * per_expert
    for s in plans.values():
        from kimi_runtime.gguf.format import block_info

        assert s.ne[0] % block_info(s.ggml_type)[0] == 0, s


def test_tiny_writes_fast(tmp_path):
    write_synthetic("tiny", tmp_path / "warm.gguf", progress=False)  # imports, vocab, calibration
    t0 = time.perf_counter()
    p = write_synthetic("tiny", tmp_path / "t.gguf", hf_dir=tmp_path / "hf", seed=5, progress=False)
    dt = time.perf_counter() - t0
    assert p.stat().st_size < 16 << 20
    assert dt < 4.0, f"tiny took {dt:.2f} s (goal < 2 s)"


# ---- recipes

EXPECTED_EXPERT_TYPES = {
    "default": ("Q4_K", "Q6_K"), "q4_k_m": ("Q4_K", "Q6_K"), "q2_k": ("Q2_K", "Q3_K"),
    "iq1_s": ("IQ1_S", "IQ2_XXS"), "tq1_0": ("TQ1_0", "TQ2_0"), "mxfp4": ("MXFP4", "MXFP4"),
    "q8_0": ("Q8_0", "Q8_0"), "f16": ("F16", "F16"), "bf16": ("BF16", "BF16"), "f32": ("F32", "F32"),
    "ud-tq1_0": ("TQ1_0", "IQ1_M"), "ud-iq1_s": ("IQ1_S", "IQ2_XXS"), "ud-q2_k_xl": ("Q2_K", "Q3_K"),
}


@pytest.mark.parametrize("recipe", sorted(EXPECTED_EXPERT_TYPES))
def test_recipe_types_and_weight_statistics(synth_model, recipe):
    m0 = synth_model("tiny", recipe)
    with open_gguf(m0.gguf) as m:
        cfg = m.config
        gate_t, down_t = EXPECTED_EXPERT_TYPES[recipe]
        layer = m.experts.layers[0]
        assert m.experts.types(layer) == {"gate": QType[gate_t], "up": QType[gate_t], "down": QType[down_t]}
        for name, t in m.tensors.items():
            _, role = names.parse_name(name)
            if t.ne[0] == t.n_elements or role in ("ffn_gate_inp",):
                assert t.ggml_type == QType.F32, name  # norms, biases, router
        if recipe in ("default", "q4_k_m", "q2_k", "iq1_s", "tq1_0"):
            assert m.tensors["blk.1.attn_k_b.weight"].ggml_type == QType.Q8_0  # 32-block for nope = 64
            assert m.tensors["blk.1.attn_q_b.weight"].ggml_type in (QType.Q5_0, QType.Q8_0)  # q_lora 128
        # weights: finite, zero-mean, std ~ 1/sqrt(fan_in)
        for which, fan_in in (("gate", cfg.n_embd), ("down", cfg.n_ff_exp)):
            w = _deq(m, m.experts.tensor(layer, which).name)
            assert np.isfinite(w).all()
            assert abs(w.std() * math.sqrt(fan_in) - 1.0) < 0.15, (which, w.std())
            assert abs(w.mean()) < 0.05 * w.std()
        embd = _deq(m, "token_embd.weight")
        assert np.isfinite(embd).all() and 0.8 < embd.std() < 1.2
        bias = m.array("blk.1.exp_probs_b.bias")
        assert bias.shape == (cfg.n_expert,) and np.abs(bias).max() < 0.5


@pytest.mark.parametrize("recipe", ["default", "ud-iq1_s", "ud-q2_k_xl", "ud-tq1_0"])
def test_tokens_route_to_many_experts(synth_model, recipe):
    """Blocks whose mins do not balance the mean give every hidden state a common direction and every
    token the same top-k (a prompt benchmark then measures a dense batch); a seeded 48-token prompt
    must spread over most experts of each layer."""
    from kimi_runtime.engine import Engine

    m = synth_model("tiny", recipe)
    eng = Engine.from_gguf(m.gguf, report=False)
    seen: dict[int, list[np.ndarray]] = {}
    eng.model.set_observer(lambda layer, pos, ids, w: seen.setdefault(layer, []).append(ids.numpy().copy()))
    cfg = eng.config
    eng.logits(np.random.default_rng(0).integers(0, cfg.n_vocab - 16, 48).tolist())
    assert sorted(seen) == cfg.moe_layers
    for layer, chunks in seen.items():
        ids = np.concatenate(chunks)
        counts = np.bincount(ids.ravel(), minlength=cfg.n_expert)
        assert (counts > 0).sum() >= 0.75 * cfg.n_expert, (layer, counts)
        assert counts.max() < 0.8 * ids.shape[0], (layer, counts)  # no expert taken by nearly every token
        top_sets = collections.Counter(tuple(sorted(row)) for row in ids.tolist())
        assert top_sets.most_common(1)[0][1] <= 0.25 * ids.shape[0], (layer, top_sets.most_common(3))


def test_recipe_overrides_and_fallbacks():
    t = resolve_recipe({"base": "q2_k", "ffn_down_exps": "Q8_0"})
    assert t["ffn_down_exps"] == QType.Q8_0 and t["ffn_gate_exps"] == QType.Q2_K
    assert tensor_type(t, "attn_q_b", (128, 512)) == QType.Q5_0  # attention stays Q4_K -> Q5_0 on 128 rows
    assert tensor_type(t, "ffn_gate_exps", (128, 256, 4)) == QType.IQ4_NL  # llama.cpp: Q2_K -> IQ4_NL
    with pytest.raises(ValueError):
        resolve_recipe("q3_k_xl")
    with pytest.raises(ValueError):
        resolve_recipe({"ffn_bogus": "Q4_K"})
    q4 = resolve_recipe("q4_k_m")
    assert tensor_type(q4, "attn_q_b", (128, 512)) == QType.Q5_0  # llama.cpp: Q4_K -> Q5_0
    assert tensor_type(q4, "ffn_down", (512, 256)) == QType.Q6_K
    assert tensor_type(q4, "norm", (256,)) == QType.F32
    iq = resolve_recipe("iq1_s")
    assert tensor_type(iq, "ffn_gate_exps", (128, 256, 4)) == QType.IQ4_NL
    assert set(RECIPES) >= {"f32", "f16", "bf16", "q8_0", "default", "q4_k_m", "q2_k", "iq1_s", "tq1_0"}


# ---- determinism

def test_deterministic_for_a_seed(tmp_path, synth_model):
    a = synth_model("tiny", "default")
    b = write_synthetic("tiny", tmp_path / "again.gguf", progress=False)
    assert _sha(a.gguf) == _sha(str(b))
    c = write_synthetic("tiny", tmp_path / "seed1.gguf", seed=1, progress=False)
    with open_gguf(a.gguf) as ma, open_gguf(c) as mc:
        assert list(ma.tensors) == list(mc.tensors)
        diff = [n for n in ma.tensors if not np.array_equal(ma.tensors[n].data, mc.tensors[n].data)]
        assert len(diff) == len(ma.tensors)
        assert ma.metadata["tokenizer.ggml.tokens"] == mc.metadata["tokenizer.ggml.tokens"]


def test_deterministic_across_processes(synth_model, tmp_path):
    a = synth_model("tiny", "iq1_s")
    out = tmp_path / "proc.gguf"
    code = (f"from kimi_runtime.synth import write_synthetic; "
            f"write_synthetic('tiny', {str(out)!r}, recipe='iq1_s', progress=False)")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONHASHSEED": "123",
                                                                    **__import__("os").environ})
    assert _sha(a.gguf) == _sha(str(out))


# ---- the HF copy

def test_hf_copy_loads_in_transformers(tiny_model_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model, info = transformers.DeepseekV3ForCausalLM.from_pretrained(tiny_model_dir.hf_dir,
                                                                     output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with open_gguf(tiny_model_dir.gguf) as m:
        assert model.config.vocab_size == m.config.n_vocab
        assert model.config.num_hidden_layers == m.config.n_layer
    ids = torch.arange(1, 33).reshape(1, -1) * 7 % 1000
    with torch.no_grad():
        logits = model(ids).logits.float()
    assert torch.isfinite(logits).all()
    assert 0.3 < float(logits.std(-1).mean()) < 10 and float(logits.abs().max()) < 100


def test_hf_copy_holds_the_gguf_weights(tiny_model_dir):
    from safetensors.numpy import load_file

    hf = load_file(str(Path(tiny_model_dir.hf_dir) / "model.safetensors"))
    with open_gguf(tiny_model_dir.gguf) as m:
        cfg = m.config
        assert set(hf) == set(hf_tensor_shapes(cfg))
        assert np.array_equal(hf["model.embed_tokens.weight"], _deq(m, "token_embd.weight"))
        assert np.array_equal(hf["lm_head.weight"], _deq(m, "output.weight"))
        assert np.array_equal(hf["model.norm.weight"], m.array("output_norm.weight"))
        for layer in range(cfg.n_layer):
            pre = f"model.layers.{layer}."
            assert np.array_equal(hf[pre + "self_attn.q_b_proj.weight"], _deq(m, names.blk(layer, "attn_q_b")))
            assert np.array_equal(hf[pre + "self_attn.kv_a_proj_with_mqa.weight"],
                                  _deq(m, names.blk(layer, "attn_kv_a_mqa")))
            assert np.array_equal(hf[pre + "input_layernorm.weight"], m.array(names.blk(layer, "attn_norm")))
        layer = m.experts.layers[-1]
        pre = f"model.layers.{layer}.mlp."
        for e in (0, 5, cfg.n_expert - 1):
            for which in ("gate", "up", "down"):
                s = m.experts.slice(layer, e, which)
                w = quants.dequantize(s.rows_data, s.ggml_type).reshape(s.rows, s.cols)
                assert np.array_equal(hf[f"{pre}experts.{e}.{which}_proj.weight"], w)
        assert np.array_equal(hf[pre + "gate.weight"], m.array(names.blk(layer, "ffn_gate_inp")))
        assert np.array_equal(hf[pre + "gate.e_score_correction_bias"], m.array(names.blk(layer, "exp_probs_b")))
        assert np.array_equal(hf[pre + "shared_experts.down_proj.weight"], _deq(m, names.blk(layer, "ffn_down_shexp")))


def _kv_b_from_split(m, layer: int) -> np.ndarray:
    """Undo the converter's split: k_b [H, kv_lora, nope] (transposed), v_b [H, v, kv_lora]."""
    cfg = m.config
    k_b = _deq(m, names.blk(layer, "attn_k_b"))
    v_b = _deq(m, names.blk(layer, "attn_v_b"))
    assert k_b.shape == (cfg.n_head, cfg.kv_lora_rank, cfg.qk_nope_head_dim)
    assert v_b.shape == (cfg.n_head, cfg.v_head_dim, cfg.kv_lora_rank)
    kv = np.concatenate([k_b.transpose(0, 2, 1), v_b], axis=1)
    return kv.reshape(cfg.n_head * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank)


def test_kv_b_reconstructs_from_k_b_v_b(tiny_model_dir):
    from safetensors.numpy import load_file

    hf = load_file(str(Path(tiny_model_dir.hf_dir) / "model.safetensors"))
    with open_gguf(tiny_model_dir.gguf) as m:
        for layer in range(m.config.n_layer):
            assert np.array_equal(_kv_b_from_split(m, layer), hf[f"model.layers.{layer}.self_attn.kv_b_proj.weight"])


def test_layouts_share_weights_in_float_recipes(synth_model):
    """Same seed, f32: the legacy attn_kv_b equals kv_b rebuilt from the split layout, and both HF copies
    are identical."""
    from safetensors.numpy import load_file

    split = synth_model("tiny", "f32", hf=True)
    legacy = synth_model("tiny", "f32", hf=True, legacy_kv_b=True)
    with open_gguf(split.gguf) as ms, open_gguf(legacy.gguf) as ml:
        assert ms.attn_layout == "split" and ml.attn_layout == "legacy"
        assert ml.metadata["deepseek2.attention.head_count_kv"] == ml.config.n_head
        assert ms.config == ml.config
        for layer in range(ms.config.n_layer):
            assert np.array_equal(_kv_b_from_split(ms, layer), _deq(ml, names.blk(layer, "attn_kv_b")))
    a = load_file(str(Path(split.hf_dir) / "model.safetensors"))
    b = load_file(str(Path(legacy.hf_dir) / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_hf_tokenizer_matches_vocab(tiny_model_dir):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model_dir.hf_dir)
    special = special_token_ids(1024)
    text = "Hello world! Привет 你好 🙂 def f(x): return x"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    ids = tok.encode("<|im_user|>user<|im_middle|>hi<|im_end|>")
    assert ids[0] == special["<|im_user|>"] and ids[-1] == special["<|im_end|>"]
    assert tok.eos_token_id == special["[EOS]"]


# ---- split output

def test_split_parts_are_named_and_balanced(synth_model):
    s = synth_model("tiny", "default", split=4)
    parts = sorted(Path(s.dir).glob("tiny-*-of-00004.gguf"))
    assert [p.name for p in parts] == [f"tiny-{i:05d}-of-00004.gguf" for i in range(1, 5)]
    sizes = [p.stat().st_size for p in parts]
    assert min(sizes) > 0.1 * max(sizes)
    with open_gguf(s.gguf) as m:
        for part in range(1, 4):
            import gguf

            r = gguf.GGUFReader(m.paths[part])
            keys = {k for k in r.fields if not k.startswith("GGUF.")}
            assert keys == {"split.no", "split.count", "split.tensors.count"}


# ---- vocabulary

def test_vocab_layout_and_specials():
    v = build_synthetic_vocab(1024)
    toks, types = v["tokenizer.ggml.tokens"], v["tokenizer.ggml.token_type"]
    assert len(toks) == len(types) == 1024 and len(set(toks)) == 1024
    assert toks[-len(SPECIAL_TOKENS):] == SPECIAL_TOKENS
    assert all(t == 3 for t in types[-len(SPECIAL_TOKENS):]) and types[0] == 1
    assert v["tokenizer.ggml.model"] == "gpt2" and v["tokenizer.ggml.pre"] == "kimi-k2"
    assert toks[v["tokenizer.ggml.bos_token_id"]] == "[BOS]" and toks[v["tokenizer.ggml.eos_token_id"]] == "[EOS]"
    for merge in v["tokenizer.ggml.merges"][:50]:
        a, b = merge.split(" ")
        assert a + b in toks
    # all 256 byte tokens are present, so any text tokenizes
    from tokenizers import pre_tokenizers

    assert set(pre_tokenizers.ByteLevel.alphabet()) <= set(toks)
    assert special_token_ids(1024)["</think>"] == 1023


def test_vocab_scripts_are_merged():
    toks = set(build_synthetic_vocab(2048)["tokenizer.ggml.tokens"])
    from tokenizers import pre_tokenizers

    enc = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)

    def bl(s: str) -> str:
        return enc.pre_tokenize_str(s)[0][0]

    assert bl("Привет") in toks or bl("ет") in toks  # Cyrillic merges exist
    assert any(len(t) >= 6 and t.startswith("ä") for t in toks)  # multi-byte CJK merges
    assert bl(" the") in toks


def test_vocab_deterministic_across_processes():
    code = ("import hashlib,json; from kimi_runtime.synth_vocab import build_synthetic_vocab as b; "
            "v=b(1024); print(hashlib.sha256(json.dumps([v['tokenizer.ggml.tokens'], "
            "v['tokenizer.ggml.merges']]).encode()).hexdigest())")
    outs = {subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
            for _ in range(2)}
    assert len(outs) == 1


# ---- CLI

def test_cli_synth_and_inspect(tmp_path, capsys):
    from kimi_runtime.cli import main

    out = tmp_path / "cli.gguf"
    assert main(["synth", "tiny", str(out), "--recipe", "q2_k", "--split", "2", "--seed", "3", "--quiet"]) == 0
    first = tmp_path / "cli-00001-of-00002.gguf"
    assert first.exists() and str(first) in capsys.readouterr().out
    assert main(["inspect", str(first), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["architecture"] == "deepseek2" and len(s["files"]) == 2
    assert s["synthetic"] == {"preset": "tiny", "recipe": "q2_k", "seed": 3}
    assert set(s["bytes_by_type"]) >= {"Q2_K", "Q3_K", "F32"}
    assert s["expert_bytes"] + s["non_expert_bytes"] == s["tensor_bytes"]
    ex = s["experts"]
    assert ex["moe_layers"] == 2 and ex["per_layer"][0]["types"] == {"gate": "Q2_K", "up": "Q2_K", "down": "Q3_K"}
    per_expert = 2 * 256 * 256 // 256 * 84 + 256 * 256 // 256 * 110
    assert ex["per_layer"][0]["expert_bytes"] == per_expert
    assert ex["routed_bytes_per_token"] == 4 * per_expert * 2
    assert s["memory"]["file_bytes"] == sum(Path(f).stat().st_size for f in s["files"])
    assert main(["inspect", str(first)]) == 0
    text = capsys.readouterr().out
    assert "bytes by type" in text and "disk + RAM + VRAM" in text and "per expert" in text


def test_cli_synth_layers_and_experts(tmp_path, capsys):
    from kimi_runtime.cli import main

    out = tmp_path / "slice.gguf"
    assert main(["synth", "tiny", str(out), "--layers", "2", "--experts", "8", "--recipe", "ud-iq1_s",
                 "--quiet"]) == 0
    with open_gguf(str(out)) as m:
        assert (m.config.n_layer, m.config.n_expert, m.config.n_leading_dense) == (2, 8, 1)
        assert m.tensors["blk.1.ffn_gate_exps.weight"].ggml_type == QType.IQ1_S
    assert main(["synth", "tiny", str(tmp_path / "bad.gguf"), "--experts", "2", "--quiet"]) != 0


def test_cli_inspect_reports_bad_file(tmp_path, capsys):
    from kimi_runtime.cli import main

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(4))
    assert main(["inspect", str(bad)]) == 2
    assert "bad.gguf" in capsys.readouterr().err


# ---- llama.cpp accepts the files (optional: llama-cpp-python is not installed by default)

@pytest.mark.parametrize("legacy", [False, True], ids=["k_b_v_b", "kv_b"])
def test_llama_cpp_loads_tiny(synth_model, legacy):
    llama_cpp = pytest.importorskip("llama_cpp")
    m = synth_model("tiny", "default", legacy_kv_b=legacy)
    llm = llama_cpp.Llama(model_path=m.gguf, n_ctx=64, vocab_only=False, verbose=False, logits_all=True)
    ids = llm.tokenize(b"Hello world", add_bos=False)
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids)])
    assert np.isfinite(logits).all() and logits.std() > 0.1
    assert llm.n_vocab() == 1024
