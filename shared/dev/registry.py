"""Where each function listens: ``FUNCTION_URL_<NAME>`` env vars, else a JSON file.

The supervisor writes ``var/run/functions.json`` (``{"name": "http://127.0.0.1:PORT"}``) once the
functions are up; the gateway re-reads it whenever the file changes, so a restarted function on a
new port is picked up without restarting the gateway.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping


def env_var_for(name: str) -> str:
    return "FUNCTION_URL_" + name.upper().replace("-", "_").replace(".", "_")


class FunctionRegistry:
    def __init__(self, path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None):
        self._environ = os.environ if environ is None else environ
        self._path = Path(path) if path else None
        self._mtime: float | None = None
        self._urls: dict[str, str] = {}

    def _reload(self) -> None:
        if self._path is None:
            return
        try:
            mtime = self._path.stat().st_mtime_ns
        except OSError:
            self._urls, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        try:
            data = json.loads(self._path.read_text() or "{}")
        except (OSError, ValueError):
            return  # half-written: keep the previous view, retry on the next lookup
        self._urls = {str(k): str(v).rstrip("/") for k, v in data.items()}
        self._mtime = mtime

    def url(self, name: str) -> str | None:
        from_env = self._environ.get(env_var_for(name))
        if from_env:
            return from_env.rstrip("/")
        self._reload()
        return self._urls.get(name)


def write_registry(path: Path, urls: Mapping[str, str]) -> None:
    """Atomically replace the registry file (readers never see a partial write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(urls), indent=2, sort_keys=True))
    os.replace(tmp, path)
