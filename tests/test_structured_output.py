"""Structured output by grammar-constrained sampling (llguidance): a property test over random JSON
Schemas on the tiny synthetic model's real GGUF tokenizer with random logits (the grammar does all
the work), then response_format json_object / json_schema through the official client on a live
server running the tiny model, streamed and not, and bad schemas as 400s naming response_format."""
from __future__ import annotations

import json
from typing import Any, Iterator

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kimi_runtime.server import create_app
from test_server import LiveServer

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

from kimi_runtime.text import grammar  # noqa: E402  (needs llguidance)

KEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6)


def _leaf() -> st.SearchStrategy[dict[str, Any]]:
    ints = st.tuples(st.integers(-1000, 1000), st.integers(0, 1000)).map(
        lambda t: {"type": "integer", "minimum": t[0], "maximum": t[0] + t[1]})
    nums = st.tuples(st.integers(-50, 50), st.integers(1, 50)).map(
        lambda t: {"type": "number", "minimum": t[0], "maximum": t[0] + t[1]})
    strs = st.tuples(st.integers(0, 3), st.integers(0, 6)).map(
        lambda t: {"type": "string", "minLength": t[0], "maxLength": t[0] + t[1]})
    enums = st.lists(st.one_of(st.text(max_size=5), st.integers(-5, 5), st.booleans()),
                     min_size=1, max_size=4, unique=True).map(lambda v: {"enum": v})
    return st.one_of(ints, nums, strs, enums, st.just({"type": "boolean"}), st.just({"type": "null"}))


def _compound(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    arrays = st.tuples(children, st.integers(0, 2), st.integers(0, 2)).map(
        lambda t: {"type": "array", "items": t[0], "minItems": t[1], "maxItems": t[1] + t[2]})

    def obj(props: dict[str, Any], req: list[bool]) -> dict[str, Any]:
        names = list(props)
        return {"type": "object", "properties": props, "additionalProperties": False,
                "required": [n for n, r in zip(names, req) if r]}

    objects = st.dictionaries(KEY, children, min_size=1, max_size=3).flatmap(
        lambda p: st.lists(st.booleans(), min_size=len(p), max_size=len(p)).map(lambda r: obj(p, r)))
    any_of = st.lists(children, min_size=2, max_size=3).map(lambda xs: {"anyOf": xs})
    return st.one_of(arrays, objects, any_of)


SCHEMAS = st.recursive(_leaf(), _compound, max_leaves=6)


@pytest.fixture(scope="module")
def tiny_tok(tiny_gguf: str) -> Any:
    from kimi_runtime.gguf import open_gguf
    from kimi_runtime.text import Tokenizer

    with open_gguf(tiny_gguf) as m:
        return Tokenizer.from_gguf_metadata(dict(m.tokenizer_metadata))


def _sample_constrained(tok: Any, c: grammar.Constraint, seed: int, max_tokens: int = 400) -> str:
    rng = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(max_tokens):
        logits = c.mask(torch.randn(tok.n_vocab, generator=rng) * 5)
        t = int(torch.argmax(logits))
        if t in tok.eog_ids:
            return tok.decode(out)
        c.accept(t)
        out.append(t)
    raise AssertionError(f"no end after {max_tokens} tokens: {tok.decode(out)!r}")


@settings(max_examples=60, deadline=None, derandomize=True,  # the same 60 schemas on every run
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=SCHEMAS, seed=st.integers(0, 2 ** 31))
def test_random_schemas_every_output_parses_and_validates(tiny_tok: Any, schema: dict, seed: int) -> None:
    c = grammar.Constraint(tiny_tok, grammar.json_grammar(tiny_tok, schema))
    text = _sample_constrained(tiny_tok, c, seed)
    jsonschema.validate(json.loads(text), schema)


def test_json_object_on_random_logits(tiny_tok: Any) -> None:
    """Any JSON object: keys and strings are unbounded, so random logits get a nudge towards closing
    quotes and braces to finish within the budget; the grammar still decides every token."""
    nudge = torch.tensor([3.0 if (b'"' in tiny_tok.token_bytes(i) or b"}" in tiny_tok.token_bytes(i)) else 0.0
                          for i in range(tiny_tok.n_vocab)])
    for seed in range(5):
        c = grammar.Constraint(tiny_tok, grammar.json_grammar(tiny_tok, None))
        rng = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(400):
            t = int(torch.argmax(c.mask(torch.randn(tiny_tok.n_vocab, generator=rng) + nudge)))
            if t in tiny_tok.eog_ids:
                break
            c.accept(t)
            out.append(t)
        assert isinstance(json.loads(tiny_tok.decode(out)), dict)


def test_reasoning_prefix_then_json(tiny_tok: Any) -> None:
    """With the prompt ending in <think>, the grammar lets the model reason freely, then demands
    </think> and the JSON (here forced by biasing </think> after a few tokens)."""
    close = tiny_tok.token_to_id("</think>")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    c = grammar.Constraint(tiny_tok, grammar.json_grammar(tiny_tok, schema, reasoning="open"))
    rng = torch.Generator().manual_seed(0)
    out = []
    for step in range(200):
        logits = torch.randn(tiny_tok.n_vocab, generator=rng)
        logits[close] += 50 if step == 4 else -50
        t = int(torch.argmax(c.mask(logits)))
        if t in tiny_tok.eog_ids:
            break
        c.accept(t)
        out.append(t)
    text = tiny_tok.decode(out)
    head, _, answer = text.partition("</think>")
    assert len(out) > 5 and json.loads(answer)["ok"] in (True, False)


# ---- live server on the tiny model

@pytest.fixture(scope="module")
def tiny_server(tiny_gguf: str) -> Iterator[LiveServer]:
    from kimi_runtime.generate import Generator

    with LiveServer(create_app(Generator.from_gguf(tiny_gguf), "tiny", queue_size=4)) as srv:
        yield srv


PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 10}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}},
    "required": ["name", "age", "tags"], "additionalProperties": False}


