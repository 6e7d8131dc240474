"""The inference function's settings, read once per process from ``INFERENCE_*`` variables.

A malformed value fails the boot (``ConfigError``), never the first request.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from shared.config import ConfigError, env_int, env_str
from shared.modelops.artefacts import DEFAULT_MODEL


DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class InferenceSettings:
    model: str  # the published model's name, also the id clients put in "model"
    variant: str  # "auto": fp16 on CUDA, int8 on CPU (lifecycle.resolve_variant)
    model_dir: Path | None  # a local folder that overrides fetching from the artefact store
    provider: str | None  # an ONNX Runtime execution provider; None lets the engine choose
    threads: int | None
    max_batch: int
    max_context: int | None
    default_max_tokens: int  # when a request names none (OpenAI: "up to the context")
    token_channel_ttl: float  # seconds a worker's token channel outlives its last entry
    event_source: str  # the CloudEvents source of the results the worker publishes
    api_auth: str | None  # "user": /v1/* needs a platform access token (the SDK's api_key); None: open
    # Sent as the system message when a request has none; None leaves it to the model's chat
    # template (SmolLM2's own default). The served int8 variant answers the bare "What is the
    # capital of France?" wrongly under the template's default, where fp32 itself is nearly tied.
    default_system_prompt: str | None = None


def _optional_int(name: str, environ: Mapping[str, str] | None) -> int | None:
    value = env_int(name, None, environ=environ)
    if value is not None and value <= 0:
        raise ConfigError(f"environment variable {name} must be positive, got {value}")
    return value


def settings_from_env(environ: Mapping[str, str] | None = None) -> InferenceSettings:
    model_dir = env_str("INFERENCE_MODEL_DIR", None, environ=environ)
    max_batch = env_int("INFERENCE_MAX_BATCH", 8, environ=environ)
    default_max_tokens = env_int("INFERENCE_DEFAULT_MAX_TOKENS", 512, environ=environ)
    api_auth = env_str("INFERENCE_AUTH", "none", environ=environ).lower()
    if api_auth not in ("none", "user"):
        raise ConfigError(f"INFERENCE_AUTH must be none or user, got {api_auth!r}")
    if max_batch <= 0 or default_max_tokens <= 0:
        raise ConfigError("INFERENCE_MAX_BATCH and INFERENCE_DEFAULT_MAX_TOKENS must be positive")
    return InferenceSettings(
        model=env_str("INFERENCE_MODEL", DEFAULT_MODEL, environ=environ),
        variant=env_str("INFERENCE_VARIANT", "auto", environ=environ),
        model_dir=Path(model_dir) if model_dir else None,
        provider=env_str("INFERENCE_PROVIDER", None, environ=environ),
        threads=_optional_int("INFERENCE_THREADS", environ),
        max_batch=max_batch,
        max_context=_optional_int("INFERENCE_MAX_CONTEXT", environ),
        default_max_tokens=default_max_tokens,
        token_channel_ttl=float(env_int("INFERENCE_TOKEN_TTL_SECONDS", 600, environ=environ)),
        event_source=env_str("EVENT_SOURCE", "/functions/inference-worker", environ=environ),
        api_auth=None if api_auth == "none" else api_auth,
        # Set but empty: no default (the chat template's own applies).
        default_system_prompt=(os.environ if environ is None else environ).get(
            "INFERENCE_DEFAULT_SYSTEM_PROMPT", DEFAULT_SYSTEM_PROMPT) or None,
    )
