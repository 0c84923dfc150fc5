"""GGUF files: a strict mmap reader (single and split), llama.cpp's deepseek2 tensor names, the expert
index, and a streaming writer used by the synthetic models and the tests."""
from kimi_runtime.errors import GGUFError
from kimi_runtime.gguf.experts import ExpertIndex, ExpertSlice
from kimi_runtime.gguf.format import QType, qtype_of
from kimi_runtime.gguf.reader import GGUFModel, TensorInfo, open_gguf

__all__ = ["open_gguf", "GGUFModel", "TensorInfo", "ExpertIndex", "ExpertSlice", "GGUFError", "QType", "qtype_of"]
