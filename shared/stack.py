"""The function list, read from ``stack.yml`` (OpenFaaS format).

This is the only place that knows which functions exist: the dev supervisor, the dev gateway,
the Kafka connector and the deployment tests all ask :func:`load_stack`. ``${VAR}`` and
``${VAR:-default}`` are expanded the way faas-cli expands them (from the environment).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STACK_FILE = REPO_ROOT / "stack.yml"
SOURCE_FILE = "main.py"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


class StackError(ValueError):
    """stack.yml is missing or malformed."""


@dataclass(frozen=True)
class FunctionSpec:
    """One function of stack.yml, with paths resolved against the stack file's folder."""

    name: str
    handler: Path
    target: str
    image: str = ""
    lang: str = ""
    environment: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def source(self) -> Path:
        return self.handler / SOURCE_FILE


@dataclass(frozen=True)
class Stack:
    path: Path
    gateway: str
    functions: tuple[FunctionSpec, ...]
    copy: tuple[str, ...] = ()

    def get(self, name: str) -> FunctionSpec | None:
        return next((spec for spec in self.functions if spec.name == name), None)

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.functions]

    def subscriptions(self) -> dict[str, list[str]]:
        """Function name → the Kafka topics it is triggered by."""
        return {spec.name: list(spec.topics) for spec in self.functions if spec.topics}


def expand(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` (an unset or empty VAR takes the default)."""
    env = os.environ if environ is None else environ

    def substitute(match: re.Match) -> str:
        value = env.get(match.group(1))
        if value:
            return value
        return match.group(2) or ""

    return _VAR.sub(substitute, text)


def _strings(mapping: object, what: str) -> dict[str, str]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise StackError(f"{what} must be a mapping")
    return {str(key): "" if value is None else str(value) for key, value in mapping.items()}


def _topics(annotations: Mapping[str, str]) -> tuple[str, ...]:
    raw = annotations.get("topic", "")
    return tuple(topic.strip() for topic in raw.split(",") if topic.strip())


def _function(name: str, raw: object, base: Path) -> FunctionSpec:
    if not isinstance(raw, dict):
        raise StackError(f"function {name!r} must be a mapping")
    handler = raw.get("handler")
    if not handler:
        raise StackError(f"function {name!r} has no handler")
    environment = _strings(raw.get("environment"), f"{name}.environment")
    annotations = _strings(raw.get("annotations"), f"{name}.annotations")
    return FunctionSpec(
        name=name,
        handler=(base / str(handler)).resolve(),
        target=environment.get("FUNCTION_TARGET", name),
        image=str(raw.get("image", "")),
        lang=str(raw.get("lang", "")),
        environment=environment,
        secrets=tuple(str(secret) for secret in raw.get("secrets") or ()),
        topics=_topics(annotations),
        labels=_strings(raw.get("labels"), f"{name}.labels"),
        annotations=annotations,
    )


def load_stack(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> Stack:
    """Parse a stack file (default: ``$STACK_FILE`` or the repository's ``stack.yml``)."""
    env = os.environ if environ is None else environ
    stack_path = Path(path or env.get("STACK_FILE") or DEFAULT_STACK_FILE).resolve()
    try:
        text = stack_path.read_text()
    except OSError as exc:
        raise StackError(f"cannot read {stack_path}: {exc}") from exc
    try:
        document = yaml.safe_load(expand(text, env)) or {}
    except yaml.YAMLError as exc:
        raise StackError(f"{stack_path} is not valid YAML: {exc}") from exc
    functions = document.get("functions") or {}
    if not isinstance(functions, dict):
        raise StackError("functions must be a mapping")
    base = stack_path.parent
    return Stack(
        path=stack_path,
        gateway=str((document.get("provider") or {}).get("gateway", "")),
        functions=tuple(_function(str(name), raw, base) for name, raw in functions.items()),
        copy=tuple(str(item) for item in (document.get("configuration") or {}).get("copy") or ()),
    )
