"""The DeepSeek-V3 / Kimi K2 model in torch (CPU float32 activations, weights as GGUF bytes)."""
from kimi_runtime.model.attention import KVCache, MLAttention
from kimi_runtime.model.deepseek import DeepseekV3
from kimi_runtime.model.linear import QLinear
from kimi_runtime.model.moe import DirectExpertProvider, ExpertProvider, Router
from kimi_runtime.model.weights import GGUFSource, HFSource, WeightSource, open_source

__all__ = ["DeepseekV3", "DirectExpertProvider", "ExpertProvider", "GGUFSource", "HFSource", "KVCache",
           "MLAttention", "QLinear", "Router", "WeightSource", "open_source"]
