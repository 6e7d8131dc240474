#!/usr/bin/env python
"""CUDA check of the inference engine: run on a machine with a GPU and onnxruntime-gpu, never in CI.

    python scripts/check_cuda.py --tokenizer-dir var/artefacts/models/smollm2-135m-instruct/int8

It builds a small Llama of the served model's architecture and vocabulary with random weights
through the pipeline's own fused-graph builder (``shared.modelops.fused``), keeps an fp32 copy as the
CPU reference and converts another to float16 (onnxruntime's CUDA GroupQueryAttention has no
float32 kernel), then checks the engine's CUDA path:

1. the engine picks ``CUDAExecutionProvider`` by itself and keeps the KV cache on the device
   (IO binding, shared past/present buffers);
2. the first-step logits on CUDA (fp16) match the CPU engine's (fp32) within fp16 tolerance, and
   greedy generations agree;
3. continuous batching on CUDA: 8 concurrent requests all complete, and their tokens agree with
   the same requests run one at a time;
4. for the record: decode tokens/s at batch 1 and total tokens/s at 8 concurrent requests.

Prints one line per check and exits non-zero when a check fails.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
                   "special_tokens_map.json")
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "Explain photosynthesis.",
           "List three prime numbers.", "Who wrote Hamlet?", "Translate 'good morning' to Spanish.",
           "What is 12 times 12?", "Name a mammal that can fly."]


def tiny_llama(vocab: int, seed: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    """A 4-layer Llama with the served model's vocabulary (GQA: 8 heads over 2 KV heads)."""
    config = {"model_type": "llama", "hidden_size": 256, "num_attention_heads": 8, "num_key_value_heads": 2,
              "num_hidden_layers": 4, "intermediate_size": 512, "vocab_size": vocab, "rms_norm_eps": 1e-5,
              "max_position_embeddings": 2048, "rope_theta": 10000.0}
    rng = np.random.default_rng(seed)
    hidden, head_dim = 256, 32
    normal = lambda *shape, std=0.05: (rng.standard_normal(shape) * std).astype(np.float32)  # noqa: E731
    weights = {"model.embed_tokens.weight": normal(vocab, hidden, std=0.5),
               "model.norm.weight": np.ones(hidden, np.float32),
               "lm_head.weight": normal(vocab, hidden, std=0.3)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        weights.update({
            f"{p}.input_layernorm.weight": np.ones(hidden, np.float32),
            f"{p}.post_attention_layernorm.weight": np.ones(hidden, np.float32),
            f"{p}.self_attn.q_proj.weight": normal(8 * head_dim, hidden),
            f"{p}.self_attn.k_proj.weight": normal(2 * head_dim, hidden),
            f"{p}.self_attn.v_proj.weight": normal(2 * head_dim, hidden),
            f"{p}.self_attn.o_proj.weight": normal(hidden, 8 * head_dim),
            f"{p}.mlp.gate_proj.weight": normal(512, hidden),
            f"{p}.mlp.up_proj.weight": normal(512, hidden),
            f"{p}.mlp.down_proj.weight": normal(hidden, 512),
        })
    return config, weights


def write_model_dir(dest: Path, model, tokenizer_dir: Path, config: dict, variant: str) -> Path:
    import onnx

    dest.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest / "model.onnx"))
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, dest / name)
    (dest / "config.json").write_text(json.dumps(config))
    (dest / "manifest.json").write_text(json.dumps({"model": "tiny-llama-check", "variant": variant,
                                                    "context_length": config["max_position_embeddings"]}))
    return dest


