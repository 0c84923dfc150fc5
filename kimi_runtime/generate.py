"""The generation loop: prompt or chat messages -> token ids -> Engine prefill/decode -> sampled,
detokenized stream of events. Stops on end-of-generation ids, user stop strings (text that could still
become a stop string is held back) and max_tokens/context; reports usage and prefill/decode speed."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence, Union

CancelToken = Union[threading.Event, Callable[[], bool], None]


@dataclass
class Usage:
    """Token counts of one request, as the OpenAI API reports them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Timings:
    """Wall-clock split of one request. Prefill covers the prompt tokens computed (a reused cached
    prefix excluded) and the first sampled token; decode covers every later engine.decode call and its
    sampling (so decode tok/s = decode_tokens / decode_s)."""

    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0
    sample_s: float = 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0


@dataclass
class GenerationEvent:
    """One step of a stream. `text` / `reasoning` hold newly released characters (either may be "");
    the last event has `finish_reason` ("stop", "length" or "cancelled"), `usage` and `timings`."""

    text: str = ""
    reasoning: str = ""
    token_id: Optional[int] = None
    finish_reason: Optional[str] = None
    usage: Optional[Usage] = None
    timings: Optional[Timings] = None


@dataclass
class GenerationResult:
    """A whole generation, collected from its events."""

    text: str = ""
    reasoning: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)


