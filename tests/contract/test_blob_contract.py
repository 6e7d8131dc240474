"""One contract for every blob store: a local folder and S3 (a real moto S3 server)."""
from __future__ import annotations

import pytest

from shared.errors import NotFoundError
from shared.storage.blob import LocalBlobStore, S3BlobStore, blob_store_from_env


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, unique_name):
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    import boto3

    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = unique_name("bucket")
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return S3BlobStore(bucket, endpoint)


def test_put_bytes_then_get_bytes(store):
    store.put_bytes("models/m1/v1/model.onnx", b"\x00onnx\xff")
    assert store.get_bytes("models/m1/v1/model.onnx") == b"\x00onnx\xff"


def test_put_file_then_download_file(store, tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(b"x" * 300_000)
    store.put_file("a/b/c.bin", source)
    target = tmp_path / "out" / "deep" / "c.bin"
    store.download_file("a/b/c.bin", target)
    assert target.read_bytes() == b"x" * 300_000


def test_overwriting_a_key_replaces_its_content(store):
    store.put_bytes("k", b"one")
    store.put_bytes("k", b"two")
    assert store.get_bytes("k") == b"two"


def test_a_missing_key_is_not_found(store, tmp_path):
    with pytest.raises(NotFoundError):
        store.get_bytes("nope/x")
    with pytest.raises(NotFoundError):
        store.download_file("nope/x", tmp_path / "x")
    assert store.exists("nope/x") is False


def test_exists_list_and_delete(store):
    for key in ("m/v2/b.json", "m/v1/a.json", "other/z"):
        store.put_bytes(key, b"{}")
    assert store.exists("m/v1/a.json") is True
    assert store.exists("m/v1") is False  # a prefix is not a blob
    assert store.list("m/") == ["m/v1/a.json", "m/v2/b.json"]
    assert store.list() == ["m/v1/a.json", "m/v2/b.json", "other/z"]
    store.delete("m/v1/a.json")
    store.delete("m/v1/a.json")  # deleting twice is fine
    assert store.list("m/") == ["m/v2/b.json"]


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a"])
def test_unsafe_keys_are_refused(store, key):
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")


def test_blob_store_from_env_picks_s3_when_configured(monkeypatch, tmp_path, moto_endpoint, unique_name):
    import boto3

    monkeypatch.setenv("ARTEFACT_DIR", str(tmp_path / "art"))
    local = blob_store_from_env()
    assert isinstance(local, LocalBlobStore)
    bucket = unique_name("bucket")
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    monkeypatch.setenv("S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("S3_BUCKET", bucket)
    s3 = blob_store_from_env()
    assert isinstance(s3, S3BlobStore)
    s3.put_bytes("k", b"v")
    assert boto3.client("s3", endpoint_url=moto_endpoint).get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
