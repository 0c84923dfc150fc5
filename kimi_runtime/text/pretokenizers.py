"""Pre-tokenizer regexes per GGUF `tokenizer.ggml.pre`, as `tokenizers` pre-tokenizers.

Each entry is a list of regexes applied in sequence, every piece (match or gap) kept, as llama.cpp's
`unicode_regex_split` and HF's `Split(..., "isolated")` do; byte-level mapping follows the split."""
from __future__ import annotations

from tokenizers import Regex, pre_tokenizers

from kimi_runtime.errors import ConfigError

# tiktoken pat_str of tokenization_kimi.py; `&&` is class intersection, which Oniguruma (the regex
# engine behind `tokenizers`) supports natively, as does the `regex` module under (?V1).
KIMI_K2 = (
    r"[\p{Han}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"

# llama.cpp llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_DEEPSEEK3_LLM (three passes).
DEEPSEEK_V3 = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
]

# llama.cpp's fallback for BPE vocabs whose `.pre` is "default" (four passes).
LLAMA_DEFAULT = [
    r"[\p{P}\$\+<=>\^~\|]+",
    GPT2,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
]

PATTERNS: dict[str, list[str]] = {
    "kimi-k2": [KIMI_K2],
    "deepseek-v3": DEEPSEEK_V3,
    "default": LLAMA_DEFAULT,
    "gpt2": [GPT2],
    "gpt-2": [GPT2],
}


def patterns_for(pre: str | None) -> list[str]:
    """The regex passes for a `tokenizer.ggml.pre` value (None means llama.cpp's "default")."""
    name = "default" if pre is None else str(pre)
    try:
        return PATTERNS[name]
    except KeyError:
        raise ConfigError(
            f"tokenizer.ggml.pre = {name!r} is not supported (supported: {', '.join(sorted(PATTERNS))})"
        ) from None


def build_pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    """Regex passes then the GPT-2 byte-to-unicode mapping (with no regex of its own)."""
    steps: list[pre_tokenizers.PreTokenizer] = [
        pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in patterns_for(pre)
    ]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return pre_tokenizers.Sequence(steps)
