"""OpenAI-compatible HTTP serving of one engine: `create_app(generator, model_name, ...)` builds the
FastAPI app; `kimi-runtime serve` runs it under uvicorn."""
from kimi_runtime.server.app import create_app

__all__ = ["create_app"]
