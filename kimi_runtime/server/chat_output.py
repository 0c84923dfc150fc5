"""Turns a chat generation's events into OpenAI's answer: `reasoning_content`, `content` and
`tool_calls`, streamed as deltas (a call's id and name first, then its argument fragments) or
collected into one message. The same ChatOutput serves both, so they cannot disagree."""
from __future__ import annotations

from typing import Any, Optional

from kimi_runtime.generate import GenerationEvent
from kimi_runtime.text.toolcalls import SECTION_BEGIN, ToolCallStream, ToolEvent, partial_suffix


class ChatOutput:
    """Feed events with push(); each returns a list of delta dicts (possibly empty)."""

    def __init__(self, parse_tools: bool, first_index: int):
        self.parse_tools = parse_tools
        self.tools = ToolCallStream(first_index) if parse_tools else None
        self._held_reasoning = ""  # tail that may be the start of a tool-call section
        self._reasoning_over = False  # a section began inside the reasoning: the rest is answer
        self.reasoning = ""
        self.content = ""

    def push(self, ev: GenerationEvent) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        if ev.reasoning:
            r, spill = self._reasoning(ev.reasoning)
            if r:
                self.reasoning += r
                deltas.append({"reasoning_content": r})
            if spill:
                deltas += self._answer(spill)
        if ev.text:
            if self._held_reasoning:  # the held tail was reasoning after all
                held, self._held_reasoning = self._held_reasoning, ""
                self.reasoning += held
                deltas.append({"reasoning_content": held})
            deltas += self._answer(ev.text)
        return _merge(deltas)

    def finish(self) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        if self._held_reasoning:
            held, self._held_reasoning = self._held_reasoning, ""
            self.reasoning += held
            deltas.append({"reasoning_content": held})
        if self.tools is not None:
            deltas += self._tool_deltas(self.tools.finish())
        return _merge(deltas)

    @property
    def has_calls(self) -> bool:
        return self.tools is not None and self.tools.has_calls

    def message(self) -> dict[str, Any]:
        """The whole assistant message (after finish())."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning:
            msg["reasoning_content"] = self.reasoning
        if self.has_calls:
            msg["tool_calls"] = self.tools.calls_openai()
            msg["content"] = self.content or None
        return msg

    # ---- internals
    def _reasoning(self, text: str) -> tuple[str, str]:
        """(reasoning, answer) of a reasoning piece: a tool-call section written as plain text ends
        the reasoning, as the section's special token does (generate.py)."""
        if self.tools is None:
            return text, ""
        if self._reasoning_over:
            return "", text
        buf = self._held_reasoning + text
        k = buf.find(SECTION_BEGIN)
        if k >= 0:
            self._held_reasoning, self._reasoning_over = "", True
            return buf[:k], buf[k:]
        hold = partial_suffix(buf, SECTION_BEGIN)
        self._held_reasoning = buf[len(buf) - hold:]
        return buf[:len(buf) - hold], ""

    def _answer(self, text: str) -> list[dict[str, Any]]:
        if self.tools is None:
            self.content += text
            return [{"content": text}]
        return self._tool_deltas(self.tools.push(text))

    def _tool_deltas(self, events: list[ToolEvent]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for e in events:
            if e.content:
                self.content += e.content
                out.append({"content": e.content})
            elif e.name is not None:
                out.append({"tool_calls": [{"index": e.index, "id": e.id, "type": "function",
                                            "function": {"name": e.name, "arguments": ""}}]})
            elif e.arguments:
                out.append({"tool_calls": [{"index": e.index, "function": {"arguments": e.arguments}}]})
        return out


def _merge(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adjacent plain-text deltas of the same kind joined (fewer SSE frames); call deltas kept apart."""
    out: list[dict[str, Any]] = []
    for d in deltas:
        if out and "tool_calls" not in d and "tool_calls" not in out[-1] and set(d) == set(out[-1]):
            k = next(iter(d))
            out[-1] = {k: out[-1][k] + d[k]}
        else:
            out.append(d)
    return out


def finish_reason(raw: Optional[str], has_calls: bool) -> str:
    """OpenAI's finish_reason: a turn that ends after its calls is "tool_calls"."""
    if raw == "length":
        return "length"
    return "tool_calls" if has_calls else "stop"
