"""Token sampling in llama.cpp's default order: logit bias, penalties, top-k, top-p, min-p,
temperature, draw. Runs on the logits' device; the only host sync is the final token id."""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

_TOP_P_PROBE = 4096

PRESETS: dict[str, dict[str, Any]] = {
    # Kimi K2's recommended settings (model card): 0.6 for instant replies, 1.0 for thinking.
    "instant": {"temperature": 0.6, "min_p": 0.01},
    "thinking": {"temperature": 1.0, "min_p": 0.01},
    "greedy": {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0},
}


@dataclass
class SamplingParams:
    """How to pick the next token. temperature <= 0 means greedy (argmax, no randomness).

    Repetition penalty looks at the last `penalty_last_n` ids of the history (prompt included,
    -1 = all); presence/frequency penalties count only generated ids (see `Sampler.sample`)."""

    temperature: float = 0.6
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.01
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[int, float] | None = None
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    penalty_last_n: int = 64

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"SamplingParams: {msg}")

        def num(name: str) -> float:
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool), f"{name} must be a number, got {v!r}")
            need(v == v and abs(v) != float("inf"), f"{name} must be finite, got {v!r}")
            return float(v)

        def whole(name: str) -> int:
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool), f"{name} must be an integer, got {v!r}")
            return v

        need(num("temperature") >= 0.0, "temperature must be >= 0")
        need(whole("top_k") >= 0, "top_k must be >= 0 (0 = off)")
        need(0.0 < num("top_p") <= 1.0, "top_p must be in (0, 1]")
        need(0.0 <= num("min_p") <= 1.0, "min_p must be in [0, 1]")
        need(num("repetition_penalty") > 0.0, "repetition_penalty must be > 0 (1 = off)")
        num("presence_penalty")
        num("frequency_penalty")
        need(whole("max_tokens") >= 0, "max_tokens must be >= 0")
        need(whole("penalty_last_n") >= -1, "penalty_last_n must be >= -1 (-1 = whole history)")
        need(self.seed is None or (isinstance(self.seed, int) and not isinstance(self.seed, bool)),
             f"seed must be an integer or None, got {self.seed!r}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        need(isinstance(self.stop, (list, tuple)) and all(isinstance(s, str) and s for s in self.stop),
             "stop must be a list of non-empty strings")
        self.stop = list(self.stop)
        if self.logit_bias is not None:
            need(isinstance(self.logit_bias, dict), "logit_bias must be a dict {token_id: bias}")
            bias: dict[int, float] = {}
            for k, v in self.logit_bias.items():
                try:
                    tid = int(k)  # JSON object keys arrive as strings
                except (TypeError, ValueError):
                    raise ValueError(f"SamplingParams: logit_bias key {k!r} is not a token id") from None
                need(tid >= 0, f"logit_bias key {k!r} is negative")
                need(isinstance(v, (int, float)) and not isinstance(v, bool) and v == v,
                     f"logit_bias[{k!r}] must be a number")
                bias[tid] = float(v)
            self.logit_bias = bias

    @property
    def is_greedy(self) -> bool:
        return self.temperature <= 0.0

    @classmethod
    def greedy(cls, **overrides: Any) -> "SamplingParams":
        """Argmax decoding (penalties and bias still apply)."""
        return cls.from_preset("greedy", **overrides)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "SamplingParams":
        """A preset from PRESETS ("instant", "thinking", "greedy") with fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown sampling preset {name!r} (known: {', '.join(PRESETS)})")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
        return cls(**{**PRESETS[name], **overrides})


class Sampler:
    """Stateful sampler: owns the random generator, so one seed gives one token sequence."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self._gen: torch.Generator | None = None
        self._bias: tuple[torch.Tensor, torch.Tensor] | None = None

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device)
            self._gen.manual_seed(self._seed)
        return self._gen

    def sample(self, logits: torch.Tensor, history: list[int] | None = None, *, n_prompt: int = 0) -> int:
        """Next token id from `logits` [vocab]. `history` is prompt + generated ids; the first
        `n_prompt` of them are the prompt, excluded from presence/frequency penalties."""
        if not isinstance(logits, torch.Tensor) or logits.dim() != 1 or logits.numel() == 0:
            raise ValueError("logits must be a non-empty 1-D tensor [vocab]")
        x = self.process(logits, history or [], n_prompt=n_prompt)
        if self.params.is_greedy:
            return int(torch.argmax(x))
        # inverse-CDF draw: one uniform number; torch.multinomial is ~10x slower on a 160k CPU vocab
        cdf = torch.cumsum(torch.softmax(x / self.params.temperature, dim=-1), dim=-1)
        u = torch.rand(1, generator=self._generator(x.device), device=x.device) * cdf[-1]
        return int(torch.searchsorted(cdf, u, right=True).clamp_(max=x.numel() - 1))

    def process(self, logits: torch.Tensor, history: list[int], *, n_prompt: int = 0) -> torch.Tensor:
        """Logits after bias, penalties and top-k/top-p/min-p (filtered entries are -inf),
        before temperature. Exposed so tests can check each filter."""
        p = self.params
        x = logits.detach().to(torch.float32).clone()
        vocab, dev = x.numel(), x.device
        if p.logit_bias:
            if self._bias is None or self._bias[0].device != dev:
                ids = torch.tensor(list(p.logit_bias), dtype=torch.long)
                vals = torch.tensor(list(p.logit_bias.values()), dtype=torch.float32)
                self._bias = (ids.to(dev), vals.to(dev))
            if max(p.logit_bias) >= vocab:
                raise ValueError(f"logit_bias token id {max(p.logit_bias)} is outside the vocabulary ({vocab})")
            x.index_add_(0, *self._bias)
        if history and (p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty):
            if min(history) < 0 or max(history) >= vocab:
                raise ValueError("history holds a token id outside the vocabulary")
            if p.repetition_penalty != 1.0:
                n = p.penalty_last_n
                recent = history if n < 0 else history[-n:] if n else []
                if recent:
                    # de-duplicate on the host: torch.unique on a GPU would sync
                    seen = torch.tensor(sorted(set(recent)), dtype=torch.long).to(dev)
                    s = x[seen]
                    x[seen] = torch.where(s > 0, s / p.repetition_penalty, s * p.repetition_penalty)
            gen = history[max(0, n_prompt):]
            if gen and (p.presence_penalty or p.frequency_penalty):
                c = Counter(gen)
                ids = torch.tensor(list(c), dtype=torch.long).to(dev)
                counts = torch.tensor(list(c.values()), dtype=torch.float32).to(dev)
                x.index_add_(0, ids, -(counts * p.frequency_penalty + p.presence_penalty))
        if p.is_greedy:
            return x
        if 0 < p.top_k < vocab:
            vals, idx = torch.topk(x, p.top_k)
            x = torch.full_like(x, float("-inf")).scatter_(0, idx, vals)
        if p.top_p < 1.0:
            probs = torch.softmax(x, dim=-1)
            sp = si = None
            if dev.type == "cpu" and vocab > _TOP_P_PROBE:
                # a full CPU sort of 160k costs ~50 ms; the nucleus almost always sits in the top few
                # thousand, and tokens past a prefix that reaches top_p are dropped anyway
                sp, si = torch.topk(probs, _TOP_P_PROBE)
                if float(sp.sum()) < p.top_p:
                    sp = si = None
            if sp is None:
                sp, si = torch.sort(probs, descending=True)
            # drop a token once the mass before it already reaches top_p; the first always stays
            drop = (torch.cumsum(sp, dim=-1) - sp) >= p.top_p
            keep = torch.zeros(vocab, dtype=torch.bool, device=dev).scatter_(0, si, ~drop)
            x.masked_fill_(~keep, float("-inf"))
        if p.min_p > 0.0:
            probs = torch.softmax(x, dim=-1)
            x.masked_fill_(probs < p.min_p * probs.max(), float("-inf"))
        return x
