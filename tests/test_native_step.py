"""The native layer step (csrc/cpu/layer.*, model/native_step.py) against the Python reference layers.

Float files: equal to the Python absorbed path within float rounding (rel 1e-5; 1e-4 with the f16
cache, where a 1-ulp input difference can flip one f16 rounding). Quantized files: the kernels quantize
activations to 8 bits, so a 1-ulp change of an input can move a value to the next code; the reference
itself moves that much when its embeddings are scaled by (1 + 2^-22), and the native step must stay
within twice that floor (and agree on the argmax almost everywhere). Between native runs the results
are bit-identical: prompt vs step-by-step decode, any micro-batch size, direct vs cached provider."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kimi_runtime.engine import Engine
from kimi_runtime.model.linear import kernels

pytestmark = pytest.mark.skipif(kernels() is None, reason="KR_KERNELS=0 forces the Python layers")

SEQ = 24


def _ids(n_vocab: int, n: int = SEQ, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, n_vocab, (n,), generator=torch.Generator().manual_seed(seed))


def _prefill_decode(eng: Engine, ids: torch.Tensor, split: int = 9) -> torch.Tensor:
    """Logits of positions split-1.. : a prompt of `split` tokens, then one decode step per token."""
    eng.reset()
    outs = [eng.prefill(ids[:split])]
    outs += [eng.decode(t) for t in ids[split:].tolist()]
    return torch.stack(outs)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / b.abs().max().item()


@pytest.mark.parametrize("preset", ["tiny", "tiny-dsv3"])
@pytest.mark.parametrize("cache_type,tol", [("f32", 1e-5), ("f16", 1e-4)])
def test_float_file_matches_python_layers(synth_model, preset, cache_type, tol) -> None:
    path = synth_model(preset, "f32").gguf
    nat = Engine.from_gguf(path, native=True, cache_type=cache_type, report=False)
    ref = Engine.from_gguf(path, native=False, attn="absorbed", cache_type=cache_type, report=False)
    assert nat.model.native is not None and ref.model.native is None
    ids = _ids(nat.config.n_vocab)
    assert _rel(nat.logits(ids), ref.logits(ids)) < tol  # prompt: all positions
    assert _rel(_prefill_decode(nat, ids), _prefill_decode(ref, ids)) < tol


def test_quantized_file_within_the_kernels_noise(synth_model) -> None:
    path = synth_model("tiny", "default").gguf
    nat = Engine.from_gguf(path, native=True, cache_type="f32", report=False)
    ref = Engine.from_gguf(path, native=False, attn="absorbed", cache_type="f32", report=False)
    shaken = Engine.from_gguf(path, native=False, attn="absorbed", cache_type="f32", report=False)
    rows = shaken.model.embed.rows
    shaken.model.embed.rows = lambda ids: rows(ids) * (1 + 2 ** -22)
    ids = _ids(nat.config.n_vocab)
    r = ref.logits(ids)
    floor = _rel(shaken.logits(ids), r)
    got = nat.logits(ids)
    assert floor > 0
    assert _rel(got, r) <= 2 * floor, (_rel(got, r), floor)
    assert (got.argmax(-1) == r.argmax(-1)).float().mean().item() >= 0.9
    kl = (torch.softmax(r, -1) * (torch.log_softmax(r, -1) - torch.log_softmax(got, -1))).sum(-1)
    assert kl.median().item() < 1e-3


@pytest.mark.parametrize("recipe", ["default", "iq1_s"])
def test_prompt_and_decode_are_bit_identical(synth_model, recipe) -> None:
    """Every native kernel computes a token's row independently of the batch, so the logits do not
    depend on how the tokens were split into calls (or micro-batches)."""
    path = synth_model("tiny", recipe).gguf
    eng = Engine.from_gguf(path, report=False)
    ids = _ids(eng.config.n_vocab)
    whole = eng.logits(ids)
    torch.testing.assert_close(_prefill_decode(eng, ids), whole[8:], rtol=0, atol=0)
    small = Engine.from_gguf(path, ubatch=5, report=False)
    assert small.model.native.plan.max_tokens == 5
    torch.testing.assert_close(small.logits(ids), whole, rtol=0, atol=0)


def test_cached_provider_gives_the_direct_logits(synth_model) -> None:
    path = synth_model("tiny", "default").gguf
    direct = Engine.from_gguf(path, report=False)
    ids = _ids(direct.config.n_vocab)
    want_prompt = direct.logits(ids)
    want_steps = _prefill_decode(direct, ids)
    for slots, miss in ((3, "fetch"), (8, "auto"), (40, "fetch")):
        eng = Engine.from_gguf(path, cache_slots=slots, miss_policy=miss, prefetch=True, report=False)
        assert eng.model.native is not None and eng.model.native.cached
        torch.testing.assert_close(eng.logits(ids), want_prompt, rtol=0, atol=0)
        torch.testing.assert_close(_prefill_decode(eng, ids), want_steps, rtol=0, atol=0)
        s = eng.stats()
        assert s["cache_hits"] + s["cache_misses"] > 0
    # and the cached provider under the Python layers agrees within the kernels' noise
    py = Engine.from_gguf(path, cache_slots=8, native=False, attn="absorbed", report=False)
    assert (py.logits(ids).argmax(-1) == want_prompt.argmax(-1)).float().mean().item() >= 0.9


def test_observer_sees_the_native_routing(synth_model) -> None:
    path = synth_model("tiny-dsv3", "default").gguf
    eng = Engine.from_gguf(path, report=False)
    cfg = eng.config
    seen = []
    eng.model.set_observer(lambda layer, pos, ids, w: seen.append((layer, pos.clone(), ids.clone(), w.clone())))
    ids = _ids(cfg.n_vocab, 10)
    got = eng.logits(ids)
    eng.model.set_observer(None)
    torch.testing.assert_close(got, eng.logits(ids), rtol=0, atol=0)  # per-layer loop == one call
    assert [s[0] for s in seen] == cfg.moe_layers
    for layer, pos, sel, w in seen:
        assert torch.equal(pos, torch.arange(10)) and sel.dtype == torch.int64 and sel.shape == (10, cfg.n_expert_used)
        assert int(sel.min()) >= 0 and int(sel.max()) < cfg.n_expert
        assert all(len(set(r)) == cfg.n_expert_used for r in sel.tolist())  # no expert twice
        groups = sel // (cfg.n_expert // cfg.n_group)
        assert all(len(set(g)) <= cfg.topk_group for g in groups.tolist())  # group-limited
        torch.testing.assert_close(w.sum(-1), torch.full((10,), cfg.routed_scaling_factor))


def test_native_router_matches_python_router(synth_model) -> None:
    """Routing of the native step equals the Python Router on the same FFN input (ids as sets)."""
    path = synth_model("tiny-dsv3", "default").gguf
    eng = Engine.from_gguf(path, report=False)
    step, cfg = eng.model.native, eng.config
    ids = _ids(cfg.n_vocab, 12)
    eng.reset()
    eng.model.native._bind_cache(eng.cache)
    step.hidden[:12] = eng.model.embed.rows(ids)
    for i, b in enumerate(eng.model.blocks):
        step.plan.attention(i, 12, 0)
        if hasattr(b.ffn, "router"):
            ref_ids, ref_w = b.ffn.router(step.ffn_in[:12].clone())
            got_ids, got_w = step.route_ids[:12].to(torch.int64), step.route_weights[:12]
            order_r, order_g = ref_ids.sort(-1), got_ids.sort(-1)
            assert torch.equal(order_r.values, order_g.values)
            torch.testing.assert_close(got_w.gather(1, order_g.indices), ref_w.gather(1, order_r.indices),
                                       rtol=1e-5, atol=1e-6)
        step.plan.ffn(i, 12)


def test_native_errors(synth_model) -> None:
    from kimi_runtime._native import C

    path = synth_model("tiny", "default").gguf
    eng = Engine.from_gguf(path, n_ctx=16, report=False)
    with pytest.raises(ValueError):
        eng.prefill(list(range(17)))
    eng.prefill(list(range(10)))
    with pytest.raises(ValueError, match="context overflow"):
        eng.model.native.plan.attention(0, 8, 10)
    with pytest.raises(ValueError):
        eng.model.native.plan.attention(0, 0, 0)
    plan = eng.model.native.plan
    with pytest.raises(ValueError, match="too short"):
        plan.set_mat(0, "kv_a", int(np.zeros(8, np.uint8).ctypes.data), 8, 64, 256, 8)
    with pytest.raises(ValueError, match="unknown matrix"):
        plan.set_mat(0, "nope", 1, 0, 1, 1, 4)
    with pytest.raises(ValueError):
        plan.validate(99)
    fresh = C.StepPlan(dict(n_embd=256, n_head=4, q_lora_rank=128, kv_lora_rank=256, nope=64, rope=64, v_dim=64,
                            n_expert=16, n_expert_used=4, n_group=1, topk_group=1, eps=1e-6, softmax_scale=0.1,
                            routed_scale=1.0, norm_topk=True, sigmoid=True), 2, 4)
    with pytest.raises(ValueError, match="not bound"):
        fresh.validate(0)
    with pytest.raises(ValueError, match="not bound"):
        fresh.attention(0, 1, 0)
    with pytest.raises(ValueError):
        Engine.from_gguf(path, ubatch=0, report=False)


def test_native_off_switches(synth_model, monkeypatch) -> None:
    from kimi_runtime.model.moe import DirectExpertProvider
    from kimi_runtime.model.weights import GGUFSource

    path = synth_model("tiny", "default").gguf
    assert Engine.from_gguf(path, attn="naive", report=False).model.native is None
    with pytest.raises(ValueError):
        Engine.from_gguf(path, attn="naive", native=True, report=False)

    class Wrapped(DirectExpertProvider):
        pass

    src = GGUFSource(path)
    with pytest.raises(ValueError, match="runs in Python"):
        Engine(src, provider=Wrapped(src), native=True)
    monkeypatch.setenv("KR_NATIVE_STEP", "0")
    assert Engine.from_gguf(path, report=False).model.native is None


@pytest.mark.parametrize("cache_type,tol", [("f32", 1e-5), ("f16", 1e-4)])
def test_long_context_spans_softmax_chunks(synth_model, cache_type, tol) -> None:
    """150 positions: several 64-position chunks of the online softmax, prompt split over micro-batches."""
    path = synth_model("tiny", "f32").gguf
    nat = Engine.from_gguf(path, native=True, cache_type=cache_type, ubatch=64, report=False)
    ref = Engine.from_gguf(path, native=False, attn="absorbed", cache_type=cache_type, report=False)
    ids = _ids(nat.config.n_vocab, 150, seed=4)
    assert _rel(nat.logits(ids), ref.logits(ids)) < tol
    assert _rel(_prefill_decode(nat, ids[:140], split=130), _prefill_decode(ref, ids[:140], split=130)) < tol


def test_every_isa_gives_the_same_step(synth_model) -> None:
    from kimi_runtime import kernels as K

    path = synth_model("tiny", "f32").gguf
    eng = Engine.from_gguf(path, cache_type="f16", report=False)
    ids = _ids(eng.config.n_vocab, 80, seed=5)
    isas = [i for i in ("scalar", "avx2", "avx512") if i == "scalar" or K.best_isa() in (i, "avx512")]
    outs = {}
    try:
        for isa in isas:
            K.set_isa(isa)
            outs[isa] = eng.logits(ids)
    finally:
        K.set_isa("auto")
    for isa in isas[1:]:
        assert _rel(outs[isa], outs["scalar"]) < 1e-4, isa
