"""A fixed corpus of hostile requests against a live server: every answer is a 4xx OpenAI error
object (the right `param` where one field is at fault), the server still serves afterwards, /metrics
labels stay bounded, 429 carries Retry-After, and the docs sit behind the API key."""
from __future__ import annotations

import threading
import time
from typing import Any, Optional

import httpx
import pytest

from kimi_runtime.server import create_app
from test_server import LiveServer, fake_params
from test_tool_calls import WEATHER, make_tool_generator

MODEL = "fake-model"
MSG = [{"role": "user", "content": "hi"}]


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MSG, **kw}


def nested(depth: int) -> Any:
    v: Any = "leaf"
    for _ in range(depth):
        v = {"a": v}
    return v


C, T = "/v1/chat/completions", "/v1/completions"
# (name, method, path, body: dict / bytes / None, status or None for any 4xx, param or None)
CORPUS: list[tuple[str, str, str, Any, Optional[int], Optional[str]]] = [
    ("seed float 1e29", "POST", C, b'{"model":"fake-model","messages":[{"role":"user","content":"hi"}],"seed":1e29}',
     400, "seed"),
    ("seed int 1e29", "POST", C, chat(seed=10 ** 29), 400, "seed"),
    ("seed negative huge", "POST", T, {"model": MODEL, "prompt": "a", "seed": -(10 ** 30)}, 400, "seed"),
    ("logit_bias id out of vocab", "POST", C, chat(logit_bias={"99999999": 5}), 400, "logit_bias"),
    ("logit_bias id out of vocab (completions)", "POST", T, {"model": MODEL, "prompt": "a",
                                                             "logit_bias": {"300": 1}}, 400, "logit_bias"),
    ("logit_bias value huge", "POST", C, chat(logit_bias={"5": 1e9}), 400, "logit_bias"),
    ("deep JSON array", "POST", C, b"[" * 100000 + b"]" * 100000, 400, None),
    ("deep JSON object", "POST", C, b'{"a":' * 50000 + b"1" + b"}" * 50000, 400, None),
    ("deep tools", "POST", C, chat(tools=[{"type": "function", "function": {"name": "f", "parameters": nested(200)}}]),
     400, "tools"),
    ("deep messages", "POST", C, chat(messages=[{"role": "user", "content": [nested(100)]}]), 400, "messages"),
    ("900 KB prompt", "POST", C, chat(messages=[{"role": "user", "content": "word " * 180000}], max_tokens=10),
     400, "messages"),
    ("900 KB completion prompt", "POST", T, {"model": MODEL, "prompt": "w" * 900000, "max_tokens": 10}, 400,
     "prompt"),
    ("image part", "POST", C, chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]), 400, "messages.0.content.1"),
    ("audio part", "POST", C, chat(messages=[{"role": "user", "content": [{"type": "input_audio"}]}]), 400,
     "messages.0.content.0"),
    ("text part without text", "POST", C, chat(messages=[{"role": "user", "content": [{"type": "text"}]}]), 400,
     "messages.0.content.0"),
    ("lone surrogate", "POST", C, b'{"model":"fake-model","messages":[{"role":"user","content":"\\ud800"}]}', 400,
     "messages"),
    ("lone surrogate prompt", "POST", T, b'{"model":"fake-model","prompt":"\\udfff x"}', 400, "prompt"),
    ("NaN temperature", "POST", C, b'{"model":"fake-model","messages":[{"role":"user","content":"hi"}],'
                                   b'"temperature":NaN}', 400, "temperature"),
    ("Infinity top_p", "POST", C, b'{"model":"fake-model","messages":[{"role":"user","content":"hi"}],'
                                  b'"top_p":Infinity}', 400, "top_p"),
    ("invalid UTF-8 body", "POST", C, b'{"model": "\xff\xfe"}', 400, None),
    ("not JSON", "POST", C, b"{nope", 400, None),
    ("JSON string body", "POST", C, b'"hello"', 400, None),
    ("empty body", "POST", C, b"", 400, None),
    ("messages not a list", "POST", C, chat(messages="hi"), 400, "messages"),
    ("message without role", "POST", C, chat(messages=[{"content": "hi"}]), 400, "messages.0.role"),
    ("tool message without content", "POST", C, chat(messages=[{"role": "tool"}]), 400, "messages.0"),
    ("n = 0", "POST", C, chat(n=0), 400, "n"),
    ("max_tokens = 0", "POST", C, chat(max_tokens=0), 400, "max_tokens"),
    ("max_completion_tokens negative", "POST", C, chat(max_completion_tokens=-1), 400, "max_completion_tokens"),
    ("max_tokens beyond context", "POST", C, chat(max_tokens=10 ** 9), 400, "max_tokens"),
    ("top_k negative", "POST", C, chat(top_k=-1), 400, "top_k"),
    ("stop empty string", "POST", C, chat(stop=[""]), 400, "stop"),
    ("stream_options not object", "POST", C, chat(stream=True, stream_options="yes"), 400, "stream_options"),
    ("thinking not bool", "POST", C, chat(thinking="yes"), 400, "thinking"),
    ("chat_template_kwargs not object", "POST", C, chat(chat_template_kwargs=[1]), 400, "chat_template_kwargs"),
    ("tools not a list", "POST", C, chat(tools={"a": 1}), 400, "tools"),
    ("tool without function", "POST", C, chat(tools=[{"type": "function"}]), 400, "tools.0"),
    ("tool_choice required, no tools", "POST", C, chat(tool_choice="required"), 400, "tool_choice"),
    ("tool_choice unknown name", "POST", C, chat(tools=[WEATHER], tool_choice={"type": "function",
                                                                                "function": {"name": "x"}}),
     400, "tool_choice"),
    ("tool schema llguidance rejects", "POST", C, chat(tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/missing"}}}}}],
        tool_choice="required"), 400, "tools"),
    ("response_format unknown", "POST", C, chat(response_format={"type": "yaml"}), 400, "response_format.type"),
    ("response_format schema not object", "POST", C,
     chat(response_format={"type": "json_schema", "json_schema": {"schema": [1]}}), 400,
     "response_format.json_schema.schema"),
    ("unknown model", "POST", C, chat(model="gpt-9"), 404, "model"),
    ("prompt ids out of vocab", "POST", T, {"model": MODEL, "prompt": [1, 2, 10 ** 6]}, 400, "prompt"),
    ("prompt empty list", "POST", T, {"model": MODEL, "prompt": []}, 400, "prompt"),
    ("tokenize without content", "POST", "/tokenize", {}, 400, "content"),
    ("tokenize content int", "POST", "/tokenize", {"content": 5}, 400, "content"),
    ("detokenize id out of vocab", "POST", "/detokenize", {"tokens": [1, 99999]}, 400, "tokens"),
    ("detokenize negative id", "POST", "/detokenize", {"tokens": [-1]}, 400, "tokens"),
    ("detokenize strings", "POST", "/detokenize", {"tokens": ["a"]}, 400, "tokens.0"),
    ("GET on a POST route", "GET", C, None, 405, None),
    ("unknown path", "GET", "/v1/nothing/" + "x" * 3000, None, 404, None),
    ("path traversal", "GET", "/../../etc/passwd", None, 404, None),
    ("unknown model info", "GET", "/v1/models/gpt-9", None, 404, "model"),
]


