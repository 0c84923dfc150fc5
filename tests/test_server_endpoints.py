"""llama.cpp-style endpoints (/tokenize, /detokenize, /props, /slots), sampling defaults, and
reasoning: K2.5's <think> already in the prompt, chat_template_kwargs thinking=false, extra template
variables, streamed reasoning_content."""
from __future__ import annotations

from typing import Any

import httpx
import pytest

from kimi_runtime.server import create_app
from kimi_runtime.text import ChatTemplate
from test_server import LiveServer, fake_params
from test_tool_calls import make_tool_generator

MODEL = "fake-model"
MSGS = [{"role": "user", "content": "hi"}]


def test_tokenize_detokenize_props_slots() -> None:
    gen = make_tool_generator("ok<|im_end|>", n_ctx=300)
    with LiveServer(create_app(gen, MODEL, params_factory=fake_params,
                               sampling_defaults={"temperature": 0.3})) as srv, httpx.Client(base_url=srv.url) as c:
        r = c.post("/tokenize", json={"content": "hé<think>"})
        assert r.json() == {"tokens": [104, 0xC3, 0xA9, 257]}
        assert c.post("/tokenize", json={"content": "<think>", "parse_special": False}).json()["tokens"] == \
            list(b"<think>")
        pieces = c.post("/tokenize", json={"content": "a<think>", "with_pieces": True}).json()["tokens"]
        assert pieces == [{"id": 97, "piece": "a"}, {"id": 257, "piece": "<think>"}]
        assert c.post("/detokenize", json={"tokens": [104, 0xC3, 0xA9, 257]}).json() == {"content": "hé<think>"}
        props = c.get("/props").json()
        assert props["total_slots"] == 1 and props["default_generation_settings"]["n_ctx"] == 300
        assert props["default_generation_settings"]["params"] == {"temperature": 0.3}
        assert props["modalities"]["vision"] is False and props["build_info"].startswith("kimi-runtime")
        (slot,) = c.get("/slots").json()
        assert slot["id"] == 0 and slot["n_ctx"] == 300 and slot["is_processing"] is False


def test_sampling_defaults_fill_what_a_request_leaves_out() -> None:
    seen: list[dict[str, Any]] = []

    def record(preset: str, ov: dict[str, Any]) -> Any:
        seen.append(dict(ov))
        return fake_params(preset, ov)

    gen = make_tool_generator("ok<|im_end|>")
    app = create_app(gen, MODEL, params_factory=record, sampling_defaults={"temperature": 0.2, "top_k": 7})
    with LiveServer(app) as srv:
        httpx.post(srv.url + "/v1/chat/completions", json={"model": MODEL, "messages": MSGS, "max_tokens": 2})
        httpx.post(srv.url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2,
                                                      "temperature": 1.0})
    assert seen[0]["temperature"] == 0.2 and seen[0]["top_k"] == 7
    assert seen[1]["temperature"] == 1.0 and seen[1]["top_k"] == 7


# K2.5-style: the generation prompt opens <think> unless thinking is turned off
K25 = ("{%- for m in messages -%}<|im_user|>{{ m['content'] }}<|im_end|>{%- endfor -%}"
       "{{ greeting | default('') }}<|im_assistant|>assistant<|im_middle|>"
       "{%- if thinking is defined and not thinking -%}<think></think>{%- else -%}<think>{%- endif -%}")


def _k25_server(script: str) -> tuple[Any, LiveServer]:
    gen = make_tool_generator(script)
    gen.template = ChatTemplate(K25, name="k25", stop_strings=["<|im_end|>"])
    return gen, LiveServer(create_app(gen, MODEL, params_factory=fake_params))


def test_reasoning_with_think_already_in_the_prompt() -> None:
    openai = pytest.importorskip("openai")
    gen, srv = _k25_server("pondering deeply</think>The answer.<|im_end|>")
    with srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none")
        r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=100)
        assert gen.engine.prefills[-1][-1] == 257  # the prompt ends inside <think>
        m = r.choices[0].message
        assert m.reasoning_content == "pondering deeply" and m.content == "The answer."
        parts = {"r": "", "c": ""}
        n_reasoning_frames = 0
        for ch in client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=100, stream=True):
            d = ch.choices[0].delta if ch.choices else None
            if d is not None and getattr(d, "reasoning_content", None):
                parts["r"] += d.reasoning_content
                n_reasoning_frames += 1
            if d is not None and d.content:
                parts["c"] += d.content
        assert parts == {"r": "pondering deeply", "c": "The answer."} and n_reasoning_frames > 3


def test_thinking_false_closes_the_block_and_template_kwargs_pass_through() -> None:
    openai = pytest.importorskip("openai")
    gen, srv = _k25_server("Direct answer.<|im_end|>")
    with srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none")
        r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=100, extra_body={
            "chat_template_kwargs": {"thinking": False, "greeting": "HELLO"}})
        prompt = gen.tokenizer.decode(gen.engine.prefills[-1])
        assert prompt.endswith("<think></think>") and "HELLO<|im_assistant|>" in prompt
        assert r.choices[0].message.content == "Direct answer."
        assert getattr(r.choices[0].message, "reasoning_content", None) is None
