"""Helpers for the auth, users and security tests: backends, in-process apps, small servers.

The apps run through ``functions_framework.create_app(...).test_client()``; auth is also
served over real HTTP (werkzeug, a thread) when another component must fetch its JWKS.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import functions_framework
import pytest
from werkzeug.serving import make_server

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_EMAIL = "admin@example.com"
PASSWORD = "Correct-horse-9"
BACKENDS = ("sqlite+memory", "postgresql+redis")

# Cheap argon2 parameters: the tests exercise the logic, not the cost.
FAST_AUTH_ENV = {
    "AUTH_ARGON2_TIME_COST": "1",
    "AUTH_ARGON2_MEMORY_KIB": "1024",
    "AUTH_ARGON2_PARALLELISM": "1",
    "AUTH_ADMIN_EMAILS": ADMIN_EMAIL,
    "AUTH_EVENT_PUBLISH_TIMEOUT_SECONDS": "1",
}


def reset_process_state() -> None:
    """Forget per-process singletons: the default verifier and the in-memory caches."""
    from shared.security import reset_default_verifier
    from shared.storage import cache as cache_module

    reset_default_verifier()
    store = cache_module._memory_store
    with store.cond:
        store.items.clear()
        store.channels.clear()


def use_backend(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "sqlite+memory":
        os.environ["CACHE_BACKEND"] = "memory"
    elif kind == "postgresql+redis":
        os.environ["DATABASE_URL"] = request.getfixturevalue("postgres_url")
        os.environ["REDIS_URL"] = request.getfixturevalue("redis_url")
    else:
        raise ValueError(kind)


def load_app(name: str, target: str) -> tuple[Any, Any]:
    """A Flask app for ``functions/<name>/main.py`` and the freshly executed module."""
    app = functions_framework.create_app(target, str(REPO_ROOT / "functions" / name / "main.py"))
    return app, sys.modules["main"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class AuthHarness:
    client: Any
    module: Any
    flask_app: Any

    def register(self, email: str, password: str = PASSWORD, **extra: Any) -> dict:
        response = self.client.post("/register", json={"email": email, "password": password, **extra})
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    def login(self, email: str, password: str = PASSWORD, **extra: Any) -> dict:
        response = self.client.post("/token", data={"grant_type": "password", "username": email, "password": password, **extra})
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def user(self, email: str) -> tuple[dict, dict]:
        """Register ``email`` and log in: (registered user, token response)."""
        return self.register(email), self.login(email)

    def refresh(self, refresh_token: str, **extra: Any) -> Any:
        return self.client.post("/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token, **extra})

    def clear_tables(self) -> None:
        db = self.module.runtime().service.store.db
        db.execute("DELETE FROM auth_refresh_tokens")
        db.execute("DELETE FROM auth_users")

    def close(self) -> None:
        value = self.module.runtime._value
        if value is not None:
            value.service.store.db.close()


def start_auth(env: dict[str, str] | None = None, *, clear: bool = True) -> AuthHarness:
    os.environ.update({**FAST_AUTH_ENV, **(env or {})})
    app, module = load_app("auth", "auth")
    harness = AuthHarness(app.test_client(), module, app)
    if clear:
        harness.clear_tables()
    return harness


@dataclass
class WsgiServer:
    url: str
    stop: Callable[[], None]


def serve_wsgi(app: Any) -> WsgiServer:
    """Serve a WSGI app on a free 127.0.0.1 port from a thread (for cross-component HTTP)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        thread.join(5)
        server.server_close()

    return WsgiServer(f"http://127.0.0.1:{server.server_port}", stop)


@dataclass
class JwksServer:
    """A tiny HTTP server publishing a mutable JWKS document and counting fetches."""

    document: dict = field(default_factory=lambda: {"keys": []})
    fetches: int = 0
    url: str = ""
    _server: Any = None

    def start(self) -> "JwksServer":
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                owner.fetches += 1
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_port}/jwks.json"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    use_backend(request.param, request)
    return request.param


@pytest.fixture
def auth(backend: str) -> Iterator[AuthHarness]:
    reset_process_state()
    harness = start_auth()
    try:
        yield harness
    finally:
        harness.close()
        reset_process_state()


@dataclass
class UsersHarness:
    client: Any
    events: Any
    module: Any
    auth: AuthHarness

    def login(self, email: str) -> dict:
        """Register ``email`` with auth and return its bearer headers."""
        return bearer(self.auth.user(email)[1]["access_token"])


@pytest.fixture
def users(auth: AuthHarness) -> Iterator[UsersHarness]:
    """The users app verifying tokens against the auth app's JWKS, served over real HTTP."""
    server = serve_wsgi(auth.flask_app)
    os.environ["AUTH_JWKS_URL"] = server.url + "/.well-known/jwks.json"
    os.environ["USERS_CACHE_TTL_SECONDS"] = "300"  # long: invalidation, not expiry, must show writes
    reset_process_state_keep_cache()
    app, module = load_app("users", "users")
    events_app, _ = load_app("users", "users_events")
    harness = UsersHarness(app.test_client(), events_app.test_client(), module, auth)
    module.service().store.db.execute("DELETE FROM users_profiles")
    try:
        yield harness
    finally:
        value = module.service._value
        if value is not None:
            value.store.db.close()
        server.stop()


def reset_process_state_keep_cache() -> None:
    from shared.security import reset_default_verifier

    reset_default_verifier()
