"""The model's fast paths against their plain float equivalents: per-head quantized k_b/v_b (HeadLinear),
the shared expert folded into the fused MoE call (also chunked), the latent cache as one tensor, the
per-forward rope table."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kimi_runtime.model.linear import HeadLinear, float_from_raw
from kimi_runtime.model.weights import GGUFSource

@pytest.mark.parametrize("T", [1, 3])
def test_head_linear_matches_float_heads(tiny_gguf: str, T: int) -> None:
    """Per-head kernel calls equal float bmm on the dequantized weight up to activation quantization."""
    src = GGUFSource(tiny_gguf)
    cfg = src.config
    H, C, N, V = cfg.n_head, cfg.kv_lora_rank, cfg.qk_nope_head_dim, cfg.v_head_dim
    kb = src.quantized_tensor("blk.0.attn_k_b.weight")
    if kb is None:
        pytest.skip("attn_k_b is float in this recipe")
    raw, qt, shape = kb
    assert shape == (H, C, N)
    hl = HeadLinear.maybe(raw, qt, H, C, N)
    if hl is None:
        pytest.skip(f"{qt.name} rows of {N} are not whole blocks")
    w = float_from_raw(raw, qt, (H, C, N))  # [H, C, N]
    x = torch.randn(H, T, N, generator=torch.Generator().manual_seed(0))
    ref = torch.bmm(x, w.transpose(1, 2))  # [H, T, C]
    got = hl(x)
    assert got.shape == (H, T, C)
    err = (got - ref).abs().max().item()
    assert err <= 2e-2 * ref.abs().max().item(), err  # q8 activations: ~0.5% typical
    assert err > 0  # the kernel really ran (float would be bit-identical-ish)


def test_float_head_linear_is_exact_float(tiny_gguf: str) -> None:
    """The default decode path: per-head native calls on float32 weights equal torch's bmm."""
    src = GGUFSource(tiny_gguf)
    cfg = src.config
    H, C, N = cfg.n_head, cfg.kv_lora_rank, cfg.qk_nope_head_dim
    w = src.dense("blk.0.attn_k_b.weight", (H, C, N))
    hl = HeadLinear.from_float(w)
    x = torch.randn(H, 2, N, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(hl(x), torch.bmm(x, w.transpose(1, 2)), rtol=1e-5, atol=1e-5)


def test_absorbed_decode_uses_head_calls_and_matches_naive(tiny_gguf: str, monkeypatch) -> None:
    import kimi_runtime.model.attention as A
    from kimi_runtime.model.rope import Rope

    src = GGUFSource(tiny_gguf)
    cfg = src.config
    for quantized, tol in ((False, 1e-4), (True, 5e-2)):
        monkeypatch.setattr(A, "QUANTIZED_HEADS", quantized)
        att = A.MLAttention(cfg, 0, src, Rope(cfg))
        assert att.k_heads is not None and (att.k_heads.qtype.name == "F32") != quantized
        x = torch.randn(6, cfg.n_embd, generator=torch.Generator().manual_seed(3))
        outs = []
        for absorbed in (True, False):
            c = A.KVCache(cfg, 8)
            att(x[:5], torch.arange(5), c, 0, False)
            outs.append(att(x[5:], torch.arange(5, 6), c, 5, absorbed))
        ref = outs[1]
        assert (outs[0] - ref).abs().max().item() <= tol * ref.abs().max().item()


def test_head_linear_rejects_short_bytes() -> None:
    from gguf import GGMLQuantizationType as Q

    with pytest.raises(ValueError):
        HeadLinear(np.zeros(100, np.uint8), Q.Q8_0, 2, 4, 32)


@pytest.mark.parametrize("T,chunk", [(1, 512), (20, 512), (20, 7)])
def test_shared_expert_folded_into_fused_call(tiny_gguf: str, T: int, chunk: int, monkeypatch) -> None:
    import kimi_runtime.model.moe as moe

    monkeypatch.setattr(moe, "FUSED_CHUNK_TOKENS", chunk)
    src = GGUFSource(tiny_gguf)
    cfg = src.config
    layer = next(i for i in range(cfg.n_layer) if cfg.is_moe_layer(i))
    prov = moe.DirectExpertProvider(src)
    block = moe.MoE(cfg, layer, src, prov)
    x = torch.randn(T, cfg.n_embd, generator=torch.Generator().manual_seed(1))
    ids, w = block.router(x)
    folded = prov.run_with_shared(layer, x, ids, w, block.shared)
    assert folded is not None
    separate = prov.run(layer, x, ids, w) + block.shared(x)  # shared through plain gemm calls
    torch.testing.assert_close(folded, separate, rtol=1e-4, atol=1e-4 * separate.abs().max().item())


def test_kv_cache_views_share_one_tensor(tiny_gguf: str) -> None:
    from kimi_runtime.model.attention import KVCache

    cfg = GGUFSource(tiny_gguf).config
    c = KVCache(cfg, 8)
    c.latent[0, 3] = 1.0
    c.k_rope[0, 3] = 2.0
    assert c.kv[0, 3, :cfg.kv_lora_rank].eq(1).all() and c.kv[0, 3, cfg.kv_lora_rank:].eq(2).all()
    assert c.nbytes == cfg.n_layer * 8 * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 4


def test_rope_table_follows_the_positions_tensor(tiny_gguf: str) -> None:
    from kimi_runtime.model.rope import Rope

    rope = Rope(GGUFSource(tiny_gguf).config)
    a, b = torch.arange(0, 4), torch.arange(4, 8)
    ca = rope.cos_sin(a)[0].clone()
    assert rope.cos_sin(a)[0] is rope.cos_sin(a)[0]  # reused within a forward pass
    cb = rope.cos_sin(b)[0]
    assert not torch.equal(ca, cb)
    torch.testing.assert_close(rope.cos_sin(torch.arange(0, 4))[0], ca)
