"""Grammar-constrained sampling with llguidance: JSON (any object, or a JSON Schema) and Kimi tool
calls whose arguments fit the tool's schema.

Why llguidance: it takes any vocabulary as a plain list of token byte strings (our tokenizer is HF
`tokenizers` built from the GGUF vocab, with no tokenizer.json or transformers object to hand to
xgrammar / outlines-core), it computes the next-token mask on the CPU in well under a millisecond
without torch.compile or CUDA, ships abi3 wheels, handles special tokens in a grammar by id (Kimi's
tool-call markers are control tokens in the real vocabulary but plain text in small ones), and it
is what llama.cpp itself uses for JSON Schema."""
from __future__ import annotations

import json
import threading
import weakref
from typing import Any, Optional, Sequence

import numpy as np
import torch

from kimi_runtime.text import toolcalls as tc

_MAX_PARALLEL = 8  # calls one constrained section may hold
_JSON_OPTIONS = {"whitespace_flexible": False}  # compact JSON: no runs of blanks on a weak model


class GrammarError(ValueError):
    """The schema or grammar cannot be compiled; the message says why."""


def _llg() -> Any:
    try:
        import llguidance
    except ImportError as e:  # an optional dependency of the server
        raise GrammarError("structured output needs the 'llguidance' package (pip install llguidance)") from e
    return llguidance


class _Vocab:
    """llguidance's TokenizerWrapper protocol over our tokenizer: control tokens get the 0xFF
    prefix llguidance uses to tell them from text."""

    def __init__(self, tok: Any):
        n = int(tok.n_vocab)
        special = getattr(tok, "is_special", None)
        self.special_token_ids = [i for i in range(n) if special is not None and special(i)]
        sp = set(self.special_token_ids)
        self.tokens = [(b"\xff" if i in sp else b"") + _token_bytes(tok, i) for i in range(n)]
        eog = sorted(getattr(tok, "eog_ids", ()) or ())
        self.eos_token_id = eog[0] if eog else getattr(tok, "eos_id", None)
        self.bos_token_id = getattr(tok, "bos_id", None)
        self._tok = tok

    def __call__(self, s: Any) -> list[int]:
        text = s.decode("utf-8", "replace") if isinstance(s, bytes) else s
        return list(self._tok.encode(text, add_bos=False, parse_special=False))


def _token_bytes(tok: Any, i: int) -> bytes:
    fn = getattr(tok, "token_bytes", None)
    if fn is not None:
        return fn(i)
    return tok.decode([i]).encode("utf-8")


_cache: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def ll_tokenizer(tok: Any) -> Any:
    """The llguidance tokenizer for `tok` (built once per tokenizer object)."""
    with _lock:
        lt = _cache.get(tok)
        if lt is None:
            llg = _llg()
            v = _Vocab(tok)
            eog = sorted(getattr(tok, "eog_ids", ()) or ()) or None
            lt = llg.LLTokenizer(llg.TokenizerWrapper(v), eos_token=eog)
            _cache[tok] = lt
        return lt


