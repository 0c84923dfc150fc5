"""Tool calls in Kimi's format end to end: the parser (whole and streamed at every split), the
official `openai` client against a live server whose scripted engine writes the markup (as text, and
as the special tokens of Kimi's real vocabulary), parallel calls, malformed markup as content,
reasoning ended by a call section, tool_choice none / auto / required / named, and the conversation
rendered back exactly as the template does.

The TEST DOUBLES at the top (a byte tokenizer that also knows Kimi's tool-call markers, a scripted
and a random engine) are imported by the other server test files."""
from __future__ import annotations

import json
from typing import Any, Sequence

import httpx
import pytest
import torch

from kimi_runtime.server import create_app
from kimi_runtime.text import ChatTemplate
from kimi_runtime.text.toolcalls import (ARG_BEGIN, CALL_BEGIN, CALL_END, SECTION_BEGIN, SECTION_END,
                                         ToolCallStream, parse_tool_calls)
from test_generate import SPECIALS, ArgmaxSampler, FakeStreamDecoder, FakeTemplate, ScriptedEngine
from test_server import LiveServer, fake_params

MODEL = "fake-model"
MARKER_IDS = {m: 260 + i for i, m in enumerate((SECTION_BEGIN, SECTION_END, CALL_BEGIN, ARG_BEGIN, CALL_END))}


class ToolTokenizer:
    """Ids 0..255 are bytes, then test_generate's specials; with `markers`, Kimi's tool-call markers
    are special tokens 260..264 as in the real vocabulary (else they are plain bytes)."""

    bos_id = None

    def __init__(self, markers: bool = False):
        self.specials = dict(SPECIALS, **(MARKER_IDS if markers else {}))
        self.n_vocab = 265 if markers else 260
        self.eos_id = SPECIALS["<|eos|>"]
        self.eog_ids = {SPECIALS["<|eos|>"], SPECIALS["<|im_end|>"]}
        self._inv = {v: k for k, v in self.specials.items()}

    def encode(self, text: str, add_bos: bool = False, parse_special: bool = True) -> list[int]:
        out: list[int] = []
        i = 0
        while i < len(text):
            for name, tid in self.specials.items():
                if parse_special and text.startswith(name, i):
                    out.append(tid)
                    i += len(name)
                    break
            else:
                out.extend(text[i].encode("utf-8"))
                i += 1
        return out

    def token_bytes(self, i: int) -> bytes:
        return bytes([i]) if i < 256 else self._inv[i].encode()

    def is_special(self, i: int) -> bool:
        return i >= 256

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def id_to_piece(self, i: int) -> str:
        return self.token_bytes(i).decode("utf-8", errors="replace")


class VocabEngine(ScriptedEngine):
    """ScriptedEngine over a vocabulary of `n_vocab` ids; past the script, random logits (seeded) or
    'x' forever."""

    def __init__(self, script: Sequence[int], n_vocab: int, n_ctx: int = 512, random_tail: bool = False):
        super().__init__(script, n_ctx=n_ctx)
        self.n_vocab, self.random_tail = n_vocab, random_tail
        self.rng = torch.Generator().manual_seed(0)

    def _logits(self) -> torch.Tensor:
        if self.pos >= len(self.script) and self.random_tail:
            self.pos += 1
            return torch.randn(self.n_vocab, generator=self.rng) * 4
        tid = self.script[self.pos] if self.pos < len(self.script) else ord("x")
        self.pos += 1
        out = torch.zeros(self.n_vocab)
        out[tid] = 1.0
        return out


def make_tool_generator(script: str, markers: bool = False, kimi_template: bool = False,
                        random_tail: bool = False, n_ctx: int = 512):
    from kimi_runtime.generate import Generator

    tok = ToolTokenizer(markers)
    eng = VocabEngine(tok.encode(script), tok.n_vocab, n_ctx=n_ctx, random_tail=random_tail)
    tmpl = ChatTemplate.kimi_k2(bos_token="", eos_token="<|eos|>") if kimi_template else FakeTemplate()
    return Generator(eng, tok, tmpl, decoder_factory=FakeStreamDecoder, sampler_factory=ArgmaxSampler)


