"""Fixtures for the inference engine tests: the real default model, exported on demand.

The artefacts live in var/artefacts (gitignored). When the default variant's manifest is
missing, the session runs scripts/export_model once (it builds the export venv on first use).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = REPO_ROOT / "var" / "artefacts" / "models" / "smollm2-135m-instruct"
INT8_DIR = ARTEFACTS / "int8"
INT8_OPTIMUM_DIR = ARTEFACTS / "int8-optimum"
FP16_DIR = ARTEFACTS / "fp16"


def ensure_default_artefacts() -> Path:
    if not all((d / "manifest.json").is_file() for d in (INT8_DIR, INT8_OPTIMUM_DIR, FP16_DIR)):
        # The export tool reads the store from the environment: pin it to the repo's default folder.
        subprocess.run([str(REPO_ROOT / "scripts" / "export_model"), "--store", str(REPO_ROOT / "var" / "artefacts")],
                       check=True, cwd=REPO_ROOT)
    return INT8_DIR


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return ensure_default_artefacts()


@pytest.fixture(scope="session")
def engine(model_dir):
    from functions.inference.engine import Engine, EngineConfig

    eng = Engine.load(EngineConfig(model_dir=str(model_dir), threads=2, max_batch=8))
    eng.warmup()
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def optimum_model_dir(model_dir) -> Path:
    return INT8_OPTIMUM_DIR


@pytest.fixture(scope="session")
def ask():
    """ask(engine, question, system=None) -> prompt ids through the chat template."""

    def build(engine, question: str, system: str | None = None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        return engine.encode_chat(messages)

    return build