def test_openai_client_json_schema_on_the_tiny_model(tiny_server: LiveServer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="none")
    msgs = [{"role": "user", "content": "A person, as JSON."}]
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for seed in (1, 2):
        r = client.chat.completions.create(model="tiny", messages=msgs, response_format=rf, seed=seed,
                                           temperature=1.0, max_tokens=200)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
        streamed = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
            model="tiny", messages=msgs, response_format=rf, seed=seed, temperature=1.0, max_tokens=200,
            stream=True) if ch.choices)
        assert streamed == r.choices[0].message.content
    # any object: unbounded strings, so logit_bias nudges closing quotes and braces (the grammar decides)
    tok = tiny_server.app.state.generator.tokenizer
    bias = {str(i): 3 for i in range(tok.n_vocab) if b'"' in tok.token_bytes(i) or b"}" in tok.token_bytes(i)}
    r = client.chat.completions.create(model="tiny", messages=msgs, response_format={"type": "json_object"},
                                       seed=5, max_tokens=300, logit_bias=bias)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_tool_choice_required_on_the_tiny_model(tiny_server: LiveServer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="none")
    tool = {"type": "function", "function": {"name": "lookup", "parameters": PERSON}}
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "go"}],
                                       tools=[tool], tool_choice="required", seed=4, max_tokens=400,
                                       parallel_tool_calls=False)
    assert r.choices[0].finish_reason == "tool_calls"
    (call,) = r.choices[0].message.tool_calls
    assert call.id == "functions.lookup:0" and call.function.name == "lookup"
    jsonschema.validate(json.loads(call.function.arguments), PERSON)


@pytest.mark.parametrize("rf,param", [
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "wibble"}}}, "response_format"),
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema", "json_schema": {"schema": {"$ref": "#/nowhere"}}}, "response_format"),
])
def test_bad_response_format_is_400(tiny_server: LiveServer, rf: dict, param: str) -> None:
    r = httpx.post(tiny_server.url + "/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "x"}], "response_format": rf})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