def markup(*calls: tuple[str, str]) -> str:
    return SECTION_BEGIN + "".join(f"{CALL_BEGIN}{cid}{ARG_BEGIN}{args}{CALL_END}" for cid, args in calls) \
        + SECTION_END


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "integer",
                                                                               "minimum": -12, "maximum": 12}},
                                       "required": ["tz"], "additionalProperties": False}}}
TWO_CALLS = markup(("functions.get_weather:0", '{"city": "Paris", "unit": "c"}'),
                   ("functions.get_time:1", '{"tz": 2}'))


# ---- the parser

@pytest.mark.parametrize("text,content,calls", [
    ("plain answer", "plain answer", []),
    ("Let me check." + markup(("functions.get_weather:0", '{"city":"Oslo"}')), "Let me check.",
     [("functions.get_weather:0", "get_weather", '{"city":"Oslo"}')]),
    (TWO_CALLS, "", [("functions.get_weather:0", "get_weather", '{"city": "Paris", "unit": "c"}'),
                     ("functions.get_time:1", "get_time", '{"tz": 2}')]),
    # a bare name gets the conversation's next id
    (markup(("get_time", "{}")), "", [("functions.get_time:5", "get_time", "{}")]),
    # the model forgot the call's end marker: the section's end closes it
    (SECTION_BEGIN + CALL_BEGIN + "functions.f:5" + ARG_BEGIN + "{}" + SECTION_END, "",
     [("functions.f:5", "f", "{}")]),
    # broken markup stays content
    (SECTION_BEGIN + "oops, no call here", SECTION_BEGIN + "oops, no call here", []),
    (SECTION_BEGIN + CALL_BEGIN + "bad id with spaces" + ARG_BEGIN + "{}" + CALL_END,
     SECTION_BEGIN + CALL_BEGIN + "bad id with spaces" + ARG_BEGIN + "{}" + CALL_END, []),
    (SECTION_BEGIN + CALL_BEGIN + "functions.f:0", SECTION_BEGIN + CALL_BEGIN + "functions.f:0", []),
    (SECTION_BEGIN + SECTION_END + "tail", SECTION_BEGIN + SECTION_END + "tail", []),
    ("half a marker <|tool_calls_sec", "half a marker <|tool_calls_sec", []),
])
def test_parse_whole_and_streamed_at_every_split(text: str, content: str, calls: list) -> None:
    got_content, got = parse_tool_calls(text, first_index=5)
    assert got_content == content
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in got] == calls
    for step in (1, 2, 3, 7, 13):
        s = ToolCallStream(5)
        evs = [e for k in range(0, len(text), step) for e in s.push(text[k:k + step])] + s.finish()
        assert "".join(e.content for e in evs) == content
        starts = [(e.id, e.name) for e in evs if e.name is not None]
        assert starts == [(c[0], c[1]) for c in calls]
        for i, c in enumerate(calls):
            assert "".join(e.arguments or "" for e in evs if e.index == i) == c[2]
            first = next(k for k, e in enumerate(evs) if e.index == i)
            assert evs[first].name is not None  # the name comes before any argument fragment


# ---- the official client against a scripted engine

def _server(script: str, **kw: Any) -> LiveServer:
    gen = make_tool_generator(script, **kw)
    return LiveServer(create_app(gen, MODEL, params_factory=fake_params))


def _client(srv: LiveServer) -> Any:
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="none")


def _stream(client: Any, **kw: Any) -> tuple[str, str, dict[int, dict], str, list]:
    content, reasoning, calls, finish, order = "", "", {}, None, []
    for ch in client.chat.completions.create(model=MODEL, stream=True, **kw):
        for c in ch.choices:
            d = c.delta
            content += d.content or ""
            reasoning += getattr(d, "reasoning_content", None) or ""
            for tcd in d.tool_calls or []:
                slot = calls.setdefault(tcd.index, {"id": None, "name": None, "arguments": ""})
                if tcd.id:
                    slot["id"] = tcd.id
                if tcd.function and tcd.function.name:
                    order.append(("name", tcd.index))
                    slot["name"] = tcd.function.name
                if tcd.function and tcd.function.arguments:
                    order.append(("args", tcd.index))
                    slot["arguments"] += tcd.function.arguments
            finish = c.finish_reason or finish
    return content, reasoning, calls, finish, order


MSGS = [{"role": "user", "content": "weather in Paris and the time?"}]


