"""The OpenAI-compatible server on a live uvicorn on loopback: the official `openai` client, SSE
framing, 15+ kinds of malformed input (then a good request), auth, queue/429, disconnect cancels,
/metrics. Exact-output tests use the scripted engine from test_generate.py; the last ones run the real
Engine on the tiny synthetic GGUF."""
from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Iterator

import httpx
import pytest
import uvicorn

from kimi_runtime.server import create_app
from test_generate import FakeParams, FakeTokenizer, make_fake_generator

MODEL = "fake-model"


def fake_params(preset: str, ov: dict[str, Any]) -> FakeParams:
    return FakeParams(max_tokens=ov["max_tokens"], stop=ov.get("stop") or [])


class LiveServer:
    """uvicorn in a thread on a free loopback port."""

    def __init__(self, app: Any):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def fake_server() -> Iterator[LiveServer]:
    gen = make_fake_generator("Hello there, friend.<|im_end|>", n_ctx=256, template=True)
    app = create_app(gen, MODEL, queue_size=2, max_body=4096, params_factory=fake_params)
    with LiveServer(app) as srv:
        yield srv


def _chat(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **kw}


def _sse(text: str) -> list[Any]:
    frames = [ln[len("data: "):] for ln in text.split("\n\n") if ln.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    return [json.loads(f) for f in frames[:-1]]


def _metric(url: str, name: str) -> float:
    for ln in httpx.get(url + "/metrics").text.splitlines():
        if ln.startswith(name + " ") or ln.startswith(name + "{"):
            return float(ln.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# ---- the official client, exact output (scripted engine)

def test_openai_client_chat_and_completions(fake_server: LiveServer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=fake_server.url + "/v1", api_key="none")
    assert [m.id for m in client.models.list().data] == [MODEL]

    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=50)
    assert r.choices[0].message.content == "Hello there, friend."
    assert r.choices[0].finish_reason == "stop"
    prompt_len = len(FakeTokenizer().encode("user: hi\nassistant: "))
    assert r.usage.prompt_tokens == prompt_len and r.usage.completion_tokens == 21

    parts, finish, usage = [], None, None
    for ch in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=5, stream=True,
                                             stream_options={"include_usage": True}):
        if ch.usage:
            usage = ch.usage
        for c in ch.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(parts) == "Hello" and finish == "length" and usage.completion_tokens == 5

    c = client.completions.create(model=MODEL, prompt="abc", max_tokens=50, stop=[","])
    assert c.choices[0].text == "Hello there" and c.choices[0].finish_reason == "stop"
    text = "".join(x.choices[0].text for x in client.completions.create(
        model=MODEL, prompt="abc", max_tokens=8, stream=True))
    assert text == "Hello th"


