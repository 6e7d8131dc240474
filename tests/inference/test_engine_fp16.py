"""The float16 variant (what GPUs serve, see check_cuda.py): it passes the quality gate and the
engine runs it (here on the CPU) with the same answers."""
from __future__ import annotations

import json

import pytest

from tests.inference.conftest import FP16_DIR, ensure_default_artefacts


@pytest.fixture(scope="module")
def fp16_engine():
    from functions.inference.engine import Engine, EngineConfig

    ensure_default_artefacts()
    engine = Engine.load(EngineConfig(model_dir=str(FP16_DIR), threads=2, max_batch=2))
    engine.warmup()
    yield engine
    engine.close()


def test_the_fp16_variant_is_published_with_its_quality():
    manifest = json.loads((ensure_default_artefacts().parent / "fp16" / "manifest.json").read_text())
    assert manifest["variant"] == "fp16" and manifest["graph"] == "fused-gqa"
    assert manifest["quality"]["agreement"] >= 0.95


def test_the_fp16_variant_answers_the_capital_of_france(fp16_engine):
    from functions.inference.engine import GenerationParams

    gen = fp16_engine.submit(fp16_engine.encode_chat([{"role": "user", "content": "What is the capital of France?"}]),
                             GenerationParams(max_tokens=24, temperature=0.0))
    assert "Paris" in "".join(event.text for event in gen)
    assert fp16_engine.info()["variant"] == "fp16"
