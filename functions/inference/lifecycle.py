"""The model's lifecycle, kept apart from any protocol: fetch, load and warm up once per process.

Loading runs in a background thread so the server answers ``/_/health`` at once; ``/_/ready``
and every route that needs the engine follow :attr:`ModelLifecycle.state`.

Why loading does not start at import: functions-framework imports the function in gunicorn's
master and then forks the worker that serves. Threads do not survive ``fork()``, a CUDA context
created before it is unusable after it, and a model loaded in the master would be a second copy
in memory. So loading starts in the serving process: right after the fork (``os.register_at_fork``)
under a pre-fork server, else at the first request (the platform's readiness probe) or on an
explicit :meth:`ModelLifecycle.start`.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from shared.errors import UnavailableError
from shared.modelops import artefacts

from functions.inference import metrics
from functions.inference.settings import InferenceSettings, settings_from_env

log = logging.getLogger("functions.inference.lifecycle")

MAX_RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class LoadedModel:
    """An engine that answers requests, and what clients are told about it."""

    engine: Any  # functions.inference.engine.Engine
    model_id: str
    variant: str
    provider: str
    context_length: int
    created: int  # when the variant was published (epoch seconds), for /v1/models
    load_seconds: float
    aliases: frozenset[str] = field(default_factory=frozenset)

    def serves(self, name: str) -> bool:
        return name == self.model_id or name in self.aliases


GPU_VARIANT, CPU_VARIANT = "fp16", "int8"


def resolve_variant(variant: str, provider: str | None) -> str:
    """``auto``: the float16 graph where CUDA will run it (onnxruntime's CUDA attention has no
    float32 kernel), else the 8-bit one, which is the fastest on CPUs. Any other name is kept."""
    if variant != "auto":
        return variant
    if provider is None:
        import onnxruntime

        provider = "CUDAExecutionProvider" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else None
    return GPU_VARIANT if provider == "CUDAExecutionProvider" else CPU_VARIANT


def resolve_model_dir(settings: InferenceSettings) -> Path:
    """An explicit ``INFERENCE_MODEL_DIR``, else the verified local copy from the artefact store."""
    if settings.model_dir is not None:
        return settings.model_dir
    variant = resolve_variant(settings.variant, settings.provider)
    return artefacts.model_dir_from_env({**os.environ, "INFERENCE_MODEL": settings.model, "INFERENCE_VARIANT": variant})


def _manifest(model_dir: Path) -> dict:
    try:
        return artefacts.read_manifest(model_dir)
    except artefacts.ArtefactError:
        return {}  # a hand-made folder without a manifest still serves


def _published_at(manifest: dict, model_dir: Path) -> int:
    for key in ("created", "created_at", "exported_at"):
        value = manifest.get(key)
        if isinstance(value, (int, float)):
            return int(value)
        if isinstance(value, str):
            try:
                return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
            except ValueError:
                pass
    return int(model_dir.stat().st_mtime)


def load_model(settings: InferenceSettings) -> LoadedModel:
    """Fetch, load and warm up the engine (blocking; seconds to minutes)."""
    from functions.inference.engine import Engine, EngineConfig  # heavy: onnxruntime

    started = time.perf_counter()
    model_dir = resolve_model_dir(settings)
    manifest = _manifest(model_dir)
    engine = Engine.load(
        EngineConfig(
            model_dir=model_dir,
            provider=settings.provider,
            threads=settings.threads,
            max_batch=settings.max_batch,
            max_context=settings.max_context,
        )
    )
    engine.warmup()
    # The manifest names the model; a hand-made folder is served under the configured name.
    model_id = str(manifest.get("model") or settings.model)
    return LoadedModel(
        engine=engine,
        model_id=model_id,
        variant=str(manifest.get("variant") or getattr(engine, "variant", None) or settings.variant),
        provider=str(engine.provider),
        context_length=int(engine.context_length),
        created=_published_at(manifest, model_dir),
        load_seconds=round(time.perf_counter() - started, 3),
        aliases=frozenset({settings.model} - {model_id}),
    )


class ModelLifecycle:
    """One model per process: ``loading`` → ``ready``; a failed load is retried with backoff."""

    def __init__(
        self,
        function_name: str,
        *,
        settings_factory: Callable[[], InferenceSettings] = settings_from_env,
        loader: Callable[[InferenceSettings], LoadedModel] = load_model,
    ) -> None:
        self.function_name = function_name
        self._settings_factory = settings_factory
        self._loader = loader
        self._lock = threading.Lock()
        self._pid: int | None = None  # the process whose loader thread is running
        self._model: LoadedModel | None = None
        self._last_error: str | None = None
        self._fork_hook_registered = False

    # -- starting ------------------------------------------------------------------------
    def start(self) -> None:
        """Start loading in this process unless it already has; cheap enough for every request."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._model = None
            self._last_error = None
            metrics.MODEL_READY.labels(self.function_name).set(0)
            threading.Thread(target=self._load_until_ready, name="model-loader", daemon=True).start()

    def start_after_fork(self) -> None:
        """Start loading in every child forked from now on (a pre-fork server's worker)."""
        if not self._fork_hook_registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork_in_child)
            self._fork_hook_registered = True

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # the parent's lock may have been held by a thread that is gone
        self._pid = None
        self.start()

    def _load_until_ready(self) -> None:
        pid = os.getpid()
        delay = 1.0
        while self._pid == pid:
            try:
                settings = self._settings_factory()
                model = self._loader(settings)
            except Exception as exc:  # keep the process up and retry: S3 may come back
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.exception("loading the model failed; retrying in %.0f s", delay)
                time.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
                continue
            self._model = model
            self._last_error = None
            metrics.MODEL_READY.labels(self.function_name).set(1)
            metrics.MODEL_LOAD_SECONDS.labels(self.function_name).set(model.load_seconds)
            log.info("model %s (%s) ready on %s in %.1f s", model.model_id, model.variant, model.provider, model.load_seconds)
            return

    # -- using ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._model is not None

    def model(self) -> LoadedModel:
        """The loaded model, or 503 with ``Retry-After`` while it is loading."""
        self.start()
        model = self._model
        if model is None:
            reason = f" (last attempt: {self._last_error})" if self._last_error else ""
            raise UnavailableError(
                f"the model is loading; retry shortly{reason}", code="model_not_ready", retry_after=2
            )
        return model

    def readiness(self) -> tuple[bool, dict]:
        """For ``/_/ready``: ready only after load + warm-up; shows what is being served."""
        self.start()
        model = self._model
        if model is None:
            details: dict[str, Any] = {"state": "loading"}
            if self._last_error:
                details["last_error"] = self._last_error
            return False, details
        return True, {
            "state": "ready",
            "model": model.model_id,
            "variant": model.variant,
            "provider": model.provider,
            "context_length": model.context_length,
            "load_seconds": model.load_seconds,
        }
