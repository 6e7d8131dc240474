"""Real inference processes for the tests: functions-framework serving ``functions/inference/main.py``
with the real engine and the real published model (``var/artefacts``), as in production.

One process per target for the whole session: loading the model costs seconds of the 2 cores.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
# TEST_ARTEFACT_DIR points the tests at another published store (a folder laid out like var/artefacts).
ARTEFACT_DIR = Path(os.environ.get("TEST_ARTEFACT_DIR") or REPO_ROOT / "var" / "artefacts")
MODEL = "smollm2-135m-instruct"
VARIANT = "int8"
READY_TIMEOUT = 240.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class FunctionProcess:
    """One functions-framework process serving one target of the inference function."""

    target: str
    port: int
    proc: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_listening(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/_/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.target} did not answer /_/health within {timeout}s:\n{self.log()}")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target} exited with {self.proc.returncode}:\n{self.log()}")
            response = httpx.get(f"{self.url}/_/ready", timeout=5)
            if response.status_code == 200:
                return response.json()
            time.sleep(0.25)
        raise RuntimeError(f"{self.target} was not ready within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)


def start_function(target: str, env: dict[str, str], log_dir: Path) -> FunctionProcess:
    port = _free_port()
    log_path = log_dir / f"{target}-{port}.log"
    binary = Path(sys.executable).with_name("functions-framework")
    full_env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONPATH": str(REPO_ROOT),
        "HF_HUB_OFFLINE": "1",
        "ARTEFACT_DIR": str(ARTEFACT_DIR),
        "INFERENCE_CACHE_DIR": str(log_dir / "model-cache"),
        "DATA_DIR": str(log_dir / "data"),
        "GUNICORN_LOG_LEVEL": "warning",
        **env,
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(binary), "--target", target, "--source", str(REPO_ROOT / "functions/inference/main.py"),
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    function = FunctionProcess(target, port, proc, log_path)
    try:
        function.wait_listening()
    except BaseException:
        function.stop()
        raise
    return function


@pytest.fixture(scope="session")
def published_model() -> Path:
    """The model the export pipeline published; the tests need the real one, so its absence fails."""
    path = ARTEFACT_DIR / "models" / MODEL / VARIANT
    assert (path / "manifest.json").is_file(), f"no published model at {path}: run scripts/export_model first"
    return path


@pytest.fixture(scope="session")
def inference_server(published_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionProcess]:
    """The ``inference`` target (OpenAI API), ready to answer."""
    server = start_function("inference", {}, tmp_path_factory.mktemp("inference"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def worker_redis_url() -> str:
    # Keys are unique per test (request ids), so this DB is shared without flushing.
    return os.environ.get("TEST_REDIS_BASE_URL", "redis://127.0.0.1:6379") + f"/{1 + os.getpid() % 15}"


@pytest.fixture(scope="session")
def worker_server(
    published_model: Path, tansu_bootstrap: str, worker_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FunctionProcess]:
    """The ``inference_worker`` target, publishing to tansu and streaming tokens to Redis."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": tansu_bootstrap, "REDIS_URL": worker_redis_url}
    server = start_function("inference_worker", env, tmp_path_factory.mktemp("inference-worker"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def unready_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionProcess]:
    """An ``inference`` process whose model can never load (an unpublished variant)."""
    server = start_function("inference", {"INFERENCE_VARIANT": "not-published"}, tmp_path_factory.mktemp("unready"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def unready_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionProcess]:
    """An ``inference_worker`` process whose model can never load."""
    server = start_function("inference_worker", {"INFERENCE_VARIANT": "not-published"}, tmp_path_factory.mktemp("unready-worker"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionProcess]:
    """An ``inference`` process with ``INFERENCE_AUTH=user`` (tokens are checked before the model is needed)."""
    env = {"INFERENCE_AUTH": "user", "INFERENCE_VARIANT": "not-published", "AUTH_JWKS_URL": "http://127.0.0.1:9/jwks.json"}
    server = start_function("inference", env, tmp_path_factory.mktemp("guarded"))
    try:
        yield server
    finally:
        server.stop()
