"""Chat templates: the built-in Kimi K2 template against hand-written prompts, GGUF templates in the
sandbox, message validation, and splitting reasoning from the answer."""
from __future__ import annotations

import pytest

from kimi_runtime.text import ChatTemplate, ReasoningSplitter, parse_tool_calls, split_reasoning

SYS = "<|im_system|>system<|im_middle|>You are Kimi, an AI assistant created by Moonshot AI.<|im_end|>"
GEN = "<|im_assistant|>assistant<|im_middle|>"
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                  "parameters": {"type": "object",
                                                                 "properties": {"city": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def kimi() -> ChatTemplate:
    return ChatTemplate.kimi_k2()


def test_default_system_prompt(kimi):
    got = kimi.render([{"role": "user", "content": "Hi"}])
    assert got == SYS + "<|im_user|>user<|im_middle|>Hi<|im_end|>" + GEN
    assert kimi.render([]) == SYS + GEN


def test_system_user_assistant_turns(kimi):
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "Ещё?"}]
    assert kimi.render(msgs) == (
        "<|im_system|>system<|im_middle|>Be brief.<|im_end|>"
        "<|im_user|>user<|im_middle|>2+2?<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|>4<|im_end|>"
        "<|im_user|>user<|im_middle|>Ещё?<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|>")
    assert kimi.render(msgs, add_generation_prompt=False).endswith("Ещё?<|im_end|>")


