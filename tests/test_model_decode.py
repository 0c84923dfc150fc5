"""Incremental decode over the latent KV cache gives the whole-sequence logits; the expert-provider
seam and the routing observer see what the router chose; engine errors are clear exceptions."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from kimi_runtime.engine import Engine  # noqa: E402
from kimi_runtime.model.attention import kv_cache_bytes  # noqa: E402
from kimi_runtime.model.moe import DirectExpertProvider  # noqa: E402

from test_model_reference import BASE, SHAPES, assert_close_logits, make_hf_model  # noqa: E402

SEQ = 40


@pytest.fixture(scope="module", params=["kimi", "dsv3", "yarn_k2"])
def model_dir(request, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp(f"dec_{request.param}"))
    make_hf_model(path, seed=3, **SHAPES[request.param])
    return path


def _ids(n: int = SEQ) -> torch.Tensor:
    return torch.randint(0, BASE["vocab_size"], (n,), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
@pytest.mark.parametrize("split_kv_b", [False, True])
def test_prefill_then_decode_equals_whole_sequence(model_dir, split_kv_b, native) -> None:
    eng = Engine.from_hf(model_dir, split_kv_b=split_kv_b, cache_type="f32", native=native)
    assert (eng.model.native is not None) == native
    ids = _ids()
    ref = eng.logits(ids)  # naive path, fresh cache
    eng.reset()
    outs = [eng.prefill(ids[:9])]
    for t in ids[9:].tolist():
        outs.append(eng.decode(t))  # absorbed path, one token at a time
    assert_close_logits(torch.stack(outs), ref[8:], rel=1e-5)
    assert eng.n_past == SEQ


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_chunked_prefill_and_reset(model_dir, native) -> None:
    eng = Engine.from_hf(model_dir, cache_type="f32", native=native)
    ids = _ids()
    ref = eng.logits(ids)
    eng.reset()
    a = eng.prefill(ids[:15], all_logits=True)
    b = eng.prefill(ids[15:], all_logits=True)
    assert_close_logits(torch.cat([a, b]), ref, rel=1e-5)
    eng.reset()
    torch.testing.assert_close(eng.prefill(ids[:5]), ref[4], rtol=0, atol=1e-5 * ref.abs().max().item())


def test_absorbed_whole_sequence_equals_naive(model_dir) -> None:
    ids = _ids()
    naive = Engine.from_hf(model_dir, attn="naive", cache_type="f32").logits(ids)
    absorbed = Engine.from_hf(model_dir, attn="absorbed", native=False, cache_type="f32").logits(ids)
    assert_close_logits(absorbed, naive, rel=1e-5)


class CountingProvider:
    """A provider wrapping the direct one, as the expert cache will: same output, its own bookkeeping."""

    def __init__(self, inner: DirectExpertProvider) -> None:
        self.inner = inner
        self.calls: list[tuple[int, int]] = []

    def run(self, layer, x, ids, weights):
        self.calls.append((layer, x.shape[0]))
        return self.inner.run(layer, x, ids, weights)


def test_provider_seam_and_observer(model_dir) -> None:
    from kimi_runtime.model.weights import HFSource

    src = HFSource(model_dir)
    prov = CountingProvider(DirectExpertProvider(src))
    eng = Engine(src, provider=prov)
    assert eng.model.native is None  # a provider of its own runs the Python layers
    seen = []
    eng.model.set_observer(lambda layer, pos, ids, w: seen.append((layer, pos.clone(), ids.clone(), w.clone())))
    ids = _ids(12)
    out = eng.logits(ids)
    ref = Engine.from_hf(model_dir, native=False).logits(ids)  # the same Python layers, direct provider
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    cfg = eng.config
    assert [c[0] for c in prov.calls] == cfg.moe_layers and all(c[1] == 12 for c in prov.calls)
    assert [s[0] for s in seen] == cfg.moe_layers
    layer, pos, sel, w = seen[0]
    assert torch.equal(pos, torch.arange(12))
    assert sel.shape == (12, cfg.n_expert_used) and w.shape == sel.shape
    assert int(sel.min()) >= 0 and int(sel.max()) < cfg.n_expert
    torch.testing.assert_close(w.sum(-1), torch.full((12,), cfg.routed_scaling_factor))  # normalised


@pytest.mark.parametrize("cache_type,elt", [("f16", 2), ("f32", 4)])
def test_engine_errors_and_stats(model_dir, cache_type, elt) -> None:
    eng = Engine.from_hf(model_dir, n_ctx=16, cache_type=cache_type)
    with pytest.raises(ValueError):
        eng.prefill([BASE["vocab_size"]])
    with pytest.raises(ValueError):
        eng.prefill([-1])
    with pytest.raises(ValueError):
        eng.prefill(list(range(17)))
    with pytest.raises(ValueError):
        Engine.from_hf(model_dir, attn="fast")
    eng.reset()
    eng.prefill([1, 2, 3])
    eng.decode(4)
    s = eng.stats()
    assert s["prefill_tokens"] == 3 and s["decode_tokens"] == 1 and s["n_past"] == 4
    assert s["decode_s"] > 0 and s["kv_cache_bytes"] == eng.config.n_layer * 16 * eng.config.kv_cache_dim * elt
    assert s["kv_cache_bytes"] == kv_cache_bytes(eng.config, 16, cache_type) == eng.cache.kv.numel() * elt
    with pytest.raises(ValueError):
        Engine.from_hf(model_dir, cache_type="q8")
