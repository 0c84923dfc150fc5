"""Byte-level BPE tokenizer built from a GGUF's `tokenizer.ggml.*` keys on top of `tokenizers`, plus
a streaming detokenizer that never splits a UTF-8 character across two emitted strings."""
from __future__ import annotations

import codecs
import operator
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from tokenizers import AddedToken, models
from tokenizers import Tokenizer as _HFTokenizer

from kimi_runtime.errors import ConfigError
from kimi_runtime.text.pretokenizers import build_pre_tokenizer

# llama.cpp token types (llama_token_type)
TT_UNDEFINED, TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = range(7)
_BPE_TYPES = {TT_UNDEFINED, TT_NORMAL, TT_UNKNOWN, TT_BYTE}

# Token texts that end a turn in the chat formats we know (llama.cpp's EOG list plus Kimi's).
EOG_TEXTS = frozenset({
    "<|im_end|>", "[EOS]", "[EOT]", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>",
    "<|endoftext|>", "<EOT>", "<｜end▁of▁sentence｜>", "<|end_of_text|>",
})


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by every byte-level BPE vocab."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def piece_to_bytes(piece: str) -> bytes:
    """A GPT-2-encoded vocab string back to its bytes; characters outside the map pass as UTF-8."""
    table = unicode_to_bytes()
    out = bytearray()
    for ch in piece:
        b = table.get(ch)
        if b is None:
            out += ch.encode("utf-8")
        else:
            out.append(b)
    return bytes(out)