class Constraint:
    """A grammar's state during one generation: `mask(logits)` sets disallowed tokens to -inf,
    `accept(token)` advances. When the grammar is complete only end-of-generation ids stay allowed."""

    def __init__(self, tok: Any, grammar: str):
        llg = _llg()
        self._lt = ll_tokenizer(tok)
        err = llg.LLMatcher.validate_grammar(grammar, self._lt)
        if err:
            raise GrammarError(err)
        self._m = llg.LLMatcher(self._lt, grammar, log_level=0)
        if self._m.is_error():
            raise GrammarError(self._m.get_error())
        self.n_vocab = int(tok.n_vocab)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` with every token the grammar does not allow next set to -inf."""
        bits = np.unpackbits(np.frombuffer(self._m.compute_bitmask(), dtype=np.uint8), count=self.n_vocab,
                             bitorder="little")
        if not bits.any():
            raise RuntimeError(f"the grammar allows no token: {self._m.get_error() or 'dead end'}")
        deny = torch.from_numpy(bits == 0)
        if logits.numel() != self.n_vocab:  # padded logits: ids past the vocabulary are never allowed
            pad = torch.ones(logits.numel(), dtype=torch.bool)
            n = min(self.n_vocab, logits.numel())
            pad[:n] = deny[:n]
            deny = pad
        if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 1:
            # numpy is single-threaded: torch's thread pool wakes up for a 160k-element op, which on
            # a busy machine costs a scheduler slice (tens of ms) per token
            x = logits.detach().contiguous().numpy()
            return torch.from_numpy(np.where(deny.numpy(), np.float32(-np.inf), x))
        return logits.masked_fill(deny.to(logits.device, non_blocking=True), float("-inf"))

    def accept(self, token: int) -> None:
        if not self._m.consume_token(int(token)):
            raise RuntimeError(f"token {token} broke the grammar: {self._m.get_error()}")

    def is_accepting(self) -> bool:
        return self._m.is_accepting()


def _json_rule(name: str, schema: Optional[dict[str, Any]]) -> str:
    schema = {"type": "object"} if schema is None else schema
    if not isinstance(schema, dict):
        raise GrammarError("a JSON schema must be an object")
    schema = {**schema, "x-guidance": {**(schema.get("x-guidance") or {}), **_JSON_OPTIONS}}
    try:
        text = json.dumps(schema, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise GrammarError(f"the JSON schema is not plain JSON: {e}") from None
    return f"{name}: %json {text}"


def _marker(tok: Any, text: str) -> str:
    """Lark for a markup string: the special token by id where the vocabulary has it whole."""
    i = _special_id(tok, text)
    return f"<[{i}]>" if i is not None else json.dumps(text)


def _special_id(tok: Any, text: str) -> Optional[int]:
    try:
        ids = tok.encode(text, add_bos=False, parse_special=True)
    except Exception:
        return None
    special = getattr(tok, "is_special", None)
    return ids[0] if len(ids) == 1 and special is not None and special(ids[0]) else None


def _start(tok: Any, body: str, reasoning: str) -> str:
    """The start rule: `body`, after a reasoning block when the model is thinking. reasoning is
    "none", "open" (the prompt ends inside <think>) or "optional" (the model may open one). Only
    where <think>/</think> are single special tokens: free text cannot run past them then."""
    open_, close = _special_id(tok, "<think>"), _special_id(tok, "</think>")
    if reasoning == "none" or open_ is None or close is None:
        return f"start: {body}\n"
    if reasoning == "open":
        return f"start: THINK <[{close}]> {body}\nTHINK: /(?s:.*)/\n"
    return f"start: (<[{open_}]> THINK <[{close}]>)? {body}\nTHINK: /(?s:.*)/\n"


def json_grammar(tok: Any, schema: Optional[dict[str, Any]], reasoning: str = "none") -> str:
    """Grammar for one JSON value fitting `schema` (None: any JSON object)."""
    lark = _start(tok, "answer", reasoning) + _json_rule("answer", schema) + "\n"
    return _llg().LLMatcher.grammar_from_lark(lark)


def _params_schema(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool.get("function") or {}
    p = fn.get("parameters")
    return p if isinstance(p, dict) and p else {"type": "object"}


def tool_call_grammar(tok: Any, tools: Sequence[dict[str, Any]], first_index: int,
                      parallel: bool = True, reasoning: str = "none") -> str:
    """Grammar of a tool-call section calling `tools` (one or, with `parallel`, up to
    _MAX_PARALLEL calls), ids numbered from `first_index`, arguments fitting each tool's schema."""
    if not tools:
        raise GrammarError("no tools to call")
    sb, se, cb, ab, ce = (_marker(tok, m) for m in (tc.SECTION_BEGIN, tc.SECTION_END, tc.CALL_BEGIN,
                                                      tc.ARG_BEGIN, tc.CALL_END))
    lines = [_json_rule(f"args_{t}", _params_schema(tool)) for t, tool in enumerate(tools)]
    n = _MAX_PARALLEL if parallel else 1
    for k in range(n):
        alts = [f"{cb} {json.dumps(tc.call_id(tool['function']['name'], first_index + k))} {ab} args_{t} {ce}"
                for t, tool in enumerate(tools)]
        lines.append(f"call_{k}: " + " | ".join(alts))
    chain = f"call_{n - 1}"
    for k in range(n - 2, -1, -1):
        chain = f"call_{k} ({chain})?"
    lines.append(f"section: {sb} {chain} {se}")
    lark = _start(tok, "section", reasoning) + "\n".join(lines) + "\n"
    return _llg().LLMatcher.grammar_from_lark(lark)

