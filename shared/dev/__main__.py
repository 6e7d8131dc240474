"""``python -m shared.dev up|down|status|logs [NAME]`` (what ``scripts/dev`` runs)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from shared.dev import supervisor
from shared.stack import REPO_ROOT, StackError


def _options(args: argparse.Namespace) -> supervisor.Options:
    return supervisor.Options(
        stack_file=Path(args.stack) if args.stack else None,
        gateway_port=int(os.environ.get("GATEWAY_PORT", "8080")),
        ready_timeout=float(os.environ.get("DEV_READY_TIMEOUT", "180")),
        only=tuple(args.names),
        layout=supervisor.Layout(REPO_ROOT),
    )


def cmd_up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    state = supervisor.up(_options(args))
    print(f"stack up in {time.monotonic() - started:.1f}s")
    print(f"  gateway  {state['gateway_url']}   (try: curl {state['gateway_url']}/system/functions)")
    print(f"  kafka    {state['kafka']}")
    for proc in state["processes"]:
        where = f"http://127.0.0.1:{proc.port}" if proc.kind == "function" else ""
        print(f"  {proc.name:<16} pid {proc.pid:<7} {where}")
    print("  logs     scripts/dev logs [NAME]  (var/log/)")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    stopped = supervisor.down(supervisor.Layout(REPO_ROOT))
    print(f"stopped {len(stopped)} process(es)" + (": " + ", ".join(p.name for p in stopped) if stopped else ""))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    proc = supervisor.stop(supervisor.Layout(REPO_ROOT), args.name)
    print(f"stopped {proc.name} (pid {proc.pid})")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    proc = supervisor.start(_options(argparse.Namespace(stack=None, names=[])), args.name)
    print(f"started {proc.name} (pid {proc.pid}) on http://127.0.0.1:{proc.port}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    rows = supervisor.status(supervisor.Layout(REPO_ROOT))
    if not rows:
        print("not running")
        return 3
    print(f"{'NAME':<16} {'KIND':<13} {'PID':<8} {'PORT':<6} STATE")
    healthy = True
    for row in rows:
        state = "down" if not row["alive"] else {True: "ready", False: "not ready", None: "running"}[row["ready"]]
        healthy &= state in ("ready", "running")
        print(f"{row['name']:<16} {row['kind']:<13} {row['pid']:<8} {row['port'] or '':<6} {state}")
    return 0 if healthy else 1


def cmd_logs(args: argparse.Namespace) -> int:
    logs = supervisor.Layout(REPO_ROOT).logs
    paths = [logs / f"{args.name}.log"] if args.name else sorted(logs.glob("*.log"))
    if not paths or not all(p.exists() for p in paths):
        print(f"no log for {args.name or 'any process'} in {logs}", file=sys.stderr)
        return 1
    for path in paths:
        if len(paths) > 1:
            print(f"==> {path.name} <==")
        print(supervisor.tail(str(path), args.lines))
    if args.follow and len(paths) == 1:
        with open(paths[0], errors="replace") as handle:
            handle.seek(0, os.SEEK_END)
            while True:
                line = handle.readline()
                if line:
                    print(line, end="", flush=True)
                else:
                    time.sleep(0.2)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/dev", description="The local serverless platform")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start broker, functions, gateway, queue worker, connector")
    p_up.add_argument("names", nargs="*", help="only these functions (default: all in stack.yml)")
    p_up.add_argument("--stack", default=None, help="stack file (default: stack.yml)")
    p_up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop what up started").set_defaults(func=cmd_down)
    sub.add_parser("status", help="what runs, and whether it is ready").set_defaults(func=cmd_status)
    p_stop = sub.add_parser("stop", help="stop one process of the running stack")
    p_stop.add_argument("name")
    p_stop.set_defaults(func=cmd_stop)
    p_start = sub.add_parser("start", help="start one stopped function again, on its old port")
    p_start.add_argument("name")
    p_start.set_defaults(func=cmd_start)
    p_logs = sub.add_parser("logs", help="show logs (var/log/)")
    p_logs.add_argument("name", nargs="?")
    p_logs.add_argument("-n", "--lines", type=int, default=50)
    p_logs.add_argument("-f", "--follow", action="store_true")
    p_logs.set_defaults(func=cmd_logs)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (supervisor.SupervisorError, StackError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
