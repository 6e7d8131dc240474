"""Blob store: one small interface, a local-folder backend and an S3 backend.

`blob_store_from_env()` picks the backend: S3 when `S3_ENDPOINT_URL` and `S3_BUCKET` are set
(credentials from the usual AWS variables), else a folder (`ARTEFACT_DIR`, default
`var/artefacts` under the repository). Keys are '/'-separated relative paths.
Imports only the standard library and (lazily) boto3, because serving code reads artefacts
through it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from shared.errors import NotFoundError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ARTEFACT_DIR = REPO_ROOT / "var" / "artefacts"

__all__ = ["BlobStore", "LocalBlobStore", "S3BlobStore", "NotFoundError", "blob_store_from_env"]


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid blob key: {key!r}")
    return key


class BlobStore(ABC):
    """Byte blobs under '/'-separated keys."""

    @abstractmethod
    def put_file(self, key: str, path: str | os.PathLike) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def download_file(self, key: str, path: str | os.PathLike) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key that starts with `prefix`, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Removes `key`; a missing key is not an error."""

    def put_bytes(self, key: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(delete=False) as tmp:
            tmp.write(data)
        try:
            self.put_file(key, tmp.name)
        finally:
            os.unlink(tmp.name)


class LocalBlobStore(BlobStore):
    """Blobs as files under a root folder; writes are atomic (temp file + rename)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFoundError(f"blob not found: {key}") from None

    def download_file(self, key: str, path: str | os.PathLike) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFoundError(f"blob not found: {key}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and ".tmp" not in k.rsplit("/", 1)[-1])

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3BlobStore(BlobStore):
    """Blobs as objects in one S3 bucket (AWS, MinIO, moto...)."""

    def __init__(self, bucket: str, endpoint_url: str | None = None, client=None):
        import boto3  # lazily: the local backend must not need it

        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self._client = client or boto3.client("s3", endpoint_url=endpoint_url)

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    @staticmethod
    def _is_missing(exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        return code in ("404", "NoSuchKey", "NotFound")

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        self._client.upload_file(str(path), self.bucket, _check_key(key))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=_check_key(key))["Body"].read()
        except Exception as exc:
            if self._is_missing(exc):
                raise NotFoundError(f"blob not found: {key}") from None
            raise

    def download_file(self, key: str, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._client.download_file(self.bucket, _check_key(key), str(path))
        except Exception as exc:
            if self._is_missing(exc):
                raise NotFoundError(f"blob not found: {key}") from None
            raise

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=_check_key(key))
            return True
        except Exception as exc:
            if self._is_missing(exc):
                return False
            raise

    def list(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=_check_key(key))


def blob_store_from_env(environ: dict | None = None) -> BlobStore:
    """S3 when S3_ENDPOINT_URL and S3_BUCKET are set, else the local folder ARTEFACT_DIR."""
    env = os.environ if environ is None else environ
    if env.get("S3_ENDPOINT_URL") and env.get("S3_BUCKET"):
        return S3BlobStore(env["S3_BUCKET"], env["S3_ENDPOINT_URL"])
    return LocalBlobStore(env.get("ARTEFACT_DIR") or DEFAULT_ARTEFACT_DIR)