class StopMatcher:
    """Finds user stop strings in streamed text. Text that could still grow into a stop string is held
    back, so a stop string never leaks to the client even when it spans several tokens."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self._held = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """Returns (text safe to release, whether a stop string was hit)."""
        buf = self._held + piece
        if not self.stops:
            self._held = ""
            return buf, False
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return buf[: min(hits)], True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), keep, -1):
                if s.startswith(buf[len(buf) - k:]):
                    keep = k
                    break
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        out, self._held = self._held, ""
        return out


def _is_cancelled(cancel: CancelToken) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _single_token(tokenizer: Any, text: str) -> Optional[int]:
    """The id of `text` when it is one special token in this vocabulary, else None."""
    try:
        ids = tokenizer.encode(text, add_bos=False, parse_special=True)
    except Exception:  # a vocabulary without the token may refuse it; then there is no such id
        return None
    return ids[0] if len(ids) == 1 else None


class Generator:
    """Runs one generation at a time on an engine (not thread-safe: the server serialises requests).

    `engine` needs reset(), prefill(ids) -> logits [vocab], decode(id) -> logits [vocab] and n_ctx;
    `tokenizer` the kimi_runtime.text Tokenizer interface; `template` a ChatTemplate (for chat())."""

    def __init__(self, engine: Any, tokenizer: Any, template: Any = None,
                 decoder_factory: Optional[Callable[[Any], Any]] = None,
                 sampler_factory: Optional[Callable[[Any], Any]] = None, reuse_prefix: bool = True):
        self.engine = engine
        self.tokenizer = tokenizer
        self.template = template
        if decoder_factory is None or sampler_factory is None:
            from kimi_runtime.text import Sampler, StreamDecoder
            # Control tokens (turn markers) are not text; <think> markers are handled by id below.
            decoder_factory = decoder_factory or (lambda tok: StreamDecoder(tok, skip_special=True))
            sampler_factory = sampler_factory or Sampler
        self._decoder_factory = decoder_factory
        self._sampler_factory = sampler_factory
        self.think_open = _single_token(tokenizer, "<think>")
        self.think_close = _single_token(tokenizer, "</think>")
        # Tool-call markers are control tokens in Kimi's vocabulary: decoded as text anyway, since the
        # server parses calls out of the answer; the section's start also ends a reasoning block.
        from kimi_runtime.text.toolcalls import MARKERS, SECTION_BEGIN
        self.keep_special: dict[int, str] = {}
        for m in MARKERS:
            i = _single_token(tokenizer, m)
            if i is not None:
                self.keep_special[i] = m
        self.section_begin = _single_token(tokenizer, SECTION_BEGIN)
        # Totals over the generator's life; the server's /metrics and the tests read these.
        self.total_generated = 0
        self.total_cancelled = 0
        self.last_timings: Optional[Timings] = None
        # Ids whose keys/values sit in the engine's KV cache, so the next turn of a chat prefills only
        # its new tokens. Needs an engine whose prefill appends and that reports n_past.
        self.reuse_prefix = reuse_prefix and hasattr(engine, "n_past")
        self._ctx: list[int] = []
        self.reused_tokens = 0

    # ---- public API
    @classmethod
    def from_gguf(cls, path: str, **engine_kwargs: Any) -> "Generator":
        """Loads the engine, tokenizer and chat template from one GGUF file."""
        from kimi_runtime.engine import Engine
        from kimi_runtime.gguf import open_gguf
        from kimi_runtime.text import ChatTemplate, Tokenizer

        with open_gguf(path) as m:
            md = dict(m.tokenizer_metadata)
        tok = Tokenizer.from_gguf_metadata(md)
        tmpl = ChatTemplate.from_gguf_metadata(md)
        engine = Engine.from_gguf(path, **engine_kwargs)
        return cls(engine, tok, tmpl)

    @property
    def n_ctx(self) -> int:
        return int(getattr(self.engine, "n_ctx", 0) or self.engine.config.context_length)

    def render_chat(self, messages: Sequence[dict], thinking: bool = False,
                    tools: Optional[list] = None, template_kwargs: Optional[dict] = None) -> list[int]:
        """Chat messages -> prompt ids through the chat template (special tokens parsed whole)."""
        if self.template is None:
            raise ValueError("this generator has no chat template")
        if not messages:
            raise ValueError("messages must not be empty")
        extra = {"template_kwargs": template_kwargs} if template_kwargs else {}
        text = self.template.render(list(messages), add_generation_prompt=True,
                                    thinking=thinking, tools=tools, **extra)
        return self.tokenizer.encode(text, add_bos=False, parse_special=True)

    def encode_prompt(self, prompt: str) -> list[int]:
        """A raw completion prompt -> ids, with BOS when the GGUF asks for it (add_bos_token)."""
        return self.tokenizer.encode(prompt, add_bos=bool(getattr(self.tokenizer, "add_bos", False)),
                                     parse_special=True)

    def check_budget(self, n_prompt: int, max_tokens: Optional[int]) -> int:
        """Validates the prompt against the context; returns the effective max_tokens."""
        room = self.n_ctx - n_prompt
        if n_prompt == 0:
            raise ValueError("the prompt is empty")
        if room <= 0:
            raise ValueError(f"the prompt has {n_prompt} tokens; the context holds {self.n_ctx}")
        if max_tokens is None:
            return room
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if max_tokens > room:
            raise ValueError(f"max_tokens {max_tokens} + prompt {n_prompt} tokens exceeds the "
                             f"context of {self.n_ctx} tokens")
        return max_tokens

    def chat(self, messages: Sequence[dict], params: Any, thinking: bool = False,
             stream: bool = True, cancel: CancelToken = None,
             tools: Optional[list] = None, constraint: Any = None) -> Iterator[GenerationEvent]:
        """Renders the conversation and generates the assistant's reply."""
        ids = self.render_chat(messages, thinking=thinking, tools=tools)
        return self.generate(ids, params, stream=stream, cancel=cancel, extra_stops=self.chat_stops,
                             constraint=constraint)

    @property
    def chat_stops(self) -> list[str]:
        """Turn-end strings of the template: a model that spells <|im_end|> in pieces still stops."""
        return list(getattr(self.template, "stop_strings", None) or [])

    def complete(self, prompt_ids: Sequence[int], params: Any, cancel: CancelToken = None,
                 ignore_eos: bool = False, extra_stops: Sequence[str] = ()) -> GenerationResult:
        """generate() collected into one result."""
        res = GenerationResult()
        for ev in self.generate(prompt_ids, params, stream=True, cancel=cancel, ignore_eos=ignore_eos,
                                extra_stops=extra_stops):
            res.text += ev.text
            res.reasoning += ev.reasoning
            if ev.token_id is not None:
                res.token_ids.append(ev.token_id)
            if ev.finish_reason is not None:
                res.finish_reason = ev.finish_reason
                res.usage = ev.usage or res.usage
                res.timings = ev.timings or res.timings
        return res

    def generate(self, prompt_ids: Sequence[int], params: Any, stream: bool = True,
                 cancel: CancelToken = None, ignore_eos: bool = False,
                 extra_stops: Sequence[str] = (), constraint: Any = None) -> Iterator[GenerationEvent]:
        """Yields events as tokens are sampled (stream=True) or one final event holding everything.
        `extra_stops` add to params.stop (chat turn ends); `ignore_eos` also drops them.
        `constraint` (text.grammar.Constraint: mask(logits), accept(id)) limits every sampled token to
        a grammar; the generation ends at the end-of-generation id the finished grammar leaves.
        Validation happens before the first event, so a bad request raises ValueError at call time."""
        ids = [int(t) for t in prompt_ids]
        vocab = int(getattr(self.tokenizer, "n_vocab", 0) or 0)
        if vocab and any(t < 0 or t >= vocab for t in ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        max_tokens = self.check_budget(len(ids), getattr(params, "max_tokens", None))
        events = self._run(ids, params, max_tokens, cancel, ignore_eos,
                           [] if ignore_eos else list(extra_stops), constraint)
        return events if stream else self._collapse(events)

    # ---- internals
    @staticmethod
    def _collapse(events: Iterator[GenerationEvent]) -> Iterator[GenerationEvent]:
        text, reasoning = [], []
        for ev in events:
            text.append(ev.text)
            reasoning.append(ev.reasoning)
            if ev.finish_reason is not None:
                yield GenerationEvent("".join(text), "".join(reasoning), None,
                                      ev.finish_reason, ev.usage, ev.timings)

    def _run(self, ids: list[int], params: Any, max_tokens: int, cancel: CancelToken,
             ignore_eos: bool, extra_stops: list[str], constraint: Any = None) -> Iterator[GenerationEvent]:
        sampler = self._sampler_factory(params)
        decoder = self._decoder_factory(self.tokenizer)
        stops = getattr(params, "stop", None) or []
        matcher = StopMatcher(([stops] if isinstance(stops, str) else list(stops)) + extra_stops)
        eog = set() if ignore_eos and constraint is None else set(getattr(self.tokenizer, "eog_ids", ()) or ())
        if constraint is not None:
            matcher = StopMatcher([])  # a stop string must not cut a grammar's output short
        reasoning = self.think_open is not None and len(ids) > 0 and ids[-1] == self.think_open
        history = list(ids)
        tm = Timings(prefill_tokens=len(ids))
        n_out = 0
        finish = "length"
        hit_stop = False
        last_id: Optional[int] = None  # an end-of-generation id travels on the final event
        try:
            t0 = time.perf_counter()
            logits, reused = self._prefill(ids)
            tm.prefill_tokens = len(ids) - reused  # speed counts only tokens actually computed
            tok = self._sample(sampler, logits, history, len(ids), constraint)
            tm.prefill_s = time.perf_counter() - t0
            while True:
                n_out += 1
                history.append(tok)
                self.total_generated += 1
                if tok in eog:
                    finish, last_id = "stop", tok
                    break
                hit = False
                if tok in self.keep_special:
                    piece = decoder.flush()
                    if reasoning and tok == self.section_begin:  # calls end the reasoning
                        if piece:
                            yield GenerationEvent(reasoning=piece)
                        piece, reasoning = "", False
                    piece += self.keep_special[tok]
                    if reasoning:
                        yield GenerationEvent(reasoning=piece, token_id=tok)
                    else:
                        text, hit = matcher.push(piece)
                        yield GenerationEvent(text=text, token_id=tok)
                elif tok == self.think_open or tok == self.think_close:
                    # The markers switch channels and are not text; held content is released first.
                    held = "" if reasoning else matcher.flush()
                    reasoning = tok == self.think_open
                    yield GenerationEvent(text=held, token_id=tok)
                else:
                    piece = decoder.push(tok)
                    if reasoning:
                        yield GenerationEvent(reasoning=piece, token_id=tok)
                    else:
                        text, hit = matcher.push(piece)
                        yield GenerationEvent(text=text, token_id=tok)
                if hit:
                    finish, hit_stop = "stop", True
                    break
                if n_out >= max_tokens:
                    break
                if _is_cancelled(cancel):
                    finish = "cancelled"
                    break
                t1 = time.perf_counter()
                logits = self.engine.decode(tok)
                self._ctx.append(tok)
                t2 = time.perf_counter()
                tok = self._sample(sampler, logits, history, len(ids), constraint)
                tm.sample_s += time.perf_counter() - t2
                tm.decode_s += time.perf_counter() - t1
                tm.decode_tokens += 1
        except GeneratorExit:
            # The consumer went away (client disconnect): count it as a cancellation.
            self.total_cancelled += 1
            raise
        if finish == "cancelled":
            self.total_cancelled += 1
        tail = ""
        if not (finish == "stop" and hit_stop):
            rest = decoder.flush()
            if reasoning:
                tail = rest
            else:
                out, hit = matcher.push(rest)
                tail = out if hit else out + matcher.flush()
        self.last_timings = tm
        usage = Usage(prompt_tokens=len(ids), completion_tokens=n_out)
        if reasoning:
            yield GenerationEvent(reasoning=tail, token_id=last_id, finish_reason=finish, usage=usage,
                                  timings=tm)
        else:
            yield GenerationEvent(text=tail, token_id=last_id, finish_reason=finish, usage=usage,
                                  timings=tm)

    @staticmethod
    def _sample(sampler: Any, logits: Any, history: list[int], n_prompt: int, constraint: Any) -> int:
        if constraint is None:
            return int(sampler.sample(logits, history, n_prompt=n_prompt))
        tok = int(sampler.sample(constraint.mask(logits), history, n_prompt=n_prompt))
        constraint.accept(tok)
        return tok

    def _prefill(self, ids: list[int]) -> tuple[Any, int]:
        """Prefills what the KV cache lacks: everything, or the tail after a cached prefix. With an
        engine.truncate(n) the longest common prefix is kept, else only a whole cached context."""
        k = self._reusable(ids)
        if k > 0:
            self.reused_tokens += k
            self._ctx = []  # unknown until the prefill succeeds; a failure resets next time
            if k < self.engine.n_past:
                self.engine.truncate(k)
            logits = self.engine.prefill(ids[k:])
        else:
            self._ctx = []
            self.engine.reset()
            logits = self.engine.prefill(ids)
        self._ctx = list(ids)
        return logits, k

    def _reusable(self, ids: list[int]) -> int:
        ctx = self._ctx
        if not self.reuse_prefix or not ctx or self.engine.n_past != len(ctx):
            return 0
        limit = min(len(ctx), len(ids) - 1)  # at least one new token, for fresh logits
        k = 0
        while k < limit and ids[k] == ctx[k]:
            k += 1
        if k < len(ctx) and not hasattr(self.engine, "truncate"):
            return 0
        return k
