"""Model pieces in isolation: YaRN rope vs transformers, the router vs transformers' TopkRouter (and a
hand-written softmax-gating reference), QLinear over quantized bytes, the latent KV cache layout and
naive vs absorbed attention on one layer."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from kimi_runtime.config import ModelConfig, RopeScaling
from kimi_runtime.model.attention import KVCache, MLAttention
from kimi_runtime.model.linear import QLinear
from kimi_runtime.model.moe import Router
from kimi_runtime.model.rope import Rope, yarn_params
from kimi_runtime.model.weights import HFSource

transformers = pytest.importorskip("transformers")
from transformers import DeepseekV3Config  # noqa: E402
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf  # noqa: E402

from test_model_reference import BASE, make_hf_model  # noqa: E402


def _cfg(**kw) -> ModelConfig:
    base = dict(n_vocab=32, n_embd=32, n_layer=2, n_ff=64, n_ff_exp=16, n_head=2, q_lora_rank=0,
                kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=64, v_head_dim=8, n_expert=16,
                n_expert_used=4, n_expert_shared=1, n_leading_dense=1, gating="sigmoid", norm_topk_prob=True,
                routed_scaling_factor=2.5)
    base.update(kw)
    return ModelConfig(**base)


# ---- rope

@pytest.mark.parametrize("beta_fast,beta_slow,factor,orig", [(1, 1, 32, 4096), (32, 1, 40, 4096),
                                                             (32, 1, 64, 256), (8, 2, 4, 1024)])
def test_yarn_inv_freq_matches_transformers(beta_fast, beta_slow, factor, orig) -> None:
    rs = RopeScaling(type="yarn", factor=factor, original_context_length=orig, beta_fast=beta_fast,
                     beta_slow=beta_slow, mscale=1.0, mscale_all_dim=1.0)
    cfg = _cfg(rope_theta=50000.0, rope_scaling=rs)
    hcfg = DeepseekV3Config(qk_rope_head_dim=64, rope_theta=50000.0, max_position_embeddings=orig * factor)
    hcfg.rope_parameters = {"rope_type": "yarn", "rope_theta": 50000.0, "factor": float(factor),
                            "original_max_position_embeddings": orig, "beta_fast": float(beta_fast),
                            "beta_slow": float(beta_slow), "mscale": 1.0, "mscale_all_dim": 1.0}
    ref = hf.DeepseekV3RotaryEmbedding(hcfg)
    inv, mag = yarn_params(cfg)
    torch.testing.assert_close(inv, ref.inv_freq, rtol=1e-6, atol=0)
    assert mag == pytest.approx(ref.attention_scaling)


def test_yarn_beta_is_honoured() -> None:
    """K2-Instruct's beta_fast 1 gives other frequencies than llama.cpp's hard-wired 32."""
    def inv(bf):
        rs = RopeScaling(type="yarn", factor=32, original_context_length=4096, beta_fast=bf, beta_slow=1)
        return yarn_params(_cfg(rope_theta=50000.0, rope_scaling=rs))[0]
    assert (inv(1.0) - inv(32.0)).abs().max() > 1e-3


def test_softmax_scale_k2() -> None:
    rs = RopeScaling(type="yarn", factor=32, original_context_length=4096, mscale=1, mscale_all_dim=1)
    cfg = _cfg(qk_nope_head_dim=128, rope_scaling=rs)
    assert cfg.softmax_scale == pytest.approx(0.130861, abs=1e-6)  # REFERENCE.md section 7


def test_rope_interleaved_matches_transformers() -> None:
    cfg = _cfg(qk_rope_head_dim=8)
    rope = Rope(cfg)
    pos = torch.arange(5, 12)
    q = torch.randn(7, 3, 8)  # [T, H, R]
    k = torch.randn(7, 8)
    cos, sin = rope.cos_sin(pos)
    hcos = torch.cat([cos, cos], -1)[None]
    hsin = torch.cat([sin, sin], -1)[None]
    rq, rk = hf.apply_rotary_pos_emb_interleave(q.transpose(0, 1)[None], k[None, None], hcos, hsin)
    # transformers writes the rotated pairs de-interleaved (evens then odds); we keep llama.cpp's layout
    perm = torch.cat([torch.arange(0, 8, 2), torch.arange(1, 8, 2)])
    torch.testing.assert_close(Rope.apply(q, cos, sin)[..., perm], rq[0].transpose(0, 1))
    torch.testing.assert_close(Rope.apply(k, cos, sin)[..., perm], rk[0, 0])


# ---- router

@pytest.mark.parametrize("n_group,topk_group", [(1, 1), (4, 2), (8, 3), (4, 4)])
def test_router_matches_transformers(n_group, topk_group) -> None:
    E, D, K = 32, 24, 6
    hcfg = DeepseekV3Config(hidden_size=D, n_routed_experts=E, num_experts_per_tok=K, n_group=n_group,
                            topk_group=topk_group, norm_topk_prob=True, routed_scaling_factor=2.827)
    ref = hf.DeepseekV3TopkRouter(hcfg)
    g = torch.Generator().manual_seed(n_group * 10 + topk_group)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(E, D, generator=g))
        ref.e_score_correction_bias.copy_(0.3 * torch.randn(E, generator=g))
    cfg = _cfg(n_embd=D, n_expert=E, n_expert_used=K, n_group=n_group, topk_group=topk_group,
               routed_scaling_factor=2.827)
    router = Router(cfg, ref.weight.detach(), ref.e_score_correction_bias)
    x = torch.randn(50, D, generator=g)
    ids, w = router(x)
    with torch.no_grad():
        _, rw, rids = ref(x)
    ids, order = ids.sort(-1)
    rids, rorder = rids.sort(-1)
    assert torch.equal(ids, rids)
    torch.testing.assert_close(w.gather(1, order), rw.gather(1, rorder))
    if topk_group < n_group:  # every chosen expert lies in one of topk_group groups
        groups = (ids // (E // n_group))
        assert all(len(set(r.tolist())) <= topk_group for r in groups)


def test_router_softmax_gating() -> None:
    """expert_gating_func = softmax (DeepSeek V2): select on probabilities, weights from them."""
    E, D, K = 16, 8, 3
    cfg = _cfg(n_embd=D, n_expert=E, n_expert_used=K, gating="softmax", norm_topk_prob=False,
               routed_scaling_factor=1.5)
    W = torch.randn(E, D)
    x = torch.randn(10, D)
    ids, w = Router(cfg, W, None)(x)
    p = torch.softmax(x @ W.T, -1)
    rw, rids = p.topk(K, -1)
    assert torch.equal(ids.sort(-1)[0], rids.sort(-1)[0])
    torch.testing.assert_close(w.sort(-1)[0], (rw * 1.5).sort(-1)[0])


# ---- QLinear

@pytest.mark.parametrize("qtype", [GGMLQuantizationType.Q8_0, GGMLQuantizationType.F16,
                                   GGMLQuantizationType.BF16, GGMLQuantizationType.F32])
def test_qlinear_matches_dequantized_matmul(qtype) -> None:
    rows, cols = 48, 64
    w = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    raw = quantize(w, qtype).reshape(-1).view(np.uint8)
    lin = QLinear(raw, qtype, rows, cols)
    x = torch.randn(5, cols)
    ref_w = torch.from_numpy(dequantize(raw.reshape(rows, -1), qtype).reshape(rows, cols).copy())
    # the project kernels (when built) quantize activations: tolerance covers Q8 activation rounding
    tol = 0 if qtype == GGMLQuantizationType.F32 else 2e-2
    torch.testing.assert_close(lin(x), x @ ref_w.T, rtol=tol, atol=tol * 8)
    torch.testing.assert_close(lin.rows(torch.tensor([3, 0, 47])), ref_w[[3, 0, 47]])


def test_qlinear_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        QLinear(np.zeros(100, np.uint8), GGMLQuantizationType.Q8_0, 2, 64)
    with pytest.raises(ValueError):
        QLinear(np.zeros(4 * 34, np.uint8), GGMLQuantizationType.Q8_0, 2, 60)  # not whole blocks


# ---- attention

@pytest.fixture(scope="module")
def hf_src(tmp_path_factory) -> HFSource:
    path = str(tmp_path_factory.mktemp("parts"))
    make_hf_model(path, num_hidden_layers=1, first_k_dense_replace=1)
    return HFSource(path)


def test_kv_cache_holds_latent_and_rope_only(hf_src) -> None:
    cfg = hf_src.config
    cache = KVCache(cfg, 32)
    per_token = (cache.latent.shape[-1] + cache.k_rope.shape[-1])
    assert per_token == cfg.kv_cache_dim == BASE["kv_lora_rank"] + BASE["qk_rope_head_dim"]
    assert cache.nbytes == cfg.n_layer * 32 * per_token * 4


def test_absorbed_equals_naive_with_offset(hf_src) -> None:
    """Continuation chunk (start > 0, T > 1) with a causal mask over old + new tokens."""
    cfg = hf_src.config
    attn = MLAttention(cfg, 0, hf_src, Rope(cfg))
    x = torch.randn(20, cfg.n_embd)
    outs = []
    for absorbed in (False, True):
        cache = KVCache(cfg, 32)
        attn(x[:8], torch.arange(0, 8), cache, 0, absorbed)
        outs.append(attn(x[8:], torch.arange(8, 20), cache, 8, absorbed))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    cache = KVCache(cfg, 32)
    whole = attn(x, torch.arange(20), cache, 0, False)
    torch.testing.assert_close(whole[8:], outs[0], rtol=1e-5, atol=1e-5)