def test_sse_framing_and_stop_held_back(fake_server: LiveServer) -> None:
    r = httpx.post(fake_server.url + "/v1/chat/completions",
                   json=_chat(stream=True, max_tokens=50, stop=["friend"]))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    frames = _sse(r.text)
    assert frames[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(f["object"] == "chat.completion.chunk" and f["id"] == frames[0]["id"] for f in frames)
    text = "".join(f["choices"][0]["delta"].get("content", "") for f in frames)
    assert text == "Hello there, " and frames[-1]["choices"][0]["finish_reason"] == "stop"


# ---- malformed input

BIG = "x" * 5000
BAD: list[tuple[str, str, Any, int]] = [
    ("not json", "/v1/chat/completions", b"{nope", 400),
    ("json array", "/v1/chat/completions", [1, 2], 400),
    ("missing model", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 400),
    ("missing messages", "/v1/chat/completions", {"model": MODEL}, 400),
    ("empty messages", "/v1/chat/completions", _chat(messages=[]), 400),
    ("bad role", "/v1/chat/completions", _chat(messages=[{"role": "wizard", "content": "x"}]), 400),
    ("content int", "/v1/chat/completions", _chat(messages=[{"role": "user", "content": 5}]), 400),
    ("message not object", "/v1/chat/completions", _chat(messages=["hi"]), 400),
    ("unknown model", "/v1/chat/completions", _chat(model="gpt-9"), 404),
    ("max_tokens str", "/v1/chat/completions", _chat(max_tokens="10"), 400),
    ("max_tokens negative", "/v1/chat/completions", _chat(max_tokens=-3), 400),
    ("max_tokens > context", "/v1/chat/completions", _chat(max_tokens=100000), 400),
    ("temperature out of range", "/v1/chat/completions", _chat(temperature=5.0), 400),
    ("top_p zero", "/v1/chat/completions", _chat(top_p=0.0), 400),
    ("n > 1", "/v1/chat/completions", _chat(n=2), 400),
    ("stream not bool", "/v1/chat/completions", _chat(stream="yes"), 400),
    ("five stops", "/v1/chat/completions", _chat(stop=["a", "b", "c", "d", "e"]), 400),
    ("logit_bias key", "/v1/chat/completions", _chat(logit_bias={"abc": 1.0}), 400),
    ("logprobs", "/v1/chat/completions", _chat(logprobs=True), 400),
    ("oversized body", "/v1/chat/completions", _chat(messages=[{"role": "user", "content": BIG}]), 413),
    ("prompt missing", "/v1/completions", {"model": MODEL}, 400),
    ("prompt int", "/v1/completions", {"model": MODEL, "prompt": 7}, 400),
    ("prompt ids out of vocab", "/v1/completions", {"model": MODEL, "prompt": [1, 99999]}, 400),
    ("two prompts", "/v1/completions", {"model": MODEL, "prompt": ["a", "b"]}, 400),
]


def test_malformed_requests_then_a_good_one(fake_server: LiveServer) -> None:
    with httpx.Client(base_url=fake_server.url) as c:
        for name, path, body, status in BAD:
            kw = {"content": body} if isinstance(body, bytes) else {"json": body}
            r = c.post(path, headers={"content-type": "application/json"}, **kw)
            assert r.status_code == status, (name, r.status_code, r.text)
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"], name
        assert c.get("/v1/chat/completions").status_code == 405
        nf = c.get("/v1/nothing-here")
        assert nf.status_code == 404 and "error" in nf.json()
        # Chunked body (no content-length) over the cap is refused too.
        big = c.post("/v1/chat/completions", content=iter([BIG.encode()] * 2))
        assert big.status_code == 413
        ok = c.post("/v1/chat/completions", json=_chat(max_tokens=5, temperature=1))
        assert ok.status_code == 200, ok.text
        assert ok.json()["choices"][0]["message"]["content"] == "Hello"
        assert c.get("/health").json()["status"] == "ok"
    assert _metric(fake_server.url, 'kimi_runtime_requests_total{endpoint="/v1/chat/completions",'
                   'status="400"}') >= 15


def test_api_key_required() -> None:
    gen = make_fake_generator("ok<|im_end|>", template=True)
    app = create_app(gen, MODEL, api_key="s3cret", params_factory=fake_params)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = c.post("/v1/chat/completions", json=_chat(max_tokens=2))
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/health").status_code == 200
        ok = c.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == MODEL


# ---- queue, concurrency, disconnect

def _slow_server(queue: int) -> LiveServer:
    gen = make_fake_generator("y" * 400, n_ctx=512, delay=0.01, template=True)
    return LiveServer(create_app(gen, MODEL, queue_size=queue, params_factory=fake_params))


def test_queue_full_gives_429_and_requests_run_one_at_a_time() -> None:
    with _slow_server(queue=1) as srv:
        results: dict[str, Any] = {}

        def call(name: str, n: int) -> None:
            results[name] = httpx.post(srv.url + "/v1/chat/completions", json=_chat(max_tokens=n),
                                       timeout=60)

        a = threading.Thread(target=call, args=("a", 60))
        a.start()
        _wait(lambda: _metric(srv.url, "kimi_runtime_requests_running") == 1)
        b = threading.Thread(target=call, args=("b", 5))
        b.start()
        _wait(lambda: _metric(srv.url, "kimi_runtime_queue_depth") == 1)
        c = httpx.post(srv.url + "/v1/chat/completions", json=_chat(max_tokens=5))
        assert c.status_code == 429 and c.json()["error"]["type"] == "rate_limit_error"
        a.join(60), b.join(60)
        assert results["a"].status_code == 200 and results["b"].status_code == 200
        assert results["a"].json()["usage"]["completion_tokens"] == 60
        assert results["b"].json()["choices"][0]["message"]["content"] == "yyyyy"
        assert _metric(srv.url, "kimi_runtime_requests_rejected_total") == 1
        # Four concurrent clients within the queue bound all succeed.
        threads = [threading.Thread(target=call, args=(f"p{i}", 3)) for i in range(2)]
        [t.start() for t in threads]
        [t.join(60) for t in threads]
        assert all(results[f"p{i}"].status_code in (200, 429) for i in range(2))
        assert any(results[f"p{i}"].status_code == 200 for i in range(2))


def _wait(cond: Any, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_cancels_generation(stream: bool) -> None:
    with _slow_server(queue=2) as srv:
        gen = srv.app.state.generator
        before = gen.engine.decode_calls
        body = _chat(max_tokens=400, stream=stream)
        if stream:
            with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=30) as r:
                it = r.iter_lines()
                got = [next(it) for _ in range(6)]
                assert any(g.startswith("data: ") for g in got)
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=0.4)
        _wait(lambda: _metric(srv.url, "kimi_runtime_requests_cancelled_total") == 1)
        _wait(lambda: _metric(srv.url, "kimi_runtime_requests_running") == 0)
        steps = gen.engine.decode_calls - before
        assert 0 < steps < 300, steps  # 400 would take ~4 s; the disconnect stopped it early
        assert gen.total_cancelled == 1
        ok = httpx.post(srv.url + "/v1/chat/completions", json=_chat(max_tokens=3), timeout=30)
        assert ok.status_code == 200