def test_tools_calls_and_results(kimi):
    msgs = [{"role": "user", "content": "Weather in Paris and Oslo?"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
            {"role": "tool", "content": "18C"},
            {"role": "tool", "content": "5C"}]
    assert kimi.render(msgs, tools=[WEATHER_TOOL]) == (
        '<|im_system|>tool_declare<|im_middle|>[{"type": "function", "function": {"name": "get_weather", '
        '"description": "Weather in a city", "parameters": {"type": "object", "properties": {"city": '
        '{"type": "string"}}}}}]<|im_end|>'
        + SYS +
        "<|im_user|>user<|im_middle|>Weather in Paris and Oslo?<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|><|tool_calls_section_begin|>"
        '<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|>'
        '<|tool_call_begin|>functions.get_weather:1<|tool_call_argument_begin|>{"city": "Oslo"}<|tool_call_end|>'
        "<|tool_calls_section_end|><|im_end|>"
        "<|im_system|>tool<|im_middle|>## Return of functions.get_weather:0\n18C<|im_end|>"
        "<|im_system|>tool<|im_middle|>## Return of functions.get_weather:1\n5C<|im_end|>"
        + GEN)


def test_openai_ids_are_kept(kimi):
    msgs = [{"role": "user", "content": "t?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "functions.now:7", "type": "function", "function": {"name": "now", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "functions.now:7", "content": "noon"}]
    got = kimi.render(msgs, add_generation_prompt=False)
    assert got == (SYS + "<|im_user|>user<|im_middle|>t?<|im_end|>"
                   "<|im_assistant|>assistant<|im_middle|><|tool_calls_section_begin|><|tool_call_begin|>"
                   "functions.now:7<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|><|im_end|>"
                   "<|im_system|>tool<|im_middle|>## Return of functions.now:7\nnoon<|im_end|>")


def test_thinking_layout(kimi):
    msgs = [{"role": "user", "content": "a"},
            {"role": "assistant", "content": "b", "reasoning_content": "old thoughts"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "", "reasoning_content": "need a tool",
             "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "content": "r"}]
    expect_thinking = (
        SYS + "<|im_user|>user<|im_middle|>a<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|><think></think>b<|im_end|>"  # history: reasoning dropped
        "<|im_user|>user<|im_middle|>c<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|><think>need a tool</think><|tool_calls_section_begin|>"
        "<|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>"
        "<|im_end|><|im_system|>tool<|im_middle|>## Return of functions.f:0\nr<|im_end|>" + GEN)
    assert kimi.render(msgs, thinking=True) == expect_thinking
    plain = kimi.render(msgs, thinking=False)
    assert "<think>" not in plain and "old thoughts" not in plain
    assert plain == expect_thinking.replace("<think></think>", "").replace("<think>need a tool</think>", "")


def test_content_parts_and_names(kimi):
    got = kimi.render([{"role": "user", "name": "alice", "content": [{"type": "text", "text": "x"}, "y"]}],
                      add_generation_prompt=False)
    assert got == SYS + "<|im_user|>alice<|im_middle|>xy<|im_end|>"


@pytest.mark.parametrize("msgs, err", [
    ("hello", "must be a list"),
    ([["user", "hi"]], "must be an object"),
    ([{"role": "robot", "content": "x"}], "role must be one of"),
    ([{"role": "user"}], "content is missing"),
    ([{"role": "user", "content": 5}], "content must be"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "only text parts"),
    ([{"role": "user", "content": "x", "tool_calls": []}], "tool_calls must be a list on an assistant"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]}], "function.arguments"),
    ([{"role": "user", "content": "x", "name": 3}], "name must be a string"),
    ([{"role": "user", "content": object()}], "not JSON-like"),
])
def test_bad_messages_raise_value_error(kimi, msgs, err):
    with pytest.raises(ValueError, match=err):
        kimi.render(msgs)


def test_caller_messages_untouched(kimi):
    msgs = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    kimi.render(msgs)
    assert msgs == [{"role": "user", "content": [{"type": "text", "text": "x"}]}]


def test_gguf_template_rendered_in_sandbox():
    src = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
           "{% if add_generation_prompt %}<a>{% if enable_thinking %}<think>{% endif %}{% endif %}")
    md = {"tokenizer.chat_template": src, "tokenizer.ggml.tokens": ["<s>", "</s>", "x"],
          "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1}
    t = ChatTemplate.from_gguf_metadata(md)
    assert t.name == "gguf" and t.eos_token == "</s>" and t.stop_strings == ["</s>"]
    assert t.render([{"role": "user", "content": "q"}], thinking=True) == "<user>q<a><think>"
    evil = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ValueError, match="failed"):
        evil.render([])
    raiser = ChatTemplate("{{ raise_exception('no system role') }}")
    with pytest.raises(ValueError, match="no system role"):
        raiser.render([])


def test_fallbacks_to_builtin():
    assert ChatTemplate.from_gguf_metadata({}).name == "kimi_k2"
    with pytest.warns(UserWarning, match="does not compile"):
        t = ChatTemplate.from_gguf_metadata({"tokenizer.chat_template": "{% for %}"})
    assert t.name == "kimi_k2"
    assert t.stop_strings == ["<|im_end|>", "[EOS]"]


@pytest.mark.parametrize("text, want", [
    ("<think>\nplan\n</think>\n\nAnswer.", ("plan", "Answer.")),
    ("plan</think>Answer", ("plan", "Answer")),           # prompt already opened <think>
    ("Just an answer.", ("", "Just an answer.")),
    ("<think>still going", ("still going", "")),
    ("<think></think>Direct", ("", "Direct")),
])
def test_split_reasoning(text, want):
    assert split_reasoning(text) == want


@pytest.mark.parametrize("text", ["<think>\nplan a b\n</think>\n\nThe answer.", "No thinking here, <think> late",
                                  "<think>never closed </thi", "  <thi", "x</think>y"])
@pytest.mark.parametrize("step", [1, 2, 3, 7])
def test_reasoning_splitter_streams_like_split(text, step):
    sp = ReasoningSplitter(in_reasoning=text.startswith("x"))
    r = a = ""
    for i in range(0, len(text), step):
        dr, da = sp.push(text[i:i + step])
        r, a = r + dr, a + da
    dr, da = sp.flush()
    r, a = r + dr, a + da
    assert (r.strip(), a) == split_reasoning(text)


def test_parse_tool_calls_round_trips_through_template(kimi):
    out = ("Let me check.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
           '<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|><|tool_call_begin|>functions.now:1'
           "<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>")
    content, calls = parse_tool_calls(out)
    assert content == "Let me check."
    assert calls == [
        {"id": "functions.get_weather:0", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "functions.now:1", "type": "function", "function": {"name": "now", "arguments": "{}"}}]
    prompt = kimi.render([{"role": "user", "content": "q"},
                          {"role": "assistant", "content": content, "tool_calls": calls}],
                         add_generation_prompt=False)
    assert prompt.endswith("<|im_assistant|>assistant<|im_middle|>" + out + "<|im_end|>")
    assert parse_tool_calls("no calls") == ("no calls", [])
