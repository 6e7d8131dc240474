#!/usr/bin/env python
"""Benchmark of the dev gateway: an authenticated ``GET /users/me`` through the gateway and
straight to the users function, in one run, on loopback.

    .venv/bin/python scripts/bench_gateway.py                 # starts auth + users + gateway
    .venv/bin/python scripts/bench_gateway.py --gateway http://127.0.0.1:8080   # a running stack

Two phases per target, alternated so that drift on a shared machine hits both alike:
- latency: one request at a time (``--latency-requests``), p50/p99 → the overhead the gateway adds;
- throughput: ``--concurrency`` keep-alive clients for ``--duration`` seconds (or
  ``--max-requests``), requests/s and p50/p99 under load.
The load generator shares the CPUs with what it measures: compare ratios, not absolutes.
"""
from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.dev import supervisor  # noqa: E402


@dataclass
class Result:
    target: str
    phase: str
    latencies: list[float]
    seconds: float
    errors: int

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


async def load(session: aiohttp.ClientSession, url: str, headers: dict, *, concurrency: int,
               duration: float, max_requests: int) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    errors = 0
    remaining = max_requests
    deadline = time.perf_counter() + duration

    async def client() -> None:
        nonlocal remaining, errors
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            started = time.perf_counter()
            async with session.get(url, headers=headers) as response:
                await response.read()
                if response.status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started, errors


async def get_token(session: aiohttp.ClientSession, gateway: str) -> str:
    email = f"bench-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(16)
    async with session.post(f"{gateway}/function/auth/register", json={"email": email, "password": password}) as r:
        if r.status not in (200, 201):
            raise SystemExit(f"register failed: {r.status} {await r.text()}")
    form = {"grant_type": "password", "username": email, "password": password}
    async with session.post(f"{gateway}/function/auth/token", data=form) as r:
        if r.status != 200:
            raise SystemExit(f"token failed: {r.status} {await r.text()}")
        return (await r.json())["access_token"]


async def function_url(session: aiohttp.ClientSession, gateway: str, name: str) -> str:
    async with session.get(f"{gateway}/system/function/{name}") as r:
        url = (await r.json()).get("url")
    if not url:
        raise SystemExit(f"the gateway does not say where {name} listens (/system/function/{name} url)")
    return url


async def bench(args: argparse.Namespace, gateway: str) -> list[Result]:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        token = await get_token(session, gateway)
        headers = {"Authorization": f"Bearer {token}"}
        targets = {"gateway": f"{gateway}/function/users/me",
                   "direct": f"{await function_url(session, gateway, 'users')}/me"}
        for url in targets.values():  # warm connections, caches and JIT-less Python paths alike
            await load(session, url, headers, concurrency=args.concurrency, duration=1.0, max_requests=200)
        results: list[Result] = []
        for round_ in range(args.rounds):
            order = list(targets.items()) if round_ % 2 == 0 else list(reversed(targets.items()))
            for name, url in order:
                lat, secs, errs = await load(session, url, headers, concurrency=1, duration=60,
                                             max_requests=args.latency_requests)
                results.append(Result(name, "latency", lat, secs, errs))
                lat, secs, errs = await load(session, url, headers, concurrency=args.concurrency,
                                             duration=args.duration, max_requests=args.max_requests)
                results.append(Result(name, "throughput", lat, secs, errs))
        return results


def merge(results: list[Result], target: str, phase: str) -> Result:
    chosen = [r for r in results if r.target == target and r.phase == phase]
    return Result(target, phase, [x for r in chosen for x in r.latencies], sum(r.seconds for r in chosen),
                  sum(r.errors for r in chosen))


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(f"GET /users/me (Bearer), {args.rounds} round(s); latency: 1 client; "
          f"throughput: {args.concurrency} clients")
    print(f"{'target':<8} {'phase':<10} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    merged = {}
    for phase in ("latency", "throughput"):
        for target in ("direct", "gateway"):
            r = merged[target, phase] = merge(results, target, phase)
            print(f"{target:<8} {phase:<10} {len(r.latencies):>8} {r.rate:>8.0f} {r.pct(0.5):>8.2f} "
                  f"{r.pct(0.99):>8.2f} {r.errors:>6}")
    overhead = merged["gateway", "latency"].pct(0.5) - merged["direct", "latency"].pct(0.5)
    loaded = merged["gateway", "throughput"].pct(0.5) - merged["direct", "throughput"].pct(0.5)
    print(f"gateway overhead: p50 +{overhead:.2f} ms (1 client), +{loaded:.2f} ms under load; "
          f"rate through gateway {merged['gateway', 'throughput'].rate:.0f} req/s vs direct "
          f"{merged['direct', 'throughput'].rate:.0f} req/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", help="use this running gateway instead of starting a stack")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per throughput phase")
    parser.add_argument("--max-requests", type=int, default=20000, help="cap per throughput phase")
    parser.add_argument("--latency-requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    if args.gateway:
        asyncio.run(_run(args, args.gateway.rstrip("/")))
        return
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as root:
        layout = supervisor.Layout(Path(root))
        port = supervisor.free_port()
        print(f"starting auth + users + gateway on :{port} (state in {root})", file=sys.stderr)
        supervisor.up(supervisor.Options(gateway_port=port, only=("auth", "users"), layout=layout,
                                         env={"DATA_DIR": str(Path(root) / "data")}))
        try:
            asyncio.run(_run(args, f"http://127.0.0.1:{port}"))
        finally:
            supervisor.down(layout)


async def _run(args: argparse.Namespace, gateway: str) -> None:
    report(await bench(args, gateway), args)


if __name__ == "__main__":
    main()