def test_engine_failure_is_an_error_object_and_the_server_survives() -> None:
    gen = make_fake_generator("abcdefgh", n_ctx=128, template=True)
    real_decode = gen.engine.decode

    def flaky(tid: int) -> Any:
        if gen.engine.decode_calls >= 2:
            gen.engine.decode = real_decode  # fail once, then work again
            raise RuntimeError("device fell over")
        return real_decode(tid)

    gen.engine.decode = flaky
    with LiveServer(create_app(gen, MODEL, params_factory=fake_params)) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", json=_chat(max_tokens=6), timeout=30)
        assert r.status_code == 500 and "device fell over" in r.json()["error"]["message"]
        gen.engine.decode = lambda tid: (_ for _ in ()).throw(RuntimeError("again"))
        frames = _sse(httpx.post(srv.url + "/v1/chat/completions", json=_chat(max_tokens=6, stream=True),
                                 timeout=30).text)
        assert "again" in frames[-1]["error"]["message"]  # in-band error, then [DONE]
        gen.engine.decode = real_decode
        ok = httpx.post(srv.url + "/v1/chat/completions", json=_chat(max_tokens=3), timeout=30)
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "abc"


def test_metrics_text(fake_server: LiveServer) -> None:
    httpx.post(fake_server.url + "/v1/chat/completions", json=_chat(max_tokens=4))
    text = httpx.get(fake_server.url + "/metrics").text
    assert "# TYPE kimi_runtime_requests_total counter" in text
    assert _metric(fake_server.url, "kimi_runtime_completion_tokens_total") == 4
    assert _metric(fake_server.url, "kimi_runtime_decode_tokens_per_second") > 0
    assert 'kimi_runtime_cache_hits{layer="0"} 3' in text
    assert 'kimi_runtime_cache_bytes{layer="0"} 4096' in text


# ---- the real Engine on the tiny synthetic GGUF


@pytest.fixture(scope="module")
def real_server(tiny_gguf: str) -> Iterator[LiveServer]:
    from kimi_runtime.generate import Generator

    app = create_app(Generator.from_gguf(tiny_gguf), "tiny", queue_size=4)
    with LiveServer(app) as srv:
        yield srv


def test_openai_client_on_the_real_engine(real_server: LiveServer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=real_server.url + "/v1", api_key="none")
    assert [m.id for m in client.models.list().data] == ["tiny"]
    msgs = [{"role": "user", "content": "Say something."}]
    kw = dict(model="tiny", messages=msgs, max_tokens=6, seed=7, temperature=0.9)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert a.choices[0].message.content == b.choices[0].message.content  # seeded: reproducible
    assert a.choices[0].finish_reason in ("stop", "length")
    assert 1 <= a.usage.completion_tokens <= 6 and a.usage.prompt_tokens > 0
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens
    streamed = "".join(ch.choices[0].delta.content or "" for ch in
                       client.chat.completions.create(stream=True, **kw) if ch.choices)
    assert streamed == a.choices[0].message.content

    c = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=5, seed=3,
                                  extra_body={"ignore_eos": True})
    assert c.usage.completion_tokens == 5 and c.choices[0].finish_reason == "length"
    s = "".join(x.choices[0].text for x in client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=5, seed=3, stream=True,
        extra_body={"ignore_eos": True}))
    assert s == c.choices[0].text

    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10 ** 6)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=msgs, max_tokens=2)
    assert "kimi_runtime_completion_tokens_total" in httpx.get(real_server.url + "/metrics").text


def test_metrics_carry_the_cache_tiers() -> None:
    from kimi_runtime.server.metrics import Metrics

    stats = {"fetched": 3, "tiers": {"ram": {"hits": 5, "misses": 2, "bytes": 1024, "stall_seconds": 0.5,
                                              "mode": "direct"},
                                      "disk": {"hits": 2, "bytes": 4096, "read_errors": 0}}}
    text = Metrics().render(0, 0, lambda: stats)
    assert 'kimi_runtime_tier_hits{tier="ram"} 5' in text and 'kimi_runtime_tier_hits{tier="disk"} 2' in text
    assert 'kimi_runtime_tier_stall_seconds{tier="ram"} 0.5' in text
    assert 'kimi_runtime_tier_bytes{tier="disk"} 4096' in text and "mode" not in text
    assert "kimi_runtime_engine_fetched 3" in text
