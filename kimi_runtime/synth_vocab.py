"""A small deterministic byte-level BPE vocabulary for synthetic models, trained with `tokenizers` on a
built-in multilingual snippet (plus seeded pseudo-words when a large vocabulary is asked for), with
Kimi's special tokens, emitted as the GGUF `tokenizer.*` keys llama.cpp reads for a `gpt2` / `kimi-k2`
vocabulary."""
from __future__ import annotations

import random
from functools import lru_cache
from typing import Any

import numpy as np

# Kimi's pre-tokenizer regex (tokenization_kimi.py `pat_str`; llama.cpp pre "kimi-k2").
KIMI_PAT = "|".join([
    r"[\p{Han}]+",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
])

# In Kimi's order; they take the last ids of the vocabulary, [BOS] first.
SPECIAL_TOKENS = ["[BOS]", "[EOS]", "<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|im_system|>",
                  "<|im_middle|>", "<think>", "</think>"]
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3

SNIPPET = """\
The quick brown fox jumps over the lazy dog. Hello, world! This is a small model that generates text.
Mixture-of-experts models route every token to a few experts; the others stay idle in memory.
Der schnelle braune Fuchs springt über den faulen Hund. Grüße aus München, Köln und Zürich.
Le renard brun rapide saute par-dessus le chien paresseux. Ça va très bien, merci beaucoup !
El veloz murciélago hindú comía feliz cardillo y kiwi. ¿Dónde está la biblioteca? ¡Olé!
Быстрая коричневая лиса прыгает через ленивую собаку. Привет, как дела? Всё хорошо, спасибо.
Съешь же ещё этих мягких французских булок, да выпей чаю.
我们正在测试一个混合专家模型。今天天气很好，我们去公园散步吧。人工智能正在改变世界。
日本語のテキストも少し含めます。こんにちは、世界！東京は大きな都市です。
한국어 문장도 조금 있습니다. 안녕하세요, 만나서 반갑습니다.
Emoji: 😀 🚀 🎉 ❤️ 👍 🌍 🔥 ✨ 🤖 🐍 — and symbols: © ® ™ € £ ¥ § ¶ ± × ÷ → ← ∞ ≈ ≠.
Numbers: 0 1 2 3 42 100 2024 3.14159 1,000,000 -17 +8 1e-6 0x1F 255.
def fibonacci(n: int) -> int:
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)

for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }
{"role": "user", "content": "What is the capital of France?"} => "Paris"
<html><body><p class="note">Hello &amp; welcome</p></body></html>
SELECT name, count(*) FROM experts WHERE layer = 3 GROUP BY name ORDER BY 2 DESC;
"""

_SYLLABLES = {
    "latin": ["ka", "to", "ri", "mu", "sen", "dor", "lia", "qu", "ex", "pra", "th", "ing", "er", "on", "st",
              "an", "ve", "el", "ous", "ment", "tion", "gr", "bl", "ch", "sh", "ö", "ü", "é", "ç", "ñ"],
    "cyrillic": ["ка", "то", "ри", "му", "сен", "дор", "ля", "пре", "ство", "ние", "ов", "ый", "ая", "жи", "щу"],
    "greek": ["κα", "το", "ρι", "μυ", "λο", "γος", "θε", "ση", "ων", "αι"],
    "cjk": list("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么"),
    "kana": list("あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん"),
    "hangul": ["가", "나", "다", "라", "마", "바", "사", "아", "자", "하", "는", "을", "이", "에", "서"],
}


def _corpus(n_words: int) -> list[str]:
    """The snippet plus `n_words` seeded pseudo-words (so large vocabularies have enough merges)."""
    rng = random.Random(20240617)
    lines = [SNIPPET] * 4
    scripts = list(_SYLLABLES)
    words = []
    for i in range(n_words):
        syl = _SYLLABLES[scripts[i % len(scripts)]]
        w = "".join(rng.choice(syl) for _ in range(rng.randint(2, 5)))
        if rng.random() < 0.3:
            w = w.capitalize()
        words.append(w)
        if len(words) == 12:
            lines.append(" ".join(words) + ("." if rng.random() < 0.5 else ",") + "\n")
            words = []
    lines.append(" ".join(words))
    return lines


@lru_cache(maxsize=8)
def _train(n_regular: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(KIMI_PAT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=n_regular, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # about one new pseudo-word per wanted merge beyond what the snippet yields (32000: ~2 s)
    tok.train_from_iterator(_corpus(max(0, n_regular - 700)), trainer)
    import json

    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    merges = tuple(m if isinstance(m, str) else " ".join(m) for m in model["merges"])
    return tuple(t for t, _ in vocab), merges


def build_synthetic_vocab(vocab_size: int) -> dict[str, Any]:
    """The `tokenizer.*` GGUF keys of a byte-level BPE vocabulary of exactly `vocab_size` tokens:
    trained tokens first, `<|reserved_token_i|>` fillers if training ran out of merges, then the
    special tokens as the last ids (Kimi's layout). Deterministic."""
    n_special = len(SPECIAL_TOKENS)
    if vocab_size < 256 + n_special:
        raise ValueError(f"vocab_size {vocab_size} is too small for 256 byte tokens + {n_special} specials")
    regular, merges = _train(vocab_size - n_special)
    tokens = list(regular)
    types = [TOKEN_NORMAL] * len(tokens)
    n_fill = vocab_size - n_special - len(tokens)
    tokens += [f"<|reserved_token_{i}|>" for i in range(n_fill)]
    types += [TOKEN_CONTROL] * n_fill
    first_special = len(tokens)
    tokens += SPECIAL_TOKENS
    types += [TOKEN_CONTROL] * n_special
    assert len(tokens) == vocab_size
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "kimi-k2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.asarray(types, dtype=np.int32),
        "tokenizer.ggml.merges": list(merges),
        "tokenizer.ggml.bos_token_id": first_special + SPECIAL_TOKENS.index("[BOS]"),
        "tokenizer.ggml.eos_token_id": first_special + SPECIAL_TOKENS.index("[EOS]"),
        "tokenizer.ggml.add_bos_token": False,
    }


def special_token_ids(vocab_size: int) -> dict[str, int]:
    first = vocab_size - len(SPECIAL_TOKENS)
    return {t: first + i for i, t in enumerate(SPECIAL_TOKENS)}


def hf_tokenizer_files(vocab_keys: dict[str, Any]) -> dict[str, str]:
    """tokenizer.json + tokenizer_config.json for a Hugging Face copy of the same vocabulary."""
    import json

    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    tokens = vocab_keys["tokenizer.ggml.tokens"]
    types = np.asarray(vocab_keys["tokenizer.ggml.token_type"])
    merges = [tuple(m.split(" ", 1)) for m in vocab_keys["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(KIMI_PAT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == TOKEN_CONTROL])
    bos = tokens[int(vocab_keys["tokenizer.ggml.bos_token_id"])]
    eos = tokens[int(vocab_keys["tokenizer.ggml.eos_token_id"])]
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
           "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
           "model_max_length": 1 << 20}
    return {"tokenizer.json": tok.to_str(), "tokenizer_config.json": json.dumps(cfg, indent=2) + "\n"}