def generate(engine, prompt: str, max_tokens: int) -> list[int]:
    from functions.inference.engine import GenerationParams

    gen = engine.submit(engine.encode_chat([{"role": "user", "content": prompt}]),
                        GenerationParams(max_tokens=max_tokens, temperature=0.0))
    return [event.token_id for event in gen]


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of positions where two greedy runs agree, counted up to each pair's first divergence
    (after it, the prefixes differ and so must the rest)."""
    same = total = 0
    for x, y in zip(a, b):
        n = min(len(x), len(y))
        total += n
        for i in range(n):
            if x[i] != y[i]:
                break
            same += 1
    return same / total if total else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer-dir", type=Path,
                        default=Path("var/artefacts/models/smollm2-135m-instruct/int8"))
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    import onnxruntime as ort
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from functions.inference.engine import Engine, EngineConfig
    from shared.modelops.fused import build_fused_model

    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("PASS " if ok else "FAIL ") + what, flush=True)
        if not ok:
            failures.append(what)

    print(f"onnxruntime {ort.__version__}; providers {ort.get_available_providers()}")
    vocab = json.loads((args.tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    config, weights = tiny_llama(len(vocab))
    work = Path(tempfile.mkdtemp(prefix="cuda-check-"))
    fp32 = build_fused_model(config, weights)
    cpu_dir = write_model_dir(work / "fp32", fp32, args.tokenizer_dir, config, "fp32")
    fp16 = convert_float_to_float16(build_fused_model(config, weights), keep_io_types=False)
    gpu_dir = write_model_dir(work / "fp16", fp16, args.tokenizer_dir, config, "fp16")

    cpu = Engine.load(EngineConfig(model_dir=str(cpu_dir), provider="CPUExecutionProvider", max_batch=8))
    cpu.warmup()
    gpu = Engine.load(EngineConfig(model_dir=str(gpu_dir), provider=None, max_batch=8))
    gpu.warmup()
    check(gpu.provider == "CUDAExecutionProvider", f"the engine chose {gpu.provider} by itself")
    check(getattr(gpu._runner, "device", None) == "cuda", "the KV cache lives on the GPU (IO binding)")

    ids = cpu.encode_chat([{"role": "user", "content": PROMPTS[0]}])
    slot_c, logits_c = cpu._runner.add(ids)
    cpu._runner.remove(slot_c)
    slot_g, logits_g = gpu._runner.add(ids)
    gpu._runner.remove(slot_g)
    logits_c, logits_g = np.asarray(logits_c, np.float32).ravel(), np.asarray(logits_g, np.float32).ravel()
    rel = float(np.max(np.abs(logits_c - logits_g)) / (np.max(np.abs(logits_c)) + 1e-9))
    check(rel < 0.02, f"first-step logits CUDA fp16 vs CPU fp32: max relative difference {rel:.4f} (< 0.02)")
    check(int(np.argmax(logits_c)) == int(np.argmax(logits_g)), "same first greedy token on both")

    alone_cpu = [generate(cpu, p, args.max_tokens) for p in PROMPTS]
    started = time.perf_counter()
    alone_gpu = [generate(gpu, p, args.max_tokens) for p in PROMPTS]
    b1_seconds = time.perf_counter() - started
    agree = agreement(alone_cpu, alone_gpu)
    check(agree >= 0.8, f"greedy agreement CUDA fp16 vs CPU fp32: {agree:.3f} (>= 0.8; random weights, fp16)")

    results: list[list[int] | None] = [None] * len(PROMPTS)

    def run(index: int) -> None:
        results[index] = generate(gpu, PROMPTS[index], args.max_tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    b8_seconds = time.perf_counter() - started
    complete = all(r is not None and len(r) > 0 for r in results)
    check(complete, "8 concurrent requests on CUDA all completed")
    batched = agreement(alone_gpu, [r or [] for r in results])
    check(batched >= 0.95, f"continuous batching on CUDA agrees with one-at-a-time: {batched:.3f} (>= 0.95)")
    tokens_b1 = sum(len(r) for r in alone_gpu)
    tokens_b8 = sum(len(r or []) for r in results)
    print(f"CUDA tiny model: batch 1 {tokens_b1 / b1_seconds:.0f} tok/s; 8 concurrent {tokens_b8 / b8_seconds:.0f} tok/s total")
    cpu.close()
    gpu.close()
    print("cuda check:", "OK" if not failures else f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