def bytes_to_piece(data: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def _bpe_parts(ranks: Mapping[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's merge loop restricted to ranks below `max_rank`."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_i, best_r = -1, max_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_r:
                best_i, best_r = i, r
        if best_i < 0:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def merges_from_ranks(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Rebuild BPE merges from tiktoken-style ranks, as llama.cpp's converter does for Kimi: each
    multi-byte token is the merge of the two parts that rank-limited BPE leaves it in."""
    merges: list[tuple[int, bytes, bytes]] = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        parts = _bpe_parts(ranks, token, rank)
        if len(parts) == 2:
            merges.append((rank, parts[0], parts[1]))
    merges.sort()
    return [(a, b) for _, a, b in merges]


def _as_list(md: Mapping[str, Any], key: str) -> list[Any] | None:
    v = md.get(key)
    if v is None:
        return None
    if isinstance(v, (str, bytes)) or not isinstance(v, Iterable):
        raise ConfigError(f"{key}: expected an array, got {type(v).__name__}")
    return list(v)


def _opt_id(md: Mapping[str, Any], key: str, n_vocab: int) -> int | None:
    v = md.get(key)
    if v is None:
        return None
    try:
        i = int(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected an integer token id, got {v!r}") from None
    if not 0 <= i < n_vocab:
        raise ConfigError(f"{key} = {i} is outside the vocabulary (0..{n_vocab - 1})")
    return i


class Tokenizer:
    """GGUF byte-level BPE: `tokenizers` does pre-tokenization, BPE and special-token matching;
    decoding maps ids to raw bytes so callers can stream them safely."""

    def __init__(self, tokens: Sequence[str], token_types: Sequence[int] | None = None,
                 merges: Sequence[tuple[str, str]] | None = None, *, pre: str | None = "default",
                 bos_id: int | None = None, eos_id: int | None = None,
                 extra_eog_ids: Iterable[int] = (), add_bos: bool = False) -> None:
        if not tokens:
            raise ConfigError("tokenizer.ggml.tokens is empty")
        self._tokens = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in tokens]
        n = len(self._tokens)
        types = [TT_NORMAL] * n if token_types is None else [int(t) for t in token_types]
        if len(types) != n:
            raise ConfigError(f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
        self._types = types
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, add_bos
        self._id_of: dict[str, int] = {}
        for i, t in enumerate(self._tokens):
            self._id_of.setdefault(t, i)

        vocab: dict[str, int] = {}
        for i, (t, ty) in enumerate(zip(self._tokens, types)):
            if ty in _BPE_TYPES or ty in (TT_CONTROL, TT_USER_DEFINED):
                vocab.setdefault(t, i)
        if merges is None:
            ranks = {piece_to_bytes(t): i for t, i in vocab.items() if types[i] in _BPE_TYPES}
            merges = [(bytes_to_piece(a), bytes_to_piece(b)) for a, b in merges_from_ranks(ranks)]
        merges = [m for m in merges if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
        user = [t for t, ty in zip(self._tokens, types) if ty == TT_USER_DEFINED and t]
        ctrl = [t for t, ty in zip(self._tokens, types) if ty == TT_CONTROL and t]
        # User-defined tokens are matched even when specials are not parsed (llama.cpp does the
        # same); control tokens only on request, so user text cannot forge a turn marker. The
        # plain tokenizer is built on first use: most callers only encode rendered prompts.
        self._parts = (vocab, merges, pre, user)
        self._hf_special = self._build(user + ctrl)
        self._hf_plain_cache: _HFTokenizer | None = None
        self.eog_ids: set[int] = {i for i in (eos_id, *extra_eog_ids) if i is not None}
        self.eog_ids |= {i for i, t in enumerate(self._tokens) if t in EOG_TEXTS}
        self._bytes_cache: dict[int, bytes] = {}

    def _build(self, matched_whole: list[str]) -> _HFTokenizer:
        vocab, merges, pre, _ = self._parts
        hf = _HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
        hf.pre_tokenizer = build_pre_tokenizer(pre)
        if matched_whole:
            hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in matched_whole])
        return hf

    @property
    def _hf_plain(self) -> _HFTokenizer:
        if self._hf_plain_cache is None:
            self._hf_plain_cache = self._build(self._parts[3])
        return self._hf_plain_cache

    @classmethod
    def from_gguf_metadata(cls, md: Mapping[str, Any]) -> "Tokenizer":
        """Build from a dict of GGUF keys (`tokenizer.ggml.model` must be "gpt2")."""
        model = md.get("tokenizer.ggml.model", "gpt2")
        if model != "gpt2":
            raise ConfigError(f"tokenizer.ggml.model = {model!r}: only byte-level BPE ('gpt2') is supported")
        tokens = _as_list(md, "tokenizer.ggml.tokens")
        if tokens is None:
            raise ConfigError("tokenizer.ggml.tokens is missing")
        types = _as_list(md, "tokenizer.ggml.token_type")
        raw_merges = _as_list(md, "tokenizer.ggml.merges")
        merges = None
        if raw_merges is not None:
            merges = []
            for m in raw_merges:
                m = m.decode("utf-8") if isinstance(m, bytes) else str(m)
                k = m.find(" ", 1)
                if k < 0:
                    raise ConfigError(f"tokenizer.ggml.merges: entry {m!r} has no separating space")
                merges.append((m[:k], m[k + 1:]))
        n = len(tokens)
        extra = [_opt_id(md, f"tokenizer.ggml.{k}_token_id", n) for k in ("eot", "eom")]
        return cls(tokens, types, merges, pre=md.get("tokenizer.ggml.pre", "default"),
                   bos_id=_opt_id(md, "tokenizer.ggml.bos_token_id", n),
                   eos_id=_opt_id(md, "tokenizer.ggml.eos_token_id", n),
                   extra_eog_ids=[e for e in extra if e is not None],
                   add_bos=bool(md.get("tokenizer.ggml.add_bos_token", False)))

    @property
    def n_vocab(self) -> int:
        return len(self._tokens)

    def encode(self, text: str, *, add_bos: bool = False, parse_special: bool = True) -> list[int]:
        """Token ids of `text`; with parse_special, control tokens written in the text map to their ids."""
        if not isinstance(text, str):
            raise TypeError(f"encode() expects str, got {type(text).__name__}")
        hf = self._hf_special if parse_special else self._hf_plain
        ids = hf.encode(text, add_special_tokens=False).ids if text else []
        if add_bos:
            if self.bos_id is None:
                raise ValueError("add_bos=True but the vocabulary has no BOS token")
            ids.insert(0, self.bos_id)
        return ids

    def _check(self, token_id: Any) -> int:
        try:
            i = operator.index(token_id)  # ints, numpy ints; not floats or bools-as-text
        except TypeError:
            raise ValueError(f"token id {token_id!r} is not an integer") from None
        if not 0 <= i < len(self._tokens):
            raise ValueError(f"token id {i} is outside the vocabulary (0..{len(self._tokens) - 1})")
        return i

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes a token stands for; control/user-defined tokens give their text."""
        i = self._check(token_id)
        b = self._bytes_cache.get(i)
        if b is None:
            t = self._tokens[i]
            b = piece_to_bytes(t) if self._types[i] in _BPE_TYPES else t.encode("utf-8")
            self._bytes_cache[i] = b
        return b

    def is_special(self, token_id: int) -> bool:
        """True for control and unused tokens (the ones `skip_special` drops)."""
        return self._types[self._check(token_id)] in (TT_CONTROL, TT_UNUSED)

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of `ids`; invalid UTF-8 becomes U+FFFD."""
        ids = list(ids)
        if skip_special:
            ids = [i for i in ids if not self.is_special(i)]
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def token_to_id(self, text: str) -> int | None:
        """Id of a vocabulary entry given as stored (e.g. "<|im_end|>") or as plain text."""
        i = self._id_of.get(text)
        if i is None:
            i = self._id_of.get(bytes_to_piece(text.encode("utf-8")))
        return i

    def id_to_piece(self, token_id: int) -> str:
        """The token's bytes decoded as UTF-8 (U+FFFD where a character is split across tokens)."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def token_type(self, token_id: int) -> int:
        return self._types[self._check(token_id)]


class StreamDecoder:
    """Turns a token stream into text pieces, holding back bytes of a character not yet complete."""

    def __init__(self, tok: Tokenizer, *, skip_special: bool = False) -> None:
        self._tok = tok
        self._skip = skip_special
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Text completed by this token (possibly empty)."""
        data = self._tok.token_bytes(token_id)
        if self._skip and self._tok.is_special(token_id):
            return ""
        return self._dec.decode(data, final=False)

    def flush(self) -> str:
        """Whatever is held back (as U+FFFD if it never completed); the decoder is reset."""
        out = self._dec.decode(b"", final=True)
        self._dec.reset()
        return out
