"""The export pipeline's products on the real default model, and its refusal of a bad variant."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from shared.modelops.artefacts import verify_dir
from shared.storage.blob import LocalBlobStore

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPORT = str(REPO_ROOT / "scripts" / "export_model")
STORE = REPO_ROOT / "var" / "artefacts"
INT8_DIR = STORE / "models" / "smollm2-135m-instruct" / "int8"
INT8_OPTIMUM_DIR = STORE / "models" / "smollm2-135m-instruct" / "int8-optimum"


@pytest.fixture(scope="module", autouse=True)
def default_artefacts():
    """Exports the default model when it is not published yet (the first run builds the toolchain)."""
    subprocess.run([EXPORT, "--store", str(STORE)], cwd=REPO_ROOT, check=True)


def test_each_variant_has_a_verified_manifest_with_its_quality():
    for folder, graph in ((INT8_DIR, "fused-gqa"), (INT8_OPTIMUM_DIR, "optimum-kv")):
        manifest = verify_dir(folder)
        assert manifest["graph"] == graph
        assert {"model.onnx", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                "generation_config.json", "config.json"} <= set(manifest["files"])
        quality = manifest["quality"]
        assert quality["agreement"] >= 0.95
        assert quality["agreement"] == min(quality["teacher_forced"], quality["generating"])
        assert manifest["source"]["kind"] == "gguf" and len(manifest["source"]["sha256"]) == 64
        assert manifest["quantization"]["bits"] == 8 and manifest["quantization"]["block_size"] == 32
        assert "input_ids" in [i["name"] for i in manifest["onnx"]["inputs"]]
        assert manifest["onnx"]["opset"]["ai.onnx"] >= 17


def test_the_tokenizer_ends_turns_with_im_end_and_adds_no_bos():
    config = json.loads((INT8_DIR / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|im_end|>"
    assert config["add_bos_token"] is False
    vocab = json.loads((INT8_DIR / "tokenizer.json").read_text())["added_tokens"]
    im_end = next(t["id"] for t in vocab if t["content"] == "<|im_end|>")
    assert json.loads((INT8_DIR / "generation_config.json").read_text())["eos_token_id"] == im_end
    assert "<|im_start|>" in (INT8_DIR / "chat_template.jinja").read_text()


def test_exporting_again_does_nothing_when_the_artefacts_verify():
    before = (INT8_DIR / "manifest.json").stat().st_mtime_ns
    t0 = time.monotonic()
    out = subprocess.run([EXPORT, "--store", str(STORE)], cwd=REPO_ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "nothing to do" in out.stderr
    assert time.monotonic() - t0 < 60
    assert (INT8_DIR / "manifest.json").stat().st_mtime_ns == before


def test_a_variant_below_the_quality_gate_is_refused_and_not_written(tmp_path):
    store = tmp_path / "store"
    out = subprocess.run([EXPORT, "--variants", "int8-optimum", "--min-agreement", "1.01", "--store", str(store)],
                         cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode != 0
    assert "refused" in out.stderr
    assert LocalBlobStore(store).list() == []


def test_check_reports_a_missing_store_without_exporting(tmp_path):
    store = tmp_path / "empty"
    out = subprocess.run([EXPORT, "--check", "--store", str(store)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 1
    assert "needs export" in out.stderr
    assert not store.exists()