@pytest.mark.parametrize("markers", [False, True], ids=["markup-as-text", "markup-as-special-tokens"])
def test_openai_client_gets_parallel_tool_calls(markers: bool) -> None:
    with _server("I'll look." + TWO_CALLS + "<|im_end|>", markers=markers) as srv:
        client = _client(srv)
        r = client.chat.completions.create(model=MODEL, messages=MSGS, tools=[WEATHER, CLOCK], max_tokens=300)
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls" and ch.message.content == "I'll look."
        calls = ch.message.tool_calls
        assert [(c.id, c.type, c.function.name) for c in calls] == [
            ("functions.get_weather:0", "function", "get_weather"), ("functions.get_time:1", "function", "get_time")]
        assert json.loads(calls[0].function.arguments) == {"city": "Paris", "unit": "c"}
        assert json.loads(calls[1].function.arguments) == {"tz": 2}

        content, _, scalls, finish, order = _stream(client, messages=MSGS, tools=[WEATHER, CLOCK], max_tokens=300)
        assert content == "I'll look." and finish == "tool_calls"
        assert [(scalls[i]["id"], scalls[i]["name"]) for i in (0, 1)] == [
            ("functions.get_weather:0", "get_weather"), ("functions.get_time:1", "get_time")]
        assert [scalls[i]["arguments"] for i in (0, 1)] == [c.function.arguments for c in calls]
        # each call: its name first, then several argument fragments
        for i in (0, 1):
            mine = [k for k, j in order if j == i]
            assert mine[0] == "name" and mine.count("args") > 1


@pytest.mark.parametrize("script", [
    SECTION_BEGIN + "garbage" + SECTION_END,
    SECTION_BEGIN + CALL_BEGIN + "no argument marker" + CALL_END + SECTION_END,
    SECTION_BEGIN + CALL_BEGIN + "functions.x:0" + ARG_BEGIN + '{"a": 1',  # cut off, never closed
])
@pytest.mark.parametrize("markers", [False, True])
def test_malformed_markup_is_content_never_500(script: str, markers: bool) -> None:
    with _server(script + "<|im_end|>", markers=markers) as srv:
        client = _client(srv)
        r = client.chat.completions.create(model=MODEL, messages=MSGS, tools=[WEATHER], max_tokens=300)
        content, _, calls, finish, _ = _stream(client, messages=MSGS, tools=[WEATHER], max_tokens=300)
        if ARG_BEGIN in script:  # a call that started is a call, even if cut short
            assert r.choices[0].message.tool_calls[0].function.arguments == '{"a": 1'
            assert calls[0]["arguments"] == '{"a": 1'
        else:
            assert r.choices[0].message.content == script and not r.choices[0].message.tool_calls
            assert r.choices[0].finish_reason == "stop"
            assert content == script and not calls and finish == "stop"


def test_cut_off_call_is_length_and_tool_choice_none_keeps_markup_as_text() -> None:
    with _server(TWO_CALLS) as srv:
        client = _client(srv)
        head = SECTION_BEGIN + CALL_BEGIN + "functions.get_weather:0" + ARG_BEGIN
        r = client.chat.completions.create(model=MODEL, messages=MSGS, tools=[WEATHER], max_tokens=len(head) + 5)
        assert r.choices[0].finish_reason == "length"
        assert r.choices[0].message.tool_calls[0].function.arguments == '{"cit'
        # cut inside the header: no call yet, the text is content
        r = client.chat.completions.create(model=MODEL, messages=MSGS, tools=[WEATHER], max_tokens=len(head) - 5)
        assert r.choices[0].message.content == head[:-5] and not r.choices[0].message.tool_calls
        r = client.chat.completions.create(model=MODEL, messages=MSGS, tools=[WEATHER], tool_choice="none",
                                           max_tokens=len(TWO_CALLS))
        assert r.choices[0].message.content == TWO_CALLS and not r.choices[0].message.tool_calls


