#!/usr/bin/env python
"""Benchmark of a chat turn: the platform path against the same generation on inference, in one run.

    .venv/bin/python scripts/bench_chat.py                  # starts its own stack (embedded defaults)
    REDIS_URL=redis://127.0.0.1:6379/14 .venv/bin/python scripts/bench_chat.py   # cache/streams on Redis

Path A, the platform: ``POST /function/chat/conversations/{id}/messages`` through the gateway
(JWT check, preferences from users, user message stored, ``inference.requests`` on Kafka, the
connector, inference-worker, tokens through the cache, ``inference.results``, chat-results, the
reply read back) — a fresh conversation per turn, so every turn sends the same prompt.
Path B, the baseline: ``POST /function/inference/v1/chat/completions`` through the same gateway with
the same messages and parameters (greedy, same ``max_tokens``): the same generation with none of the
platform around it.

The overhead per turn is the difference of the medians (target ≤ 30 ms p50); then
``--users`` concurrent users (default 8) each run turns for ``--duration`` seconds on both paths and
turns/s are compared. Both inference processes load the same model; the turns alternate A/B so that
drift on a shared machine hits both alike. Everything runs on loopback and stops by itself.
"""
from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.dev import supervisor  # noqa: E402
from shared.stack import REPO_ROOT  # noqa: E402

FUNCTIONS = ("auth", "users", "chat", "chat-results", "inference", "inference-worker")
QUESTION = "What is the capital of France?"


def login(gw: str, max_tokens: int) -> dict[str, str]:
    email, password = f"bench-{secrets.token_hex(4)}@example.com", secrets.token_urlsafe(16)
    requests.post(f"{gw}/function/auth/register", json={"email": email, "password": password}, timeout=30).raise_for_status()
    token = requests.post(f"{gw}/function/auth/token", timeout=30,
                          data={"grant_type": "password", "username": email, "password": password}).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    prefs = {"language": "en", "temperature": 0.0, "max_tokens": max_tokens}
    requests.put(f"{gw}/function/users/me/preferences", json=prefs, headers=headers, timeout=30).raise_for_status()
    return headers


def chat_turn(session: requests.Session, gw: str, headers: dict) -> tuple[float, str]:
    conv = session.post(f"{gw}/function/chat/conversations", json={}, headers=headers, timeout=30).json()
    started = time.perf_counter()
    reply = session.post(f"{gw}/function/chat/conversations/{conv['id']}/messages", json={"content": QUESTION},
                         headers=headers, timeout=300)
    elapsed = time.perf_counter() - started
    if reply.status_code != 201:
        raise RuntimeError(f"chat turn failed: {reply.status_code} {reply.text[:300]}")
    return elapsed, reply.json()["content"]


def direct_turn(session: requests.Session, gw: str, max_tokens: int) -> tuple[float, str]:
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": QUESTION}],
            "temperature": 0.0, "top_p": 1.0, "max_tokens": max_tokens}
    started = time.perf_counter()
    reply = session.post(f"{gw}/function/inference/v1/chat/completions", json=body, timeout=300)
    elapsed = time.perf_counter() - started
    if reply.status_code != 200:
        raise RuntimeError(f"inference call failed: {reply.status_code} {reply.text[:300]}")
    return elapsed, reply.json()["choices"][0]["message"]["content"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def concurrent(run_one, users: int, duration: float) -> tuple[float, int, int]:
    """``users`` threads each running turns until ``duration`` passes; (turns/s, turns, errors)."""
    done, errors = [0], [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def user(index: int) -> None:
        session = requests.Session()
        while time.perf_counter() < deadline:
            try:
                run_one(session, index)
                with lock:
                    done[0] += 1
            except Exception as exc:  # counted and shown; a benchmark keeps going
                with lock:
                    errors[0] += 1
                print(f"  error: {exc}", file=sys.stderr)

    started = time.perf_counter()
    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0] / (time.perf_counter() - started), done[0], errors[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=15, help="sequential turns per path (latency phase)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of the concurrent phase, per path")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    port = supervisor.free_port()
    options = supervisor.Options(stack_file=REPO_ROOT / "stack.yml", gateway_port=port, ready_timeout=180,
                                 only=FUNCTIONS, layout=supervisor.Layout(root),
                                 env={"DATA_DIR": str(root / "data"), "KAFKA_MAX_POLL_INTERVAL_MS": "3000",
                                      "INFERENCE_THREADS": os.environ.get("INFERENCE_THREADS", "2")})
    print(f"starting {', '.join(FUNCTIONS)} (backends: REDIS_URL={os.environ.get('REDIS_URL', 'embedded')}, "
          f"DATABASE_URL={'set' if os.environ.get('DATABASE_URL') else 'embedded'}) …", flush=True)
    supervisor.up(options)
    gw = f"http://127.0.0.1:{port}"
    try:
        headers = login(gw, args.max_tokens)
        session = requests.Session()
        for _ in range(2):  # warm both paths (connections, caches, first generations)
            chat_turn(session, gw, headers)
            direct_turn(session, gw, args.max_tokens)

        platform, direct = [], []
        for _ in range(args.turns):
            elapsed, chat_text = chat_turn(session, gw, headers)
            platform.append(elapsed)
            elapsed, direct_text = direct_turn(session, gw, args.max_tokens)
            direct.append(elapsed)
        same = chat_text.strip() == direct_text.strip()

        user_headers = [login(gw, args.max_tokens) for _ in range(args.users)]
        chat_rate, chat_done, chat_errors = concurrent(
            lambda s, i: chat_turn(s, gw, user_headers[i]), args.users, args.duration)
        direct_rate, direct_done, direct_errors = concurrent(
            lambda s, i: direct_turn(s, gw, args.max_tokens), args.users, args.duration)
    finally:
        supervisor.down(options.layout)

    p50_a, p50_b = statistics.median(platform) * 1000, statistics.median(direct) * 1000
    print()
    print(f"one turn, {args.turns} sequential turns each, {args.max_tokens} new tokens max, greedy:")
    print(f"  {'path':<34} {'p50 ms':>9} {'p99 ms':>9}")
    print(f"  {'platform (chat → Kafka → worker)':<34} {p50_a:9.1f} {pct(platform, 0.99):9.1f}")
    print(f"  {'direct (inference /v1)':<34} {p50_b:9.1f} {pct(direct, 0.99):9.1f}")
    print(f"  platform overhead p50: {p50_a - p50_b:+.1f} ms per turn (target ≤ 30 ms); "
          f"ratio {p50_a / p50_b:.2f}×; same text on both paths: {same}")
    print(f"{args.users} concurrent users, {args.duration:.0f} s per path:")
    print(f"  platform: {chat_rate:6.2f} turns/s ({chat_done} turns, {chat_errors} errors)")
    print(f"  direct:   {direct_rate:6.2f} turns/s ({direct_done} turns, {direct_errors} errors)")
    print(f"  ratio platform/direct: {chat_rate / direct_rate:.2f}×" if direct_rate else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
