"""GGUF tokenizer: pre-tokenizers against the `regex` module, BPE against a tiktoken-style reference by
ranks, merges derived from ranks, special tokens, UTF-8-safe streaming."""
from __future__ import annotations

import json

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, trainers

from kimi_runtime.errors import ConfigError
from kimi_runtime.text import StreamDecoder, Tokenizer
from kimi_runtime.text.pretokenizers import PATTERNS, build_pre_tokenizer
from kimi_runtime.text.tokenizer import bytes_to_piece, merges_from_ranks, piece_to_bytes

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's what we've done; they'll say I'd won.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю. Привет, мир!",
    "我能吞下玻璃而不伤身体。中文分词测试，人工智能模型。日本語のテキストとカタカナ。한국어 문장입니다.",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n\tx = [1, 2, 3]",
    "Emoji 😀👍🏽🎉 and café naïve résumé Ελληνικά العربية हिन्दी 12345 67 8.9e-10",
    "   leading spaces\n\n\nnewlines\r\n tabs\t\tand    runs   of spaces   ",
]
TEXTS = CORPUS + [
    "Hello WORLD, this is NEW text the vocab never saw: Zürich, Łódź, İstanbul!",
    "混合English和中文mixed文本123，还有emoji🤖。",
    "if (a && b || !c) { return x->y[0] >> 2; } // comment ```",
    "Ünïcödé\u200bzero-width\u00a0nbsp \U0001F468\u200d\U0001F469\u200d\U0001F467 family",
    "",
    " ",
    "\n",
]
KIMI_SPECIALS = ["[BOS]", "[EOS]", "<|im_end|>", "<|im_user|>", "<|im_assistant|>", "[EOT]", "<|im_system|>",
                 "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>", "<|tool_call_begin|>",
                 "<|tool_call_argument_begin|>", "<|tool_call_end|>", "<|im_middle|>", "<think>", "</think>"]


def _train(pre: str, vocab_size: int = 1200) -> tuple[list[str], list[tuple[str, str]]]:
    tk = HFTokenizer(models.BPE())
    tk.pre_tokenizer = build_pre_tokenizer(pre)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS * 20, trainer)
    vocab = tk.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    merges = json.loads(tk.to_str())["model"]["merges"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]
    return tokens, merges


def gguf_md(pre: str = "kimi-k2", with_merges: bool = True) -> dict:
    """tokenizer.* keys shaped like a Kimi GGUF: BPE ranks, then control tokens, unused pads and one
    user-defined token."""
    tokens, merges = _train(pre)
    n = len(tokens)
    tokens = tokens + KIMI_SPECIALS + ["<|user_sym|>"] + [f"[PAD{i}]" for i in range(3)]
    types = [1] * n + [3] * len(KIMI_SPECIALS) + [4] + [5] * 3
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": types,
          "tokenizer.ggml.bos_token_id": n, "tokenizer.ggml.eos_token_id": n + 1}
    if with_merges:
        md["tokenizer.ggml.merges"] = [f"{a} {b}" for a, b in merges]
    return md


@pytest.fixture(scope="module")
def kimi_md() -> dict:
    return gguf_md("kimi-k2")


@pytest.fixture(scope="module")
def kimi_tok(kimi_md) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(kimi_md)


# ---- independent reference: `regex`-module splitting + tiktoken's merge-by-lowest-rank loop

def ref_split(text: str, patterns: list[str]) -> list[str]:
    pieces = [text]
    for pat in patterns:
        rx = regex.compile(("(?V1)" if "&&" in pat else "") + pat)
        out = []
        for p in pieces:
            pos = 0
            for m in rx.finditer(p):
                if m.start() > pos:
                    out.append(p[pos:m.start()])
                out.append(m.group())
                pos = m.end()
            if pos < len(p):
                out.append(p[pos:])
        pieces = out
    return pieces


