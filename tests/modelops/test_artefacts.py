"""Publishing, fetching and verifying artefacts, on a local folder and a real S3 API (moto)."""
from __future__ import annotations

import json

import boto3
import pytest

from shared.modelops.artefacts import (
    MANIFEST, ArtefactError, fetch_variant, model_dir_from_env, read_manifest, verify_dir,
)
from shared.modelops.publish import publish
from shared.storage.blob import LocalBlobStore, S3BlobStore


@pytest.fixture
def s3_store(moto_endpoint, unique_name):
    bucket = unique_name("models")
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    return S3BlobStore(bucket, moto_endpoint)


def test_s3_round_trip_gives_a_verified_copy(fake_variant, s3_store, tmp_path):
    publish(fake_variant, s3_store, "m", "v")
    assert s3_store.list("models/m/v/") == [f"models/m/v/{n}" for n in
                                           ("config.json", MANIFEST, "model.onnx", "tokenizer.json")]
    local = fetch_variant(s3_store, "m", "v", tmp_path / "cache")
    assert local == tmp_path / "cache" / "models" / "m" / "v"
    assert (local / "model.onnx").read_bytes() == (fake_variant / "model.onnx").read_bytes()
    assert verify_dir(local)["quality"]["agreement"] == 0.97


def test_a_damaged_cache_is_fetched_again(fake_variant, s3_store, tmp_path):
    publish(fake_variant, s3_store, "m", "v")
    local = fetch_variant(s3_store, "m", "v", tmp_path / "cache")
    (local / "model.onnx").write_bytes(b"tampered")
    again = fetch_variant(s3_store, "m", "v", tmp_path / "cache")
    assert (again / "model.onnx").read_bytes() == (fake_variant / "model.onnx").read_bytes()


def test_a_tampered_file_in_the_store_is_caught(fake_variant, s3_store, tmp_path):
    publish(fake_variant, s3_store, "m", "v")
    s3_store.put_bytes("models/m/v/tokenizer.json", b'{"model": {"evil": 1}}')
    with pytest.raises(ArtefactError, match="tokenizer.json"):
        fetch_variant(s3_store, "m", "v", tmp_path / "cache")
    assert not (tmp_path / "cache" / "models" / "m" / "v").exists()  # nothing half-verified is left


def test_a_local_store_is_verified_in_place(fake_variant, tmp_path):
    store = LocalBlobStore(tmp_path / "store")
    publish(fake_variant, store, "m", "v")
    local = fetch_variant(store, "m", "v", tmp_path / "cache")
    assert local == tmp_path / "store" / "models" / "m" / "v"
    data = bytearray((local / "model.onnx").read_bytes())
    data[1000] ^= 0xFF  # same size, one byte changed
    (local / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match="sha256"):
        fetch_variant(store, "m", "v", tmp_path / "cache")


def test_an_unpublished_variant_is_reported(tmp_path):
    with pytest.raises(ArtefactError, match="not published"):
        fetch_variant(LocalBlobStore(tmp_path / "empty"), "m", "v", tmp_path / "cache")


def test_the_environment_selects_store_model_and_variant(fake_variant, s3_store, moto_endpoint, tmp_path):
    publish(fake_variant, s3_store, "m", "v")
    env = {"S3_ENDPOINT_URL": moto_endpoint, "S3_BUCKET": s3_store.bucket, "INFERENCE_MODEL": "m",
           "INFERENCE_VARIANT": "v", "INFERENCE_CACHE_DIR": str(tmp_path / "c")}
    local = model_dir_from_env(env)
    assert read_manifest(local)["variant"] == "v"
    assert json.loads((local / "config.json").read_text()) == {"model_type": "llama"}


def test_reading_artefacts_needs_only_the_standard_library_and_boto3():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, json; import shared.modelops.artefacts; "
            "print(json.dumps(sorted(m for m in ('numpy', 'onnx', 'onnxruntime', 'torch', 'transformers', 'boto3') "
            "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []  # boto3 too is imported only when an S3 store is used
