"""Serving from a real S3 API: the published variant goes through moto and back into an engine."""
from __future__ import annotations

import boto3

from functions.inference.engine import Engine, EngineConfig, GenerationParams
from shared.modelops.artefacts import MANIFEST, model_dir_from_env, read_manifest
from shared.storage.blob import S3BlobStore


def test_a_variant_published_to_s3_is_fetched_verified_and_served(model_dir, moto_endpoint, unique_name, tmp_path, ask):
    bucket = unique_name("artefacts")
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    store = S3BlobStore(bucket, moto_endpoint)
    for name in [*read_manifest(model_dir)["files"], MANIFEST]:
        store.put_file(f"models/smollm2-135m-instruct/int8/{name}", model_dir / name)

    local = model_dir_from_env({"S3_ENDPOINT_URL": moto_endpoint, "S3_BUCKET": bucket,
                                "INFERENCE_CACHE_DIR": str(tmp_path / "cache")})
    assert local.is_relative_to(tmp_path)
    with Engine.load(EngineConfig(model_dir=str(local), threads=2)) as engine:
        gen = engine.submit(ask(engine, "What is the capital of France?", system="You are a helpful assistant."),
                            GenerationParams(max_tokens=16))
        list(gen)
        assert "Paris" in gen.text
