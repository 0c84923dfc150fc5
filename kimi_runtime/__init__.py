"""kimi-runtime: DeepSeek-V3-class MoE models (Kimi K2, DeepSeek V3/R1) from low-bit GGUF files."""
__version__ = "0.1.0"
