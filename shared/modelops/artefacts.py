"""Published model artefacts: layout, manifest, fetch into a local cache and sha256 verification.

Serving imports this at run time, so it uses only the standard library and the blob store
(boto3 for S3). Layout in a store: `models/<model>/<variant>/<file>`, with `manifest.json`
listing every other file's sha256 and size.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from shared.storage.blob import BlobStore, LocalBlobStore, NotFoundError, blob_store_from_env

MANIFEST = "manifest.json"
DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_VARIANT = "int8"
DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[2] / "var" / "cache"


class ArtefactError(Exception):
    """An artefact that is missing, unreadable or does not match its manifest."""


def variant_prefix(model: str, variant: str) -> str:
    return f"models/{model}/{variant}"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtefactError(f"no manifest in {model_dir}") from None
    except json.JSONDecodeError as exc:
        raise ArtefactError(f"unreadable manifest {path}: {exc}") from None


def verify_dir(model_dir: str | os.PathLike) -> dict:
    """Hashes every file that the manifest lists; returns the manifest or raises ArtefactError."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    for name, meta in manifest["files"].items():
        path = model_dir / name
        if not path.is_file():
            raise ArtefactError(f"{name}: missing from {model_dir}")
        if path.stat().st_size != meta["size"]:
            raise ArtefactError(f"{name}: size {path.stat().st_size} != manifest {meta['size']}")
        if sha256_file(path) != meta["sha256"]:
            raise ArtefactError(f"{name}: sha256 does not match the manifest")
    return manifest


def _fingerprint(model_dir: Path, manifest: dict) -> dict:
    """Size and mtime of each file: a cheap witness that nothing changed since the last full check."""
    out = {}
    for name in sorted(manifest["files"]):
        st = (model_dir / name).stat()
        out[name] = [st.st_size, st.st_mtime_ns]
    out[MANIFEST] = [(model_dir / MANIFEST).stat().st_mtime_ns]
    return out


def verify_cached(model_dir: Path, stamp: Path, full: bool = False) -> dict:
    """verify_dir, skipped when a stamp from an earlier full check still matches the files.

    Re-hashing ~270 MB costs a few hundred ms of every cold start; any write to a file changes
    its mtime, which invalidates the stamp and forces a full check.
    """
    manifest = read_manifest(model_dir)
    try:
        fingerprint = _fingerprint(model_dir, manifest)
    except FileNotFoundError:
        fingerprint = None
    if not full and fingerprint is not None and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == fingerprint:
                return manifest
        except json.JSONDecodeError:
            pass
    manifest = verify_dir(model_dir)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(_fingerprint(model_dir, manifest)))
    return manifest


def fetch_variant(store: BlobStore, model: str, variant: str, cache_dir: str | os.PathLike,
                  full_verify: bool = False) -> Path:
    """Makes a verified local copy of a published variant and returns its folder.

    A local-folder store is verified in place (no copy). Otherwise files go to
    `<cache_dir>/models/<model>/<variant>`; a cached copy whose manifest equals the store's is
    reused. A download that fails verification is removed, so a retry starts clean.
    """
    cache_dir = Path(cache_dir)
    prefix = variant_prefix(model, variant)
    stamp = cache_dir / ".verified" / model / f"{variant}.json"
    try:
        remote = store.get_bytes(f"{prefix}/{MANIFEST}")
    except NotFoundError:
        raise ArtefactError(f"model {model!r} variant {variant!r} is not published in {store!r}") from None
    if isinstance(store, LocalBlobStore):
        return _verified(store.root / prefix, stamp, full_verify)

    local = cache_dir / prefix
    if (local / MANIFEST).is_file() and (local / MANIFEST).read_bytes() == remote:
        try:
            return _verified(local, stamp, full_verify)
        except ArtefactError:
            pass  # a damaged cache: fetch it again
    partial = local.with_name(local.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    manifest = json.loads(remote)
    for name in manifest["files"]:
        store.download_file(f"{prefix}/{name}", partial / name)
    (partial / MANIFEST).write_bytes(remote)
    try:
        verify_dir(partial)
    except ArtefactError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(local, ignore_errors=True)
    os.replace(partial, local)
    _verified(local, stamp, full=True)
    return local


def _verified(model_dir: Path, stamp: Path, full: bool) -> Path:
    verify_cached(model_dir, stamp, full=full)
    return model_dir


def model_dir_from_env(environ: dict | None = None) -> Path:
    """The verified local folder of the variant named by INFERENCE_MODEL / INFERENCE_VARIANT."""
    env = os.environ if environ is None else environ
    return fetch_variant(
        blob_store_from_env(env),
        env.get("INFERENCE_MODEL") or DEFAULT_MODEL,
        env.get("INFERENCE_VARIANT") or DEFAULT_VARIANT,
        env.get("INFERENCE_CACHE_DIR") or DEFAULT_CACHE_DIR,
    )
