"""Public value types of the engine."""
from __future__ import annotations

from dataclasses import dataclass, field


class PromptTooLongError(ValueError):
    """The prompt leaves no room for one generated token within the context."""

    def __init__(self, prompt_tokens: int, context_length: int):
        super().__init__(
            f"prompt has {prompt_tokens} tokens; the context holds {context_length} "
            f"(prompt + 1 generated token must fit)"
        )
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


class EngineClosedError(RuntimeError):
    """The engine was closed (or its scheduler died) before the request finished."""


@dataclass(frozen=True)
class EngineConfig:
    model_dir: str
    provider: str | None = None  # None: CUDA when onnxruntime sees a GPU, else CPU
    threads: int | None = None  # intra-op threads; None: onnxruntime's default
    max_batch: int = 8
    max_context: int | None = None  # None: the model's context length
    # ORT worker threads spin between operators instead of sleeping: ~10% faster decode when the
    # cores are the engine's own, much slower when other processes compete for them.
    allow_spinning: bool = False


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop sequences must be non-empty strings")


@dataclass(frozen=True)
class TokenEvent:
    """One generated token. `text` is the newly releasable text (may be empty while a
    multi-byte character or a possible stop sequence is still incomplete).

    A request that ends on max_tokens may close with one text-only event (`token_id` -1)
    carrying text that was held back because it could have begun a stop sequence."""

    text: str
    token_id: int
