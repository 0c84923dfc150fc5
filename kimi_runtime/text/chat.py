"""Chat prompts: the GGUF's `tokenizer.chat_template` rendered in a jinja2 sandbox (falling back to the
built-in Kimi K2 template), plus splitting generated text into reasoning and answer at </think>."""
from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from importlib import resources
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

from kimi_runtime.text.tokenizer import EOG_TEXTS

ROLES = ("system", "user", "assistant", "tool")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# template variables a request's chat_template_kwargs may not replace
_RESERVED = frozenset({"messages", "tools", "add_generation_prompt", "bos_token", "eos_token", "thinking",
                       "enable_thinking", "raise_exception", "strftime_now"})
_LIST_MUTATORS = frozenset({"append", "pop", "extend", "insert"})


class _TemplateSandbox(ImmutableSandboxedEnvironment):
    """Immutable sandbox that still lets a template grow and pop its own lists: Kimi's published
    templates keep a tool-call id queue with .append/.pop(0). Inputs are deep copies of plain data,
    so nothing the caller owns can change."""

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if type(obj) is list and attr in _LIST_MUTATORS:
            return SandboxedEnvironment.is_safe_attribute(self, obj, attr, value)
        return super().is_safe_attribute(obj, attr, value)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # as transformers does: jinja's own tojson HTML-escapes <, > and &, which models never saw
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment() -> jinja2.Environment:
    env = _TemplateSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def builtin_template_source(name: str = "kimi_k2") -> str:
    """Text of a template shipped in kimi_runtime/text/templates/."""
    return resources.files("kimi_runtime.text").joinpath(f"templates/{name}.jinja").read_text("utf-8")


