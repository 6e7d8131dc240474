"""scripts/dev's supervisor: up waits for readiness, fails loudly, and down stops what it started."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from shared.dev import supervisor
from tests.dev.conftest import FIXTURES, free_port


def processes_with_env(text: str) -> list[int]:
    """Live processes whose environment mentions ``text`` (each test's DATA_DIR is unique)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if text.encode() in (entry / "environ").read_bytes() and supervisor.start_time(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_a_function_that_cannot_start_fails_up_naming_it_with_its_log_and_leaves_nothing_running(
        tansu_bootstrap, tmp_path):
    layout = supervisor.Layout(tmp_path)
    options = supervisor.Options(stack_file=FIXTURES / "broken.yml", gateway_port=free_port(), ready_timeout=30,
                                 layout=layout, env={"KAFKA_BOOTSTRAP_SERVERS": tansu_bootstrap,
                                                     "DATA_DIR": str(tmp_path / "brokendata")})
    with pytest.raises(supervisor.SupervisorError) as failure:
        supervisor.up(options)

    message = str(failure.value)
    assert message.startswith("broken ")
    assert "BROKEN_SETTING is required" in message  # the tail of its log
    assert (tmp_path / "var/log/broken.log").exists()  # the log stays for the post-mortem ...
    assert not layout.state.exists()  # ... but no state and no process
    assert processes_with_env(str(tmp_path / "brokendata")) == []


def test_down_stops_every_process_it_started_and_nothing_else(tansu_bootstrap, tmp_path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    layout = supervisor.Layout(tmp_path)
    port = free_port()
    options = supervisor.Options(stack_file=FIXTURES / "stack.yml", gateway_port=port, ready_timeout=60,
                                 layout=layout, only=("echo",),
                                 env={"KAFKA_BOOTSTRAP_SERVERS": tansu_bootstrap,
                                      "DATA_DIR": str(tmp_path / "stackdata")})
    try:
        state = supervisor.up(options)
        assert requests.get(f"http://127.0.0.1:{port}/function/echo").status_code == 200
        assert {row["name"] for row in supervisor.status(layout) if row["alive"]} == {
            "echo", "gateway", "queue-worker", "connector"}
        pids = [p.pid for p in state["processes"]]

        stopped = supervisor.down(layout)

        assert sorted(p.pid for p in stopped) == sorted(pids)
        assert not any(supervisor.start_time(pid) for pid in pids)
        leftover = processes_with_env(str(tmp_path / "stackdata"))
        assert leftover == [], [Path(f"/proc/{p}/cmdline").read_bytes() for p in leftover]
        assert bystander.poll() is None
        assert supervisor.status(layout) == []
    finally:
        bystander.send_signal(signal.SIGTERM)
        bystander.wait(10)


def test_up_refuses_a_port_that_is_taken(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        options = supervisor.Options(stack_file=FIXTURES / "stack.yml", gateway_port=busy.getsockname()[1],
                                     layout=supervisor.Layout(tmp_path), env={"KAFKA_BOOTSTRAP_SERVERS": "unused:1"})
        with pytest.raises(supervisor.SupervisorError, match="is taken"):
            supervisor.up(options)


def test_the_cli_reports_not_running_when_nothing_was_started(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(supervisor.REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", "import sys; from shared.dev import __main__ as m, supervisor as s; "
                             f"s.REPO_ROOT = __import__('pathlib').Path({str(tmp_path)!r}); "
                             "m.REPO_ROOT = s.REPO_ROOT; sys.exit(m.main(['status']))"],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 3
    assert "not running" in result.stdout


def test_one_function_can_be_stopped_and_started_again_behind_the_same_gateway_route(tansu_bootstrap, tmp_path):
    layout = supervisor.Layout(tmp_path)
    port = free_port()
    options = supervisor.Options(stack_file=FIXTURES / "stack.yml", gateway_port=port, ready_timeout=60,
                                 layout=layout, only=("echo",),
                                 env={"KAFKA_BOOTSTRAP_SERVERS": tansu_bootstrap,
                                      "DATA_DIR": str(tmp_path / "restartdata")})
    supervisor.up(options)
    try:
        stopped = supervisor.stop(layout, "echo")
        assert not supervisor.alive(stopped)
        down = requests.get(f"http://127.0.0.1:{port}/function/echo")
        assert down.status_code in (502, 503)
        assert "error" in down.json()

        started = supervisor.start(options, "echo")

        assert started.pid != stopped.pid and started.port == stopped.port
        assert requests.get(f"http://127.0.0.1:{port}/function/echo").status_code == 200
        with pytest.raises(supervisor.SupervisorError, match="still running"):
            supervisor.start(options, "echo")
    finally:
        supervisor.down(layout)
