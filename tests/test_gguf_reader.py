"""The mmap GGUF reader against gguf-py's GGUFReader on synthetic files (single, split, both attention
layouts, fused experts), the expert index against slicing the stacked tensors, and the view API."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from kimi_runtime.errors import GGUFError
from kimi_runtime.gguf import ExpertIndex, ExpertSlice, GGUFModel, QType, TensorInfo, open_gguf
from kimi_runtime.gguf import names

VARIANTS = {
    "single": {},
    "legacy_kv_b": {"legacy_kv_b": True},
    "split3": {"split": 3},
    "fused_gate_up": {"fused_gate_up": True},
    "dsv3_split2_legacy": {"preset": "tiny-dsv3", "split": 2, "legacy_kv_b": True},
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request, synth_model):
    kw = dict(VARIANTS[request.param])
    preset = kw.pop("preset", "tiny")
    return synth_model(preset, "default", **kw)


def _field_value(f: gguf.ReaderField):
    v = f.contents()
    return v


def test_agrees_with_gguf_reader(variant):
    with open_gguf(variant.gguf) as m:
        seen = set()
        for part, path in enumerate(m.paths):
            r = gguf.GGUFReader(path)
            for t in r.tensors:
                mt = m.tensors[t.name]
                assert mt.part == part
                assert mt.ggml_type == t.tensor_type
                assert mt.ne == tuple(int(x) for x in t.shape)
                assert mt.shape == tuple(reversed(mt.ne))
                assert mt.offset == t.data_offset
                assert mt.nbytes == t.n_bytes
                assert np.array_equal(mt.data, np.asarray(t.data).reshape(-1).view(np.uint8))
                seen.add(t.name)
            if part == 0:
                for key, f in r.fields.items():
                    if key.startswith("GGUF."):
                        continue
                    ours, theirs = m.metadata[key], _field_value(f)
                    if isinstance(ours, np.ndarray):
                        ours = ours.tolist()
                    if isinstance(ours, float):
                        assert ours == pytest.approx(theirs)
                    else:
                        assert ours == theirs, key
        assert seen == set(m.tensors)


def test_split_finds_parts_and_matches_single(synth_model):
    single = synth_model("tiny", "default")
    split = synth_model("tiny", "default", split=3)
    assert Path(split.gguf).name == "tiny-00001-of-00003.gguf"
    with open_gguf(single.gguf) as a, open_gguf(split.gguf) as b:
        assert [p.name for p in b.paths] == [f"tiny-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
        assert b.metadata["split.count"] == 3 and b.metadata["split.no"] == 0
        assert b.metadata["split.tensors.count"] == len(a.tensors) == len(b.tensors)
        assert {t.part for t in b.tensors.values()} == {0, 1, 2}
        assert list(a.tensors) == list(b.tensors)  # file order preserved across parts
        for name, ta in a.tensors.items():
            tb = b.tensors[name]
            assert (ta.ggml_type, ta.ne, ta.nbytes) == (tb.ggml_type, tb.ne, tb.nbytes)
            assert np.array_equal(ta.data, tb.data), name
        assert a.config == b.config
        for layer in a.experts.layers:
            for e in (0, 7, 15):
                for w in ("gate", "up", "down"):
                    assert np.array_equal(a.experts.slice(layer, e, w).data, b.experts.slice(layer, e, w).data)
    # any part opens the whole set
    with open_gguf(Path(split.gguf).with_name("tiny-00002-of-00003.gguf")) as c:
        assert len(c.paths) == 3 and c.paths[0].name.endswith("00001-of-00003.gguf")


def test_expert_slices_match_stacked_tensor(variant):
    with open_gguf(variant.gguf) as m:
        cfg = m.config
        ex = m.experts
        assert isinstance(ex, ExpertIndex)
        assert ex.layers == cfg.moe_layers and ex.n_expert == cfg.n_expert
        for layer in ex.layers:
            total = 0
            for which in ("gate", "up", "down"):
                info = ex.tensor(layer, which)
                r = gguf.GGUFReader(m.paths[info.part])
                rt = next(t for t in r.tensors if t.name == info.name)
                stacked = np.asarray(rt.data).view(np.uint8).reshape(cfg.n_expert, -1, info.row_bytes)
                fused = info.name.endswith("ffn_gate_up_exps.weight")
                for e in range(cfg.n_expert):
                    s = ex.slice(layer, e, which)
                    assert isinstance(s, ExpertSlice)
                    rows = slice(None)
                    if fused:
                        rows = slice(0, cfg.n_ff_exp) if which == "gate" else slice(cfg.n_ff_exp, None)
                    want = stacked[e][rows]
                    assert s.rows_data.shape == want.shape
                    assert np.array_equal(s.rows_data, want)
                    assert s.part == info.part and s.ggml_type == info.ggml_type
                    assert m.mmap(s.part)[s.offset:s.offset + s.nbytes].tobytes() == want.tobytes()
                    assert (s.rows, s.cols) == ((cfg.n_ff_exp, cfg.n_embd) if which != "down"
                                                else (cfg.n_embd, cfg.n_ff_exp))
                    assert s.row_bytes == info.row_bytes and s.nbytes == s.rows * s.row_bytes
                total += ex.slice(layer, 0, which).nbytes
            assert ex.expert_bytes(layer) == total
            # experts are contiguous, one after the other, inside their stacked tensor
            g0, g1 = ex.slice(layer, 0, "down"), ex.slice(layer, 1, "down")
            assert g1.offset == g0.offset + g0.nbytes


def test_fused_gate_up_layout(synth_model):
    m0 = synth_model("tiny", "default", fused_gate_up=True)
    with open_gguf(m0.gguf) as m:
        layer = m.experts.layers[0]
        assert names.blk(layer, "ffn_gate_up_exps") in m.tensors
        assert names.blk(layer, "ffn_gate_exps") not in m.tensors
        g, u = m.experts.slice(layer, 3, "gate"), m.experts.slice(layer, 3, "up")
        assert g.tensor == u.tensor and u.offset == g.offset + g.nbytes


def test_views_are_zero_copy_and_typed(tiny_gguf):
    with open_gguf(tiny_gguf) as m:
        assert isinstance(m, GGUFModel)
        base = m.mmap(0)
        assert base.dtype == np.uint8 and not base.flags.writeable
        for name, t in m.tensors.items():
            assert isinstance(t, TensorInfo)
            assert t.data.shape == (t.nbytes,) and np.shares_memory(t.data, base)
            a = m.array(name)
            assert np.shares_memory(a, base)
            if t.ggml_type == QType.F32:
                assert a.dtype == np.float32 and a.shape == t.shape
                assert np.isfinite(a).all()
            else:
                assert a.dtype == np.uint8 and a.shape == (t.n_rows, t.row_bytes)
        norm = m.array("output_norm.weight")
        assert abs(float(norm.mean()) - 1.0) < 0.1  # norms are near 1


def test_metadata_and_tokenizer_keys(tiny_gguf):
    with open_gguf(tiny_gguf) as m:
        md = m.metadata
        assert md["general.architecture"] == "deepseek2" and m.architecture == "deepseek2"
        tok = m.tokenizer_metadata
        assert tok["tokenizer.ggml.model"] == "gpt2" and tok["tokenizer.ggml.pre"] == "kimi-k2"
        assert len(tok["tokenizer.ggml.tokens"]) == m.config.n_vocab
        assert isinstance(tok["tokenizer.ggml.token_type"], np.ndarray)  # big numeric arrays
        assert all(k.startswith("tokenizer.") for k in tok)
        assert m.attn_layout == "split"
        assert md["deepseek2.attention.head_count_kv"] == 1


def test_close_releases_and_guards(tiny_gguf):
    m = open_gguf(tiny_gguf)
    t = next(iter(m.tensors.values()))
    s = m.experts.slice(m.experts.layers[0], 0, "gate")
    kept = t.data  # a view held past close stays valid (the mapping lives until it is dropped)
    m.close()
    assert kept.size == t.nbytes and int(kept[0]) >= 0
    with pytest.raises(GGUFError, match="closed"):
        _ = t.data
    with pytest.raises(GGUFError, match="closed"):
        _ = s.data
    m.close()  # idempotent
    with open_gguf(tiny_gguf) as m2:
        assert m2.tensors


def test_bad_slice_arguments(tiny_gguf):
    with open_gguf(tiny_gguf) as m:
        with pytest.raises(KeyError):
            m.experts.slice(0, 0, "gate")  # layer 0 is dense
        with pytest.raises(IndexError):
            m.experts.slice(1, 16, "gate")
        with pytest.raises(ValueError):
            m.experts.slice(1, 0, "gate_up")


def test_non_deepseek_file_opens_without_config(tmp_path):
    from kimi_runtime.gguf.format import QType as Q
    from kimi_runtime.gguf.writer import TensorSpec, write_gguf

    p = tmp_path / "llama.gguf"
    specs = [TensorSpec("a", Q.F32, (8, 2)), TensorSpec("b", Q.Q8_0, (64,))]
    write_gguf(p, {"general.architecture": "llama"}, specs,
               lambda s: [np.arange(s.nbytes, dtype=np.uint8)])
    with open_gguf(p) as m:
        assert m.architecture == "llama" and m.array("a").shape == (2, 8)
        with pytest.raises(GGUFError, match="architecture"):
            _ = m.config


def test_names_table_matches_llama_cpp_conventions():
    from kimi_runtime.synth import preset_config

    cfg = preset_config("tiny")
    s = names.model_shapes(cfg)
    assert s["token_embd.weight"] == (256, 1024) and s["output.weight"] == (256, 1024)
    assert s["blk.1.attn_k_b.weight"] == (64, 256, 4)  # {nope, kv_lora, H}
    assert s["blk.1.attn_v_b.weight"] == (256, 64, 4)  # {kv_lora, v, H}
    assert s["blk.1.ffn_gate_exps.weight"] == (256, 256, 16)
    assert s["blk.1.exp_probs_b.bias"] == (16,)
    assert "blk.0.ffn_gate_inp.weight" not in s and "blk.0.ffn_gate.weight" in s
    legacy = names.model_shapes(cfg, layout="legacy")
    assert legacy["blk.0.attn_kv_b.weight"] == (256, 4 * (64 + 64))
    assert names.parse_name("blk.12.exp_probs_b.bias") == (12, "exp_probs_b")
    assert names.expected_shape(cfg, "blk.99.attn_norm.weight") is None