def _plain(value: Any, where: str) -> Any:
    """Deep copy into JSON-like data, so the template sees no foreign objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for kind in (bool, str, int, float):  # subclasses (enums...) back to the base type
        if isinstance(value, kind):
            return kind(value) if kind is not str else str.__str__(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    raise ValueError(f"{where}: value of type {type(value).__name__} is not JSON-like")


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate OpenAI-style chat messages and return plain copies (content parts joined to text)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError("messages must be a list of {'role': ..., 'content': ...} objects")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, Mapping):
            raise ValueError(f"{where} must be an object, got {type(m).__name__}")
        m = _plain(m, where)
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
        content = m.get("content")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if isinstance(part, str):
                    texts.append(part)
                elif isinstance(part, dict) and part.get("type", "text") == "text" \
                        and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                else:
                    raise ValueError(f"{where}.content[{j}]: only text parts are supported")
            m["content"] = "".join(texts)
        elif content is None:
            if not (role == "assistant" and m.get("tool_calls")):
                raise ValueError(f"{where}.content is missing")
        elif not isinstance(content, str):
            raise ValueError(f"{where}.content must be a string or a list of text parts")
        for key in ("name", "tool_call_id", "reasoning_content"):
            if m.get(key) is not None and not isinstance(m[key], str):
                raise ValueError(f"{where}.{key} must be a string")
        calls = m.get("tool_calls")
        if calls is not None:
            if role != "assistant" or not isinstance(calls, list):
                raise ValueError(f"{where}.tool_calls must be a list on an assistant message")
            for j, tc in enumerate(calls):
                fn = tc.get("function") if isinstance(tc, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or "arguments" not in fn:
                    raise ValueError(f"{where}.tool_calls[{j}] needs function.name and function.arguments")
        out.append(m)
    return out


class ChatTemplate:
    """A chat template and the strings that end a turn in it."""

    def __init__(self, source: str, *, name: str = "custom", bos_token: str = "", eos_token: str = "",
                 stop_strings: Sequence[str] | None = None) -> None:
        self.name, self.source = name, source
        self.bos_token, self.eos_token = bos_token, eos_token
        self._template = _environment().from_string(source)  # raises TemplateSyntaxError
        if stop_strings is None:
            found = [t for t in sorted(EOG_TEXTS) if t in source]
            stop_strings = found + ([eos_token] if eos_token and eos_token not in found else [])
        self.stop_strings: list[str] = list(stop_strings)

    @classmethod
    def kimi_k2(cls, *, bos_token: str = "[BOS]", eos_token: str = "[EOS]") -> "ChatTemplate":
        """The built-in Kimi K2 template (instruct, or K2-Thinking layout with thinking=True)."""
        return cls(builtin_template_source("kimi_k2"), name="kimi_k2", bos_token=bos_token,
                   eos_token=eos_token, stop_strings=["<|im_end|>", eos_token])

    @classmethod
    def from_gguf_metadata(cls, md: Mapping[str, Any]) -> "ChatTemplate":
        """`tokenizer.chat_template` if present and valid jinja, else the built-in Kimi K2 template."""
        tokens = md.get("tokenizer.ggml.tokens")

        def text_of(key: str, default: str) -> str:
            i = md.get(key)
            try:
                t = tokens[int(i)] if tokens is not None and i is not None else None
            except (IndexError, TypeError, ValueError):
                t = None
            return t if isinstance(t, str) else default

        bos, eos = text_of("tokenizer.ggml.bos_token_id", "[BOS]"), text_of("tokenizer.ggml.eos_token_id", "[EOS]")
        src = md.get("tokenizer.chat_template")
        if isinstance(src, str) and src.strip():
            try:
                return cls(src, name="gguf", bos_token=bos, eos_token=eos)
            except jinja2.TemplateError as e:
                warnings.warn(f"tokenizer.chat_template does not compile ({e}); using the built-in Kimi K2 template",
                              stacklevel=2)
        return cls.kimi_k2(bos_token=bos, eos_token=eos)

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
               thinking: bool | None = False, tools: Sequence[Mapping[str, Any]] | None = None,
               template_kwargs: Mapping[str, Any] | None = None) -> str:
        """The prompt text for `messages` (OpenAI shape). Bad messages raise ValueError.
        `template_kwargs` (a request's chat_template_kwargs) become extra template variables;
        thinking=None leaves `thinking` undefined, so a GGUF template picks its own default."""
        msgs = normalize_messages(messages)
        if tools is not None and (isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence)):
            raise ValueError("tools must be a list of tool definitions")
        try:
            extra = {str(k): _plain(v, "chat_template_kwargs") for k, v in (template_kwargs or {}).items()
                     if str(k).isidentifier() and str(k) not in _RESERVED}
            if thinking is not None:
                extra.update(thinking=thinking, enable_thinking=thinking)
            return self._template.render(
                **extra, messages=msgs, tools=_plain(list(tools), "tools") if tools else None,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token, eos_token=self.eos_token)
        except jinja2.TemplateError as e:
            raise ValueError(f"chat template {self.name!r} failed: {e}") from e


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, answer) of generated text. Text with no </think> and no leading <think> is all
    answer; a <think> never closed is all reasoning."""
    body = text.lstrip()
    if body.startswith(THINK_OPEN):
        body = body[len(THINK_OPEN):]
    elif THINK_CLOSE not in text:
        return "", text
    reasoning, closed, answer = body.partition(THINK_CLOSE)
    if not closed:
        return reasoning.strip(), ""
    return reasoning.strip(), answer.lstrip()


class ReasoningSplitter:
    """Streaming split_reasoning: push text pieces, get (reasoning_delta, answer_delta); tag
    fragments cut across pieces are held back until they resolve."""

    def __init__(self, *, in_reasoning: bool = False) -> None:
        self._buf = ""
        self._state = "reasoning" if in_reasoning else "start"

    def push(self, text: str) -> tuple[str, str]:
        self._buf += text
        reasoning = answer = ""
        while True:
            if self._state == "start":
                s = self._buf.lstrip()
                if s.startswith(THINK_OPEN):
                    self._buf, self._state = s[len(THINK_OPEN):].lstrip(), "reasoning"
                    continue
                if THINK_OPEN.startswith(s):  # empty or a prefix of <think>: undecided
                    return reasoning, answer
                self._state = "answer"
                continue
            if self._state == "reasoning":
                k = self._buf.find(THINK_CLOSE)
                if k >= 0:
                    reasoning += self._buf[:k]
                    self._buf, self._state = self._buf[k + len(THINK_CLOSE):], "after"
                    continue
                hold = _partial_suffix(self._buf, THINK_CLOSE)
                reasoning += self._buf[:len(self._buf) - hold]
                self._buf = self._buf[len(self._buf) - hold:]
                return reasoning, answer
            if self._state == "after":  # drop the blank lines between </think> and the answer
                self._buf = self._buf.lstrip()
                if not self._buf:
                    return reasoning, answer
                self._state = "answer"
            answer += self._buf
            self._buf = ""
            return reasoning, answer

    def flush(self) -> tuple[str, str]:
        """Whatever was held back, attributed to the current part."""
        rest, self._buf = self._buf, ""
        return (rest, "") if self._state == "reasoning" else ("", "" if self._state == "after" else rest)


def parse_tool_calls(text: str, first_index: int = 0) -> tuple[str, list[dict[str, Any]]]:
    """(content, tool_calls) of generated Kimi text decoded with its special tokens; calls in OpenAI
    shape with Kimi's ids ("functions.get_weather:0"), which render back unchanged. See
    kimi_runtime.text.toolcalls (malformed markup stays content)."""
    from kimi_runtime.text.toolcalls import parse_tool_calls as parse

    return parse(text, first_index)


def _partial_suffix(s: str, tag: str) -> int:
    """Length of the longest suffix of s that is a proper prefix of tag."""
    for n in range(min(len(tag) - 1, len(s)), 0, -1):
        if s.endswith(tag[:n]):
            return n
    return 0
