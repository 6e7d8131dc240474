"""The serving engine: model lifecycle (load, warm up, ready, close) around the scheduler."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import onnxruntime as ort

from .runners import graph_kind, make_runner
from .scheduler import Generation, Scheduler
from .text import ChatTokenizer, TextStream
from .types import EngineConfig, GenerationParams, PromptTooLongError

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_provider(requested: str | None) -> str:
    available = ort.get_available_providers()
    if requested is None:
        return CUDA if CUDA in available else CPU
    if requested not in available:
        raise ValueError(f"provider {requested} is not available here: {available}")
    return requested


def _session_options(threads: int | None, allow_spinning: bool = False) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    # Off by default: spinning workers steal the CPU from the HTTP threads and from any other
    # process on the same cores (measured: 36 vs 57 tok/s on a busy 2-core machine).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    return opts


class Engine:
    def __init__(self, config: EngineConfig, session, manifest: dict, tokenizer: ChatTokenizer, provider: str):
        self.config = config
        self.session = session
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.provider = provider
        model_context = int(manifest.get("context_length") or _config_context(config.model_dir))
        self.context_length = min(config.max_context or model_context, model_context)
        self.model_id = manifest.get("model") or Path(config.model_dir).parent.name
        self.variant = manifest.get("variant") or Path(config.model_dir).name
        self._runner = make_runner(session, config.max_batch, self.context_length, _kv_device(session, provider))
        self._scheduler = Scheduler(self._runner, tokenizer.eos_ids, self.context_length)
        self._ready = False

    @classmethod
    def load(cls, config: EngineConfig) -> "Engine":
        model_dir = Path(config.model_dir)
        manifest_path = model_dir / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        provider = choose_provider(config.provider)
        providers = [provider] if provider == CPU else [provider, CPU]
        options = _session_options(config.threads, config.allow_spinning)
        session = ort.InferenceSession(str(model_dir / "model.onnx"), sess_options=options, providers=providers)
        log.info("loaded %s (%s graph) on %s", model_dir, graph_kind(session), provider)
        return cls(config, session, manifest, ChatTokenizer(model_dir), provider)

    @property
    def ready(self) -> bool:
        return self._ready

    def info(self) -> dict:
        quality = self.manifest.get("quality", {})
        return {
            "model_id": self.model_id,
            "variant": self.variant,
            "provider": self.provider,
            "context_length": self.context_length,
            "agreement": quality.get("agreement"),
            "max_batch": self.config.max_batch,
        }

    def warmup(self) -> None:
        """One short generation, so the first real request does not pay for lazy initialisation."""
        gen = self.submit(self.encode_chat([{"role": "user", "content": "Hi"}]), GenerationParams(max_tokens=2))
        for _ in gen:
            pass
        self._ready = True

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.encode_chat(messages)

    def submit(self, prompt_ids: list[int], params: GenerationParams | None = None) -> Generation:
        params = params or GenerationParams()
        if not prompt_ids:
            raise ValueError("empty prompt")
        if len(prompt_ids) + 1 > self.context_length:
            raise PromptTooLongError(len(prompt_ids), self.context_length)
        gen = Generation(prompt_ids, params, TextStream(self.tokenizer.decode, params.stop))
        self._scheduler.submit(gen)
        return gen

    def close(self) -> None:
        self._ready = False
        self._scheduler.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _kv_device(session, provider: str) -> str:
    """Where the KV buffers live. On CUDA they stay on the device (IO binding, no copies) only
    for a float16 graph: onnxruntime's CUDA GroupQueryAttention has no float32 kernel, so with
    the fp32-activation int8 graph ORT runs attention on the CPU provider and the cache must be
    host memory for past/present to stay one shared buffer."""
    if provider != CUDA:
        return "cpu"
    past = next((i for i in session.get_inputs() if i.name.startswith("past_key_values.")), None)
    return "cuda" if past is not None and past.type == "tensor(float16)" else "cpu"


def _config_context(model_dir: str | os.PathLike) -> int:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return int(config.get("max_position_embeddings") or 2048)
