"""What a chat request asks beyond its messages: which tools the prompt declares, whether the answer
is parsed for calls, and which grammar (tool_choice required / named, response_format) constrains
the sampling. Every mistake is an APIError naming the offending field."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from kimi_runtime.server.schemas import APIError, ChatCompletionRequest
from kimi_runtime.text.toolcalls import count_calls

_NAME = re.compile(r"[A-Za-z0-9_\-.]{1,64}")
_IMAGE_PARTS = {"image_url", "input_image", "image", "image_file"}


@dataclass
class ChatPlan:
    messages: list[dict[str, Any]]
    tools: Optional[list[dict[str, Any]]]  # rendered into the prompt
    parse_tools: bool
    first_index: int  # the next call id's number (one counter over the conversation)
    grammar_kind: Optional[str]  # None, "json", "tools"
    schema: Optional[dict[str, Any]] = None
    call_tools: Optional[list[dict[str, Any]]] = None
    parallel: bool = True


def check_parts(req: ChatCompletionRequest) -> None:
    for i, m in enumerate(req.messages):
        if not isinstance(m.content, list):
            continue
        for j, part in enumerate(m.content):
            where, param = f"messages[{i}].content[{j}]", f"messages.{i}.content.{j}"
            kind = part.get("type")
            if kind in _IMAGE_PARTS:
                raise APIError(400, f"{where}: this model reads text only; {kind} parts are not supported",
                               param=param, code="unsupported_content")
            if kind != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"{where}: expected a text part {{\"type\": \"text\", \"text\": ...}}, "
                               f"got type {kind!r}", param=param, code="invalid_value")


def _check_tools(tools: Optional[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for i, t in enumerate(tools or []):
        fn = t.get("function")
        if t.get("type", "function") != "function" or not isinstance(fn, dict):
            raise APIError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}",
                           param=f"tools.{i}", code="invalid_value")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise APIError(400, f"tools[{i}].function.name must be 1-64 letters, digits, _ - or .",
                           param=f"tools.{i}.function.name", code="invalid_value")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise APIError(400, f"tools[{i}].function.parameters must be a JSON Schema object",
                           param=f"tools.{i}.function.parameters", code="invalid_value")
        out.append(t)
    names = [t["function"]["name"] for t in out]
    if len(set(names)) != len(names):
        raise APIError(400, "tools: two tools have the same name", param="tools", code="invalid_value")
    return out


def _response_schema(rf: Optional[dict[str, Any]]) -> tuple[bool, Optional[dict[str, Any]]]:
    """(constrained, schema) of response_format; schema None means any JSON object."""
    if rf is None:
        return False, None
    kind = rf.get("type")
    if kind == "text":
        return False, None
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        js = rf.get("json_schema")
        schema = js.get("schema") if isinstance(js, dict) else None
        if not isinstance(schema, dict):
            raise APIError(400, "response_format.json_schema.schema must be a JSON Schema object",
                           param="response_format.json_schema.schema", code="invalid_value")
        return True, schema
    raise APIError(400, f"response_format.type must be text, json_object or json_schema, got {kind!r}",
                   param="response_format.type", code="invalid_value")


def plan_chat(req: ChatCompletionRequest) -> ChatPlan:
    check_parts(req)
    messages = [m.to_template() for m in req.messages]
    tools = _check_tools(req.tools)
    first = count_calls(messages)
    choice = req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none")
    constrained, schema = _response_schema(req.response_format)
    plan = ChatPlan(messages, tools or None, bool(tools), first, "json" if constrained else None, schema)
    if choice == "none":
        plan.tools, plan.parse_tools = None, False
    elif choice == "auto":
        pass
    elif choice == "required":
        if not tools:
            raise APIError(400, "tool_choice 'required' needs tools", param="tool_choice",
                           code="invalid_value")
        plan.grammar_kind, plan.call_tools = "tools", tools
        plan.parallel = req.parallel_tool_calls is not False
    else:
        fn = choice.get("function") if isinstance(choice, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if choice.get("type", "function") != "function" or not isinstance(name, str):
            raise APIError(400, "tool_choice must be none, auto, required or "
                           "{\"type\": \"function\", \"function\": {\"name\": ...}}",
                           param="tool_choice", code="invalid_value")
        named = [t for t in tools if t["function"]["name"] == name]
        if not named:
            raise APIError(400, f"tool_choice names {name!r}, which is not among the tools",
                           param="tool_choice", code="invalid_value")
        plan.grammar_kind, plan.call_tools, plan.parallel = "tools", named, False
    return plan