@pytest.fixture(scope="module")
def server() -> Any:
    gen = make_tool_generator("Hello.<|im_end|>", n_ctx=512)
    app = create_app(gen, MODEL, queue_size=2, max_body=2 << 20, params_factory=_real_params)
    with LiveServer(app) as srv:
        yield srv


def _real_params(preset: str, ov: dict[str, Any]) -> Any:
    """Real SamplingParams (their own checks are part of what is tested), argmax-sampled anyway."""
    from kimi_runtime.text import SamplingParams

    return SamplingParams.from_preset(preset, **ov)


def _send(c: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    if body is None:
        return c.request(method, path)
    if isinstance(body, bytes):
        return c.request(method, path, content=body, headers={"content-type": "application/json"})
    return c.request(method, path, json=body)


def test_hostile_corpus_every_answer_is_a_4xx_error_object(server: LiveServer) -> None:
    assert len(CORPUS) >= 40
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for name, method, path, body, status, param in CORPUS:
            r = _send(c, method, path, body)
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
            if status is not None:
                assert r.status_code == status, (name, r.status_code, r.text[:300])
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"], name
            if param is not None:
                assert err["param"] == param, (name, err)
            assert "Traceback" not in r.text, name
            if "part" in name:  # not pydantic's union noise ("content.str: Input should be ...")
                assert "Input should be" not in r.text, name
        ok = c.post("/v1/chat/completions", json=chat(max_tokens=20))
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "Hello."
        # the image part's message says what is wrong in words a user understands
        img = _send(c, "POST", C, CORPUS[[n for n, *_ in CORPUS].index("image part")][3]).json()
        assert "text only" in img["error"]["message"]
        # random 404 paths share one metrics label
        for i in range(20):
            c.get(f"/random/{i}")
        labels = {ln.split('endpoint="')[1].split('"')[0] for ln in c.get("/metrics").text.splitlines()
                  if ln.startswith("kimi_runtime_requests_total{")}
        assert not any(lb.startswith("/random") or lb.startswith("/v1/nothing") for lb in labels)
        assert "other" in labels and "/v1/chat/completions" in labels


def test_embeddings_is_501_error_object(server: LiveServer) -> None:
    r = httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": "x"})
    assert r.status_code == 501 and r.json()["error"]["type"] == "not_implemented_error"


def test_429_has_retry_after() -> None:
    gen = make_tool_generator("y" * 300, n_ctx=512)
    gen.engine.delay = 0.01
    app = create_app(gen, MODEL, queue_size=0, params_factory=lambda p, o: _real_params(p, o))
    with LiveServer(app) as srv:
        t = threading.Thread(target=lambda: httpx.post(srv.url + C, json=chat(max_tokens=250), timeout=60))
        t.start()
        _wait(lambda: httpx.get(srv.url + "/slots").json()[0]["is_processing"])
        r = httpx.post(srv.url + C, json=chat(max_tokens=2))
        t.join(60)
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["type"] == "rate_limit_error"


def _wait(cond: Any, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "condition not reached"
        time.sleep(0.01)


def test_docs_and_openapi_need_the_key_when_one_is_set() -> None:
    gen = make_tool_generator("ok<|im_end|>")
    with LiveServer(create_app(gen, MODEL, api_key="k3y", params_factory=fake_params)) as srv, \
            httpx.Client(base_url=srv.url) as c:
        for path in ("/openapi.json", "/docs", "/tokenize", "/props", "/slots", "/metrics"):
            method = "POST" if path == "/tokenize" else "GET"
            assert c.request(method, path).status_code == 401, path
        auth = {"Authorization": "Bearer k3y"}
        assert "/v1/chat/completions" in c.get("/openapi.json", headers=auth).json()["paths"]
        assert c.get("/docs", headers=auth).status_code == 200
        assert c.get("/redoc").status_code in (401, 404)
    with LiveServer(create_app(gen, MODEL, params_factory=fake_params)) as srv:
        assert httpx.get(srv.url + "/openapi.json").status_code == 200  # no key: open, as before