def ref_encode(text: str, md: dict) -> list[int]:
    ranks = {piece_to_bytes(t): i for i, (t, ty) in
             enumerate(zip(md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"])) if ty == 1}
    ids = []
    for piece in ref_split(text, PATTERNS[md["tokenizer.ggml.pre"]]):
        parts = [bytes([b]) for b in piece.encode("utf-8")]
        while len(parts) > 1:
            cands = [(ranks.get(parts[i] + parts[i + 1]), i) for i in range(len(parts) - 1)]
            cands = [c for c in cands if c[0] is not None]
            if not cands:
                break
            _, i = min(cands)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        ids += [ranks[p] for p in parts]
    return ids


@pytest.mark.parametrize("pre", ["kimi-k2", "deepseek-v3", "default", "gpt2"])
def test_pretokenizer_matches_regex_module(pre):
    pt = build_pre_tokenizer(pre)
    for text in TEXTS:
        got = [piece_to_bytes(p).decode("utf-8") for p, _ in pt.pre_tokenize_str(text)]
        assert got == ref_split(text, PATTERNS[pre]), text


def test_kimi_regex_keeps_han_apart():
    # the && intersections: Han never joins a letter run, kana/hangul/Latin do
    text = "ABC中文テキストdef한국어"
    pieces = ref_split(text, PATTERNS["kimi-k2"])
    assert pieces == ["ABC", "中文", "テキストdef한국어"]
    got = [piece_to_bytes(p).decode() for p, _ in build_pre_tokenizer("kimi-k2").pre_tokenize_str(text)]
    assert got == pieces


@pytest.mark.parametrize("pre", ["kimi-k2", "deepseek-v3", "default"])
@pytest.mark.parametrize("with_merges", [True, False])
def test_encode_matches_rank_reference(pre, with_merges):
    md = gguf_md(pre, with_merges)
    tok = Tokenizer.from_gguf_metadata(md)
    for text in TEXTS:
        assert tok.encode(text, parse_special=False) == ref_encode(text, md), text
        assert tok.decode(tok.encode(text)) == text


def test_merges_from_ranks_rebuilds_trained_merges(kimi_md):
    tokens, types = kimi_md["tokenizer.ggml.tokens"], kimi_md["tokenizer.ggml.token_type"]
    ranks = {piece_to_bytes(t): i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 1}
    derived = {(bytes_to_piece(a), bytes_to_piece(b)) for a, b in merges_from_ranks(ranks)}
    trained = {tuple(m.split(" ", 1)) for m in kimi_md["tokenizer.ggml.merges"]}
    assert derived == trained


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_roundtrip_any_text(kimi_tok, text):
    ids = kimi_tok.encode(text, parse_special=False)
    assert kimi_tok.decode(ids) == text
    dec = StreamDecoder(kimi_tok)
    assert "".join(dec.push(i) for i in ids) + dec.flush() == text


def test_special_tokens_matched_whole(kimi_tok, kimi_md):
    n = kimi_md["tokenizer.ggml.bos_token_id"]
    im_end, im_user = kimi_tok.token_to_id("<|im_end|>"), kimi_tok.token_to_id("<|im_user|>")
    assert (im_end, im_user) == (n + 2, n + 3)
    text = "<|im_user|>user<|im_middle|>Привет<|im_end|>"
    ids = kimi_tok.encode(text)
    assert ids[0] == im_user and ids[-1] == im_end
    assert ids.count(kimi_tok.token_to_id("<|im_middle|>")) == 1
    assert kimi_tok.decode(ids) == text
    plain = kimi_tok.encode(text, parse_special=False)
    assert not set(plain) & {im_end, im_user}
    assert kimi_tok.decode(plain) == text
    assert kimi_tok.decode(ids, skip_special=True) == "userПривет"
    # user-defined tokens are matched even without parse_special (as llama.cpp does)
    sym = kimi_tok.token_to_id("<|user_sym|>")
    assert sym in kimi_tok.encode("a<|user_sym|>b", parse_special=False)


def test_ids_and_metadata(kimi_tok, kimi_md):
    n = kimi_md["tokenizer.ggml.bos_token_id"]
    assert kimi_tok.n_vocab == len(kimi_md["tokenizer.ggml.tokens"])
    assert (kimi_tok.bos_id, kimi_tok.eos_id) == (n, n + 1)
    assert kimi_tok.eog_ids == {n + 1, n + 2, n + 5}  # [EOS], <|im_end|>, [EOT]
    assert kimi_tok.encode("hi", add_bos=True)[0] == n
    assert kimi_tok.token_to_id("no such token") is None
    assert kimi_tok.token_to_id(" the") == kimi_tok.token_to_id("Ġthe")
    assert kimi_tok.id_to_piece(kimi_tok.token_to_id("Ġthe")) == " the"
    assert kimi_tok.id_to_piece(n + 2) == "<|im_end|>"


def test_stream_decoder_holds_split_characters(kimi_tok):
    text = "é😀中"
    byte_ids = [kimi_tok.token_to_id(bytes_to_piece(bytes([b]))) for b in text.encode()]
    dec = StreamDecoder(kimi_tok)
    outs = [dec.push(i) for i in byte_ids]
    assert outs == ["", "é", "", "", "", "😀", "", "", "中"]
    assert dec.flush() == ""
    # a lone continuation byte is replaced at once; a truncated lead byte when flushed
    assert dec.push(byte_ids[1]) == "\ufffd"
    assert dec.push(byte_ids[2]) == ""
    assert dec.flush() == "\ufffd"
    sk = StreamDecoder(kimi_tok, skip_special=True)
    assert sk.push(kimi_tok.token_to_id("<|im_end|>")) == ""


@pytest.mark.parametrize("bad, err", [
    ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"]}, "only byte-level BPE"),
    ({"tokenizer.ggml.model": "gpt2"}, "tokens is missing"),
    ({"tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.token_type": [1]}, "2 tokens"),
    ({"tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.pre": "martian"}, "not supported"),
    ({"tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.eos_token_id": 7}, "outside the vocabulary"),
    ({"tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.merges": ["ab"]}, "no separating space"),
    ({"tokenizer.ggml.tokens": "abc"}, "expected an array"),
])
def test_bad_metadata_raises_config_error(bad, err):
    with pytest.raises(ConfigError, match=err):
        Tokenizer.from_gguf_metadata(bad)


def test_bad_ids_raise_value_error(kimi_tok):
    for bad in (-1, kimi_tok.n_vocab, 2.5, "3"):
        with pytest.raises(ValueError):
            kimi_tok.decode([bad])
    with pytest.raises(TypeError):
        kimi_tok.encode(b"bytes")  # type: ignore[arg-type]


def test_synthetic_model_vocab_agrees_with_reference():
    synth = pytest.importorskip("kimi_runtime.synth_vocab")
    md = synth.build_synthetic_vocab(3000)
    tok = Tokenizer.from_gguf_metadata(md)
    no_merges = Tokenizer.from_gguf_metadata({k: v for k, v in md.items() if k != "tokenizer.ggml.merges"})
    ref_md = {**md, "tokenizer.ggml.token_type": [int(t) for t in md["tokenizer.ggml.token_type"]]}
    for text in TEXTS:
        ids = tok.encode(text, parse_special=False)
        assert ids == ref_encode(text, ref_md) == no_merges.encode(text, parse_special=False), text
        assert tok.decode(ids) == text
    special = synth.special_token_ids(3000)
    assert tok.eog_ids == {special["[EOS]"], special["<|im_end|>"]}
    ids = tok.encode("<|im_user|>hi<|im_end|>")
    assert (ids[0], ids[-1]) == (special["<|im_user|>"], special["<|im_end|>"])
    assert tok.decode(ids) == "<|im_user|>hi<|im_end|>"
