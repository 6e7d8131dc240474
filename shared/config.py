"""Settings from environment variables and mounted secret files.

Secrets are read from ``$SECRETS_DIR/<name>`` (default ``/var/openfaas/secrets``, where both
OpenFaaS and our Knative manifests mount them), falling back to an environment variable of the
same name upper-cased with dashes as underscores. Values read as secrets are wrapped in
:class:`Secret`, which never shows its value in ``repr`` or logs.

A missing required value raises :class:`ConfigError` when the settings object is built, i.e. at
boot, never on the first request.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, TypeVar

T = TypeVar("T")

DEFAULT_SECRETS_DIR = "/var/openfaas/secrets"
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(RuntimeError):
    """A setting is missing or malformed."""


class Secret:
    """A string that does not show itself in ``repr``/``str`` (and so not in logs)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


_MISSING = object()


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def env_str(name: str, default: object = _MISSING, *, environ: Mapping[str, str] | None = None) -> str:
    value = _environ(environ).get(name)
    if value is None or value == "":
        if default is _MISSING:
            raise ConfigError(f"environment variable {name} is required")
        return default  # type: ignore[return-value]
    return value


def _typed(cast: Callable[[str], T], kind: str) -> Callable[..., T]:
    def read(name: str, default: object = _MISSING, *, environ: Mapping[str, str] | None = None) -> T:
        raw = _environ(environ).get(name)
        if raw is None or raw == "":
            if default is _MISSING:
                raise ConfigError(f"environment variable {name} is required")
            return default  # type: ignore[return-value]
        try:
            return cast(raw)
        except ValueError as exc:
            raise ConfigError(f"environment variable {name} must be {kind}, got {raw!r}") from exc

    return read


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


env_int = _typed(int, "an integer")
env_float = _typed(float, "a number")
env_bool = _typed(_bool, "a boolean")


def env_list(name: str, default: list[str] | None = None, *, environ: Mapping[str, str] | None = None) -> list[str]:
    raw = _environ(environ).get(name)
    if not raw:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


def secrets_dir(environ: Mapping[str, str] | None = None) -> Path:
    return Path(_environ(environ).get("SECRETS_DIR") or DEFAULT_SECRETS_DIR)


def read_secret(
    name: str, default: object = _MISSING, *, environ: Mapping[str, str] | None = None
) -> Secret:
    """Read secret ``name`` from the secrets folder, else from the env var ``NAME``."""
    path = secrets_dir(environ) / name
    try:
        return Secret(path.read_text().strip())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        pass
    env_name = name.upper().replace("-", "_").replace(".", "_")
    value = _environ(environ).get(env_name)
    if value:
        return Secret(value)
    if default is _MISSING:
        raise ConfigError(f"secret {name} is missing (no file {path}, no env var {env_name})")
    return default if isinstance(default, Secret) or default is None else Secret(str(default))  # type: ignore[return-value]


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where embedded backends keep their files (SQLite databases, the shared cache)."""
    path = Path(_environ(environ).get("DATA_DIR") or REPO_ROOT / "var" / "data")
    path.mkdir(parents=True, exist_ok=True)
    return path


DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080"


def function_url(name: str, environ: Mapping[str, str] | None = None) -> str:
    """Base URL of another function: ``FUNCTION_URL_<NAME>`` when set (Knative's cluster-local
    URLs), else ``${GATEWAY_URL}/function/<name>`` (OpenFaaS and the dev gateway)."""
    env = _environ(environ)
    direct = env.get("FUNCTION_URL_" + name.upper().replace("-", "_"))
    if direct:
        return direct.rstrip("/")
    gateway = (env.get("GATEWAY_URL") or DEFAULT_GATEWAY_URL).rstrip("/")
    return f"{gateway}/function/{name}"