@pytest.mark.parametrize("markers", [False, True])
def test_reasoning_ended_by_think_close_or_by_the_call_section(markers: bool) -> None:
    script = "<think>need weather" + markup(("functions.get_weather:0", '{"city":"Rome","unit":"c"}')) + "<|im_end|>"
    with _server(script, markers=markers) as srv:
        client = _client(srv)
        r = client.chat.completions.create(model=MODEL, messages=MSGS, tools=[WEATHER], max_tokens=300)
        m = r.choices[0].message
        assert m.reasoning_content == "need weather" and m.tool_calls[0].function.name == "get_weather"
        assert r.choices[0].finish_reason == "tool_calls"
        content, reasoning, calls, finish, _ = _stream(client, messages=MSGS, tools=[WEATHER], max_tokens=300)
        assert reasoning == "need weather" and calls[0]["name"] == "get_weather" and finish == "tool_calls"
    with _server("<think>hmm</think>Answer.<|im_end|>", markers=markers) as srv:
        r = _client(srv).chat.completions.create(model=MODEL, messages=MSGS, max_tokens=300,
                                                 extra_body={"chat_template_kwargs": {"thinking": True}})
        assert r.choices[0].message.reasoning_content == "hmm" and r.choices[0].message.content == "Answer."


def test_conversation_with_calls_renders_back_as_the_template_does() -> None:
    """Earlier calls and their results go back into the prompt exactly as the Kimi template renders
    them, and a bare-name call gets the next number of the conversation's one counter."""
    gen = make_tool_generator(markup(("get_time", '{"tz": 1}')) + "<|im_end|>", kimi_template=True, n_ctx=4096)
    history = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "functions.get_weather:0", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo","unit":"c"}'}}]},
        {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "3 C"},
        {"role": "user", "content": "and the time?"},
    ]
    with LiveServer(create_app(gen, MODEL, params_factory=fake_params)) as srv:
        r = _client(srv).chat.completions.create(model=MODEL, messages=history, tools=[WEATHER, CLOCK],
                                                 max_tokens=300)
        assert r.choices[0].message.tool_calls[0].id == "functions.get_time:1"
        want = ChatTemplate.kimi_k2(bos_token="", eos_token="<|eos|>").render(history, tools=[WEATHER, CLOCK])
        assert gen.tokenizer.decode(gen.engine.prefills[-1]) == want
        assert ("<|im_system|>tool_declare<|im_middle|>" in want
                and "<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>" in want
                and "## Return of functions.get_weather:0\n3 C" in want)
        # the answer goes back as the next turn's history, rendered the same way
        nxt = history + [r.choices[0].message.model_dump(exclude_none=True)]
        nxt[-1]["content"] = nxt[-1].get("content") or ""
        assert "functions.get_time:1" in ChatTemplate.kimi_k2().render(nxt, add_generation_prompt=False)
        r = httpx.post(srv.url + "/v1/chat/completions", json={
            "model": MODEL, "messages": history, "tools": [WEATHER], "tool_choice": "none", "max_tokens": 5})
        assert "tool_declare" not in gen.tokenizer.decode(gen.engine.prefills[-1]) and r.status_code == 200


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
@pytest.mark.parametrize("markers", [False, True])
def test_required_and_named_tool_choice_force_a_valid_call(choice: Any, markers: bool) -> None:
    """The engine writes prose then random logits; the grammar still yields a call whose arguments
    fit the schema (the model never wanted to call)."""
    jsonschema = pytest.importorskip("jsonschema")
    with _server("No tools needed, I think.", markers=markers, random_tail=True) as srv:
        client = _client(srv)
        for stream in (False, True):
            if stream:
                _, _, calls, finish, _ = _stream(client, messages=MSGS, tools=[WEATHER, CLOCK], tool_choice=choice,
                                                 max_tokens=400)
                got = [(c["id"], c["name"], c["arguments"]) for c in calls.values()]
            else:
                r = client.chat.completions.create(model=MODEL, messages=MSGS, tools=[WEATHER, CLOCK],
                                                   tool_choice=choice, max_tokens=400)
                finish = r.choices[0].finish_reason
                got = [(c.id, c.function.name, c.function.arguments) for c in r.choices[0].message.tool_calls]
            assert finish == "tool_calls" and got
            for k, (cid, name, args) in enumerate(got):
                assert cid == f"functions.{name}:{k}"
                if isinstance(choice, dict):
                    assert name == "get_time" and len(got) == 1
                tool = {"get_weather": WEATHER, "get_time": CLOCK}[name]
                jsonschema.validate(json.loads(args), tool["function"]["parameters"])


@pytest.mark.parametrize("body,param", [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools.0"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
])
def test_bad_tool_requests_are_400_with_param(body: dict, param: str) -> None:
    with _server("x") as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", json={"model": MODEL, "messages": MSGS, **body})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
