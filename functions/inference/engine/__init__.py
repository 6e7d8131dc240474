"""Serving engine over ONNX Runtime: continuous batching on one scheduler thread.

Imports only onnxruntime, numpy, tokenizers, jinja2 and the standard library (never torch or
transformers), so the serving image stays small and cold starts stay short.
"""
from .engine import Engine
from .scheduler import Generation
from .types import EngineClosedError, EngineConfig, GenerationParams, PromptTooLongError, TokenEvent

__all__ = [
    "Engine",
    "EngineClosedError",
    "EngineConfig",
    "Generation",
    "GenerationParams",
    "PromptTooLongError",
    "TokenEvent",
]
