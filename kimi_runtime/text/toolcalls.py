"""Kimi K2's tool-call markup, as its official chat template writes it:

    <|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{json}
    <|tool_call_end|>...<|tool_calls_section_end|>

`parse_tool_calls` splits a finished answer into content and OpenAI-shaped calls; `ToolCallStream`
does the same incrementally, announcing each call (id and name) before its argument fragments, as
OpenAI's streamed `delta.tool_calls` do. Markup that does not form a call stays content."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

SECTION_BEGIN = "<|tool_calls_section_begin|>"
SECTION_END = "<|tool_calls_section_end|>"
CALL_BEGIN = "<|tool_call_begin|>"
ARG_BEGIN = "<|tool_call_argument_begin|>"
CALL_END = "<|tool_call_end|>"
MARKERS = (SECTION_BEGIN, SECTION_END, CALL_BEGIN, ARG_BEGIN, CALL_END)

_KIMI_ID = re.compile(r"functions\.(?P<name>[A-Za-z0-9_\-.]+):(?P<idx>\d+)")
_BARE_ID = re.compile(r"(?:functions\.)?(?P<name>[A-Za-z0-9_\-.]+)(?::\d+)?")


def call_id(name: str, index: int) -> str:
    """Kimi's id for the `index`-th call of a conversation (one counter over all assistant turns)."""
    return f"functions.{name}:{index}"


def count_calls(messages: Iterable[dict[str, Any]]) -> int:
    """How many tool calls earlier assistant turns made: the counter the next call id continues."""
    return sum(len(m.get("tool_calls") or []) for m in messages if m.get("role") == "assistant")


def _name_and_id(raw: str, counter: int) -> Optional[tuple[str, str]]:
    """(name, id) of a call header; a well-formed Kimi id is kept as the model wrote it (the
    template renders it back verbatim), a bare name gets the conversation's next id."""
    raw = raw.strip()
    m = _KIMI_ID.fullmatch(raw)
    if m:
        return m.group("name"), raw
    m = _BARE_ID.fullmatch(raw)
    if m:
        return m.group("name"), call_id(m.group("name"), counter)
    return None


def parse_tool_calls(text: str, first_index: int = 0) -> tuple[str, list[dict[str, Any]]]:
    """(content, tool_calls) of a finished answer. Calls get OpenAI's shape; ids the model did not
    spell as functions.NAME:IDX are numbered from `first_index`. A section holding no well-formed
    call is returned as content, unchanged."""
    stream = ToolCallStream(first_index)
    content = "".join(ev.content for ev in stream.push(text)) + "".join(ev.content for ev in stream.finish())
    return content, stream.calls_openai()


@dataclass
class ToolEvent:
    """One step of ToolCallStream: `content` text, or a call's start (`index`, `id`, `name`), or an
    argument fragment (`index`, `arguments`)."""

    content: str = ""
    index: Optional[int] = None
    id: Optional[str] = None
    name: Optional[str] = None
    arguments: Optional[str] = None


@dataclass
class _Call:
    id: str
    name: str
    arguments: str = ""
    closed: bool = False


