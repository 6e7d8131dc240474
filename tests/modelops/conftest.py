from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.modelops.artefacts import MANIFEST, sha256_file


@pytest.fixture
def fake_variant(tmp_path) -> Path:
    """A small staged variant: a few files and their manifest (what the exporter publishes)."""
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "model.onnx").write_bytes(bytes(range(256)) * 4000)
    (stage / "tokenizer.json").write_text('{"model": {}}')
    (stage / "config.json").write_text('{"model_type": "llama"}')
    files = {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size} for p in sorted(stage.iterdir())}
    manifest = {"format": 1, "model": "m", "variant": "v", "quality": {"agreement": 0.97}, "files": files}
    (stage / MANIFEST).write_text(json.dumps(manifest))
    return stage
