"""Text in and out: GGUF tokenizer, chat templates, sampling."""
from kimi_runtime.text.chat import ChatTemplate, ReasoningSplitter, parse_tool_calls, split_reasoning
from kimi_runtime.text.sampling import PRESETS, Sampler, SamplingParams
from kimi_runtime.text.tokenizer import StreamDecoder, Tokenizer

__all__ = ["Tokenizer", "StreamDecoder", "ChatTemplate", "ReasoningSplitter", "split_reasoning",
           "parse_tool_calls", "SamplingParams", "Sampler", "PRESETS"]
