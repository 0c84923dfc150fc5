"""Request bodies of the OpenAI-compatible endpoints (pydantic, strict types) and the OpenAI-style
error object. Unknown fields are ignored, as OpenAI does; features we do not have are refused."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class APIError(Exception):
    """An error answered as {"error": {...}} with an HTTP status; the server keeps serving."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # parts are checked by the server (text only; an image part gets its own clear 400)
    content: Union[str, list[dict[str, Any]], None] = None
    name: Optional[str] = None
    tool_call_id: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None
    reasoning_content: Optional[str] = None

    @model_validator(mode="after")
    def _content_present(self) -> "ChatMessage":
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        return self

    def to_template(self) -> dict[str, Any]:
        """The dict the chat template renders (text parts joined; developer is a system turn)."""
        text = self.content if isinstance(self.content, str) or self.content is None else \
            "".join(str(p.get("text", "")) for p in self.content)
        d: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role,
                             "content": text or ""}
        for k in ("name", "tool_call_id", "tool_calls", "reasoning_content"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    """Fields shared by chat and text completions (OpenAI ranges; top_k, min_p, repetition_penalty,
    ignore_eos are llama.cpp-style extensions)."""

    model: str
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=0)
    min_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    presence_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: Optional[float] = Field(default=None, gt=0.0, le=10.0)
    seed: Optional[int] = Field(default=None, ge=-(1 << 63), lt=1 << 64)
    stop: Union[str, list[str], None] = None
    n: Optional[int] = Field(default=None, ge=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    logit_bias: Optional[dict[str, float]] = None
    logprobs: Optional[bool] = None
    user: Optional[str] = None
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Union[str, list[str], None]) -> Optional[list[str]]:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and v != 1:
            raise ValueError("only n=1 is supported")
        return v

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: Optional[bool]) -> Optional[bool]:
        if v:
            raise ValueError("logprobs are not supported")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: Optional[dict[str, float]]) -> Optional[dict[str, float]]:
        for k, b in (v or {}).items():
            if not k.lstrip("-").isdigit() or int(k) < 0:
                raise ValueError(f"logit_bias keys must be token ids, got {k!r}")
            if not -100.0 <= b <= 100.0:
                raise ValueError("logit_bias values must be in [-100, 100]")
        return v

    def sampling_overrides(self) -> dict[str, Any]:
        """Non-null sampling fields under the names of kimi_runtime.text.SamplingParams."""
        d: dict[str, Any] = {}
        for k in ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                  "repetition_penalty", "seed", "max_tokens", "stop"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        if self.logit_bias:
            d["logit_bias"] = {int(k): float(v) for k, v in self.logit_bias.items()}
        return d


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Union[Literal["none", "auto", "required"], dict[str, Any], None] = None
    parallel_tool_calls: Optional[bool] = None
    response_format: Optional[dict[str, Any]] = None
    # Kimi thinking mode (chat_template_kwargs.thinking in vLLM / SGLang style is also read).
    thinking: Optional[bool] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None

    @model_validator(mode="after")
    def _merge_max(self) -> "ChatCompletionRequest":
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    @property
    def wants_thinking(self) -> Optional[bool]:
        """True/False when the request says (thinking, or chat_template_kwargs.thinking /
        enable_thinking); None leaves it to the chat template."""
        if self.thinking is not None:
            return self.thinking
        kw = self.chat_template_kwargs or {}
        v = kw.get("thinking", kw.get("enable_thinking"))
        return None if v is None else bool(v)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int]]
    echo: bool = False
    suffix: Optional[str] = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: Union[str, list[str], list[int]]) -> Union[str, list[int]]:
        if isinstance(v, list):
            if not v:
                raise ValueError("prompt must not be empty")
            if all(isinstance(x, str) for x in v):
                if len(v) != 1:
                    raise ValueError("only one prompt per request is supported")
                return v[0]
        if isinstance(v, str) and not v:
            raise ValueError("prompt must not be empty")
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: Optional[str]) -> Optional[str]:
        if v:
            raise ValueError("suffix is not supported")
        return v


class TokenizeRequest(_Strict):
    """llama.cpp's /tokenize body."""

    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(_Strict):
    """llama.cpp's /detokenize body."""

    tokens: list[int]