@dataclass
class ToolCallStream:
    """Incremental parser of answer text. Text that may still become a marker is held back; a
    section's raw text is kept until it turns out well-formed, so broken markup can be handed back
    as content at finish()."""

    first_index: int = 0
    calls: list[_Call] = field(default_factory=list)
    _buf: str = ""
    _state: str = "content"  # content | section | header | args | after
    _raw: str = ""  # raw section text not yet accounted for by an announced call

    def push(self, text: str) -> list[ToolEvent]:
        self._buf += text
        out: list[ToolEvent] = []
        while self._step(out):
            pass
        return out

    def finish(self) -> list[ToolEvent]:
        """End of the answer: held text is released; an unfinished or broken section is content."""
        out: list[ToolEvent] = []
        rest, self._buf = self._buf, ""
        if self._state == "content":
            if rest:
                out.append(ToolEvent(content=rest))
        elif self._state == "args":
            # cut off inside the arguments (max_tokens): the fragment still belongs to the call
            if rest:
                self.calls[-1].arguments += rest
                out.append(ToolEvent(index=len(self.calls) - 1, arguments=rest))
        elif self._state == "after":
            if rest:
                out.append(ToolEvent(content=rest))
        else:
            raw = self._raw + rest
            if raw:
                out.append(ToolEvent(content=raw))
        self._raw = ""
        self._state = "after"
        return out

    @property
    def has_calls(self) -> bool:
        return bool(self.calls)

    def calls_openai(self) -> list[dict[str, Any]]:
        return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.calls]

    # ---- the state machine; each step consumes from _buf and says whether to go on
    def _take_until(self, marker: str) -> tuple[str, bool]:
        """(text before `marker`, found); without the marker, all but a possible marker prefix."""
        k = self._buf.find(marker)
        if k >= 0:
            head, self._buf = self._buf[:k], self._buf[k + len(marker):]
            return head, True
        hold = partial_suffix(self._buf, marker)
        head = self._buf[:len(self._buf) - hold]
        self._buf = self._buf[len(self._buf) - hold:]
        return head, False

    def _step(self, out: list[ToolEvent]) -> bool:
        if self._state == "content":
            head, found = self._take_until(SECTION_BEGIN)
            if head:
                out.append(ToolEvent(content=head))
            if found:
                self._state, self._raw = "section", SECTION_BEGIN
            return found
        if self._state == "section":
            s = self._buf.lstrip()
            for marker, nxt in ((CALL_BEGIN, "header"), (SECTION_END, "after")):
                if s.startswith(marker):
                    self._raw += self._buf[:len(self._buf) - len(s) + len(marker)]
                    self._buf = s[len(marker):]
                    if nxt == "after" and not self.calls:
                        out.append(ToolEvent(content=self._raw))  # an empty section is just text
                    self._raw = "" if nxt == "after" else self._raw
                    self._state = nxt
                    return True
            if any(m.startswith(s) for m in (CALL_BEGIN, SECTION_END)):
                return False  # undecided: could still be a marker
            return self._broken(out)
        if self._state == "header":
            k = self._buf.find(ARG_BEGIN)
            stray = [self._buf.find(m) for m in (CALL_BEGIN, CALL_END, SECTION_END, SECTION_BEGIN)]
            if any(0 <= j and (k < 0 or j < k) for j in stray):
                return self._broken(out)
            if k < 0:
                return False if len(self._buf) < 512 else self._broken(out)
            parsed = _name_and_id(self._buf[:k], self.first_index + len(self.calls))
            if parsed is None:
                return self._broken(out)
            name, tid = parsed
            self._buf = self._buf[k + len(ARG_BEGIN):]
            self.calls.append(_Call(tid, name))
            out.append(ToolEvent(index=len(self.calls) - 1, id=tid, name=name))
            self._raw, self._state = "", "args"
            return True
        if self._state == "args":
            # a call ends at its end marker, or at the section's end when the model skipped it
            ends = [(j, m) for m in (CALL_END, SECTION_END) if (j := self._buf.find(m)) >= 0]
            if ends:
                j, marker = min(ends)
                head, self._buf = self._buf[:j].rstrip(), self._buf[j + len(marker):]
            else:
                hold = max(partial_suffix(self._buf, m) for m in (CALL_END, SECTION_END))
                head = self._buf[:len(self._buf) - hold]
                self._buf = self._buf[len(self._buf) - hold:]
            call = self.calls[-1]
            if head:
                call.arguments += head
                out.append(ToolEvent(index=len(self.calls) - 1, arguments=head))
            if ends:
                call.closed = True
                self._state = "section" if marker == CALL_END else "after"
            return bool(ends)
        # after the section: Kimi writes nothing more; whatever comes is content
        if self._buf:
            out.append(ToolEvent(content=self._buf))
            self._buf = ""
        return False

    def _broken(self, out: list[ToolEvent]) -> bool:
        """Markup that is not a call: the raw section (unless it already gave calls) and the rest of
        the answer become content."""
        out.append(ToolEvent(content=self._raw + self._buf))
        self._raw, self._buf, self._state = "", "", "after"
        return False


def partial_suffix(s: str, tag: str) -> int:
    """Length of the longest suffix of s that is a proper prefix of tag."""
    for n in range(min(len(tag) - 1, len(s)), 0, -1):
        if s.endswith(tag[:n]):
            return n
    return 0


def tool_names(tools: Optional[Sequence[dict[str, Any]]]) -> list[str]:
    """Function names of OpenAI tool definitions."""
    out = []
    for t in tools or []:
        fn = t.get("function") if isinstance(t, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            out.append(fn["name"])
    return out
