"""Generation loop: stop on eog ids and stop strings (held back across tokens), UTF-8 across token
boundaries, max_tokens / context, usage, timings, cancellation, thinking channel; then the same loop on
the real Engine + GGUF tokenizer with the tiny synthetic model.

The first section holds TEST DOUBLES (byte tokenizer, scripted engine, argmax sampler) that give exact,
scripted output; test_server.py imports them from here."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import pytest
import torch

from kimi_runtime.generate import StopMatcher

SPECIALS = {"<|eos|>": 256, "<think>": 257, "</think>": 258, "<|im_end|>": 259}
VOCAB = 260


class FakeTokenizer:
    """Ids 0..255 are bytes; specials are matched whole."""

    n_vocab = VOCAB
    bos_id = None
    eos_id = SPECIALS["<|eos|>"]
    eog_ids = {SPECIALS["<|eos|>"], SPECIALS["<|im_end|>"]}

    def encode(self, text: str, add_bos: bool = False, parse_special: bool = True) -> list[int]:
        out: list[int] = []
        i = 0
        while i < len(text):
            for name, tid in SPECIALS.items():
                if parse_special and text.startswith(name, i):
                    out.append(tid)
                    i += len(name)
                    break
            else:
                out.extend(text[i].encode("utf-8"))
                i += 1
        return out

    def decode(self, ids: Sequence[int]) -> str:
        inv = {v: k for k, v in SPECIALS.items()}
        return "".join(inv[i] if i in inv else bytes([i]).decode("latin-1") for i in ids)


class FakeStreamDecoder:
    """Releases bytes once they form complete UTF-8 characters."""

    def __init__(self, tok: FakeTokenizer):
        self.buf = b""

    def push(self, tid: int) -> str:
        if tid >= 256:
            return ""
        self.buf += bytes([tid])
        for cut in range(len(self.buf), max(len(self.buf) - 4, -1), -1):
            try:
                s = self.buf[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            self.buf = self.buf[cut:]
            return s
        return ""

    def flush(self) -> str:
        s, self.buf = self.buf.decode("utf-8", errors="replace"), b""
        return s


class ArgmaxSampler:
    def __init__(self, params: object):
        self.params = params

    def sample(self, logits: torch.Tensor, history: Sequence[int], n_prompt: int = 0) -> int:
        return int(torch.argmax(logits))


@dataclass
class FakeParams:
    max_tokens: Optional[int] = None
    stop: list[str] = field(default_factory=list)


@dataclass
class _Cfg:
    n_vocab: int = VOCAB
    context_length: int = 64


class ScriptedEngine:
    """Emits `script` one token per step (then byte 'x' forever); `delay` slows decode so tests can
    interrupt it. Counts its calls so tests can see that a cancelled generation stopped."""

    def __init__(self, script: Sequence[int], n_ctx: int = 64, delay: float = 0.0):
        self.script = list(script)
        self.n_ctx = n_ctx
        self.config = _Cfg(context_length=n_ctx)
        self.delay = delay
        self.pos = 0
        self.decode_calls = 0
        self.prefills: list[list[int]] = []
        self.lock = threading.Lock()

    def _logits(self) -> torch.Tensor:
        tid = self.script[self.pos] if self.pos < len(self.script) else ord("x")
        self.pos += 1
        out = torch.zeros(VOCAB)
        out[tid] = 1.0
        return out

    def reset(self) -> None:
        self.pos = 0

    def prefill(self, ids: Sequence[int]) -> torch.Tensor:
        self.prefills.append(list(ids))
        return self._logits()

    def decode(self, tid: int) -> torch.Tensor:
        self.decode_calls += 1
        if self.delay:
            time.sleep(self.delay)
        return self._logits()

    def stats(self) -> dict:
        return {"layers": [{"hits": 3, "misses": 1, "bytes": 4096}], "tokens": self.decode_calls}


class FakeTemplate:
    """role: content lines, then the assistant prompt; thinking opens a <think> block."""

    def render(self, messages, add_generation_prompt=True, thinking=False, tools=None) -> str:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return text + ("assistant: " if add_generation_prompt else "") + ("<think>" if thinking else "")


def make_fake_generator(script: Sequence[int] | str, n_ctx: int = 64, delay: float = 0.0,
                        template: bool = False):
    from kimi_runtime.generate import Generator

    tok = FakeTokenizer()
    ids = tok.encode(script) if isinstance(script, str) else list(script)
    eng = ScriptedEngine(ids, n_ctx=n_ctx, delay=delay)
    return Generator(eng, tok, FakeTemplate() if template else None,
                     decoder_factory=FakeStreamDecoder, sampler_factory=ArgmaxSampler)


# ==== tests on the scripted engine


def _collect(gen, ids, params, **kw):
    evs = list(gen.generate(ids, params, **kw))
    return evs, "".join(e.text for e in evs), "".join(e.reasoning for e in evs)


def test_eog_stops_and_is_not_emitted():
    gen = make_fake_generator("hello<|im_end|>world")
    evs, text, _ = _collect(gen, [65, 66], FakeParams(max_tokens=50))
    assert text == "hello"
    last = evs[-1]
    assert last.finish_reason == "stop"
    assert last.usage.prompt_tokens == 2 and last.usage.completion_tokens == 6
    assert last.usage.total_tokens == 8
    assert gen.engine.decode_calls == 5


def test_max_tokens_gives_length():
    gen = make_fake_generator("abcdefgh")
    evs, text, _ = _collect(gen, [65], FakeParams(max_tokens=3))
    assert text == "abc" and evs[-1].finish_reason == "length"
    assert evs[-1].usage.completion_tokens == 3
    t = evs[-1].timings
    assert t.prefill_tokens == 1 and t.decode_tokens == 2 and t.decode_s >= 0


def test_default_max_tokens_is_the_rest_of_the_context():
    gen = make_fake_generator("x" * 100, n_ctx=16)
    evs, text, _ = _collect(gen, [65] * 6, FakeParams())
    assert len(text) == 10 and evs[-1].finish_reason == "length"


@pytest.mark.parametrize("bad", [
    dict(ids=[], mt=4), dict(ids=[65] * 16, mt=None), dict(ids=[65] * 10, mt=7),
    dict(ids=[65], mt=0), dict(ids=[999], mt=4), dict(ids=[-1], mt=4)])
def test_bad_budget_or_ids_raise_value_error(bad):
    gen = make_fake_generator("abc", n_ctx=16)
    with pytest.raises(ValueError):
        gen.generate(bad["ids"], FakeParams(max_tokens=bad["mt"]))
    assert gen.engine.prefills == []  # rejected before touching the engine


@pytest.mark.parametrize("script,stops,want", [
    ("Hello STOP there", ["STOP"], "Hello "),
    ("Hello ST there", ["STOP"], "Hello ST there"),     # held back, then released
    ("aaXYbb", ["XY", "b"], "aa"),
    ("abc", ["c"], "ab"),
    ("abST", ["STOP"], "abST"),                          # held text flushed at the end
    ("line1\n\nline2", ["\n\n"], "line1"),
    ("héllo wörld", ["wö"], "héllo "),                  # multi-byte stop string
])
def test_stop_strings(script, stops, want):
    gen = make_fake_generator(script)
    evs, text, _ = _collect(gen, [65], FakeParams(max_tokens=len(script.encode()), stop=stops))
    assert text == want
    stop_hit = any(s in script for s in stops)
    assert evs[-1].finish_reason == ("stop" if stop_hit else "length")


def test_stop_string_never_leaks_in_a_stream():
    gen = make_fake_generator("one <END> two")
    seen = ""
    for ev in gen.generate([65], FakeParams(max_tokens=40, stop=["<END>"])):
        seen += ev.text
        assert "<" not in seen  # held back from the first '<' on
    assert seen == "one "


def test_stop_matcher_unit():
    m = StopMatcher(["abc", "bd"])
    assert m.push("xa") == ("x", False)
    assert m.push("b") == ("", False)       # "ab" could start "abc", "b" could start "bd"
    assert m.push("d") == ("a", True)       # "bd" hit; the "a" before it is released
    m2 = StopMatcher([])
    assert m2.push("abc") == ("abc", False)


def test_utf8_across_tokens():
    s = "Привет, 世界! 🙂 code: `x = 1`"
    gen = make_fake_generator(s)
    pieces = [e.text for e in gen.generate([65], FakeParams(max_tokens=len(s.encode())))]
    assert "".join(pieces) == s
    assert all("\ufffd" not in p for p in pieces)


def test_non_stream_gives_one_event():
    gen = make_fake_generator("hi there")
    evs = list(gen.generate([65], FakeParams(max_tokens=5), stream=False))
    assert len(evs) == 1 and evs[0].text == "hi th" and evs[0].finish_reason == "length"


def test_complete_collects():
    gen = make_fake_generator("hey<|eos|>")
    res = gen.complete([65], FakeParams(max_tokens=10))
    assert res.text == "hey" and res.finish_reason == "stop"
    assert res.token_ids == [104, 101, 121, SPECIALS["<|eos|>"]]


def test_ignore_eos():
    gen = make_fake_generator("a<|eos|>b")
    res = gen.complete([65], FakeParams(max_tokens=3), ignore_eos=True)
    assert res.finish_reason == "length" and res.text == "ab"  # eos is sampled but has no text
    assert res.usage.completion_tokens == 3


def test_cancel_event_stops_early():
    gen = make_fake_generator("x" * 60)
    ev = threading.Event()
    out = []
    for e in gen.generate([65], FakeParams(max_tokens=50), cancel=ev):
        out.append(e)
        if len(out) == 5:
            ev.set()
    assert out[-1].finish_reason == "cancelled"
    assert out[-1].usage.completion_tokens == 5
    assert gen.engine.decode_calls == 4 and gen.total_cancelled == 1


def test_cancel_callback_and_consumer_close():
    gen = make_fake_generator("x" * 60)
    calls = []
    res = gen.complete([65], FakeParams(max_tokens=50), cancel=lambda: len(calls.append(1) or calls) >= 3)
    assert res.finish_reason == "cancelled" and res.usage.completion_tokens == 3
    it = gen.generate([65], FakeParams(max_tokens=50))
    next(it), next(it)
    it.close()  # a disconnected HTTP client does this
    assert gen.total_cancelled == 2


def test_thinking_channel_split():
    gen = make_fake_generator("<think>plan it</think>answer<|im_end|>")
    evs, text, reasoning = _collect(gen, [65], FakeParams(max_tokens=40))
    assert reasoning == "plan it" and text == "answer"


def test_thinking_opened_by_the_prompt():
    gen = make_fake_generator("hmm</think>ok<|im_end|>")
    evs, text, reasoning = _collect(gen, [65, SPECIALS["<think>"]], FakeParams(max_tokens=40))
    assert reasoning == "hmm" and text == "ok" and evs[-1].finish_reason == "stop"


def test_chat_renders_the_template():
    gen = make_fake_generator("fine<|im_end|>", template=True)
    res = list(gen.chat([{"role": "user", "content": "how?"}], FakeParams(max_tokens=9)))
    assert "".join(e.text for e in res) == "fine"
    assert gen.engine.prefills == [FakeTokenizer().encode("user: how?\nassistant: ")]
    with pytest.raises(ValueError):
        gen.chat([], FakeParams(max_tokens=2))


def test_chat_without_template_is_an_error():
    gen = make_fake_generator("abc")
    with pytest.raises(ValueError):
        gen.chat([{"role": "user", "content": "hi"}], FakeParams(max_tokens=2))


# ==== the real Engine, tokenizer and template on the tiny synthetic GGUF


@pytest.fixture(scope="module")
def real_gen(tiny_gguf):
    from kimi_runtime.generate import Generator

    return Generator.from_gguf(tiny_gguf)


def test_real_greedy_loop_matches_whole_sequence_argmax(real_gen):
    from kimi_runtime.text import SamplingParams

    ids = real_gen.render_chat([{"role": "user", "content": "Hello, world! Привет 世界"}])
    res = real_gen.complete(ids, SamplingParams.greedy(max_tokens=8), ignore_eos=True)
    assert res.usage.completion_tokens == 8 and res.finish_reason == "length"
    # Prefill + incremental decode must pick what one whole-sequence forward pass ranks first.
    logits = real_gen.engine.logits(ids + res.token_ids[:-1])  # [T, vocab]
    assert logits[len(ids) - 1:].argmax(-1).tolist() == res.token_ids
    tok = real_gen.tokenizer
    assert res.text == tok.decode([t for t in res.token_ids if not tok.is_special(t)])
    t = res.timings
    assert t.prefill_tokens == len(ids) and t.decode_tokens == 7 and t.decode_tok_s > 0


def test_real_seeded_sampling_is_reproducible(real_gen):
    from kimi_runtime.text import SamplingParams

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    p = dict(temperature=1.0, top_k=40, top_p=0.95, seed=1234, max_tokens=6)
    a = real_gen.complete(real_gen.render_chat(msgs), SamplingParams.from_preset("instant", **p))
    b = real_gen.complete(real_gen.render_chat(msgs), SamplingParams.from_preset("instant", **p))
    assert a.token_ids == b.token_ids and a.text == b.text
    streamed = "".join(e.text for e in real_gen.chat(msgs, SamplingParams.from_preset("instant", **p)))
    assert streamed == a.text


def test_real_context_limits(real_gen):
    from kimi_runtime.text import SamplingParams

    with pytest.raises(ValueError, match="context"):
        real_gen.generate([1] * 4, SamplingParams.greedy(max_tokens=real_gen.n_ctx))
    with pytest.raises(ValueError):
        real_gen.generate([real_gen.tokenizer.n_vocab + 5], SamplingParams.greedy(max_tokens=2))


class _NoTruncateEngine:
    """TEST DOUBLE around the real Engine hiding truncate(n), to check the generator still works
    (re-prefilling everything) with an engine that cannot rewind its KV cache."""

    def __init__(self, engine):
        self._e = engine

    def __getattr__(self, name):
        if name == "truncate":
            raise AttributeError(name)
        return getattr(self._e, name)


@pytest.mark.parametrize("truncating", [False, True])
def test_real_multi_turn_reuses_the_cached_prefix(tiny_gguf, truncating):
    from kimi_runtime.generate import Generator
    from kimi_runtime.text import SamplingParams

    fresh = Generator.from_gguf(tiny_gguf)
    fresh.reuse_prefix = False
    own = Generator.from_gguf(tiny_gguf)  # its own engine: nothing shared with `fresh`
    reuse = Generator(own.engine if truncating else _NoTruncateEngine(own.engine),
                      own.tokenizer, own.template)
    p = SamplingParams.greedy(max_tokens=5)
    msgs = [{"role": "user", "content": "first question"}]
    out = []
    for turn in range(3):
        a = reuse.complete(reuse.render_chat(msgs), p)
        b = fresh.complete(fresh.render_chat(msgs), p)  # resets and prefills everything
        assert a.token_ids == b.token_ids, turn
        out.append(a)
        msgs += [{"role": "assistant", "content": a.text}, {"role": "user", "content": f"more {turn}"}]
    # The same prompt again: all but its last token come from the cache.
    ids = reuse.render_chat(msgs)
    reuse.complete(ids, p)
    before = reuse.reused_tokens
    c = reuse.complete(ids, p)
    assert reuse.reused_tokens - before == (len(ids) - 1 if truncating else 0)
    assert c.token_ids == fresh.complete(ids, p).token_ids
