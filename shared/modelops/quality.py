"""The quality gate: next-token agreement of a candidate graph with the fp32 reference.

Two numbers over a fixed prompt set, both measured with the serving engine's own runners
(so the gate measures what serving runs):
- teacher-forced: the candidate is fed the reference's greedy continuation; at each position,
  does its argmax equal the reference's next token?
- while generating: the candidate generates greedily on its own; at each position, does its
  token equal the reference's argmax for that same context?
A variant whose lower number is below MIN_AGREEMENT is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_AGREEMENT = 0.95
NEW_TOKENS = 32

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
    "List three fruits that are red.",
    "How do I reverse a list in Python?",
    "What is 12 times 7?",
    "Give me a short tip for sleeping better.",
    "Translate 'good morning' into Spanish.",
]


class QualityError(Exception):
    """A variant below the quality gate."""


@dataclass
class QualityReport:
    teacher_forced: float
    generating: float
    prompts: int
    tokens: int

    @property
    def agreement(self) -> float:
        return min(self.teacher_forced, self.generating)

    def as_dict(self) -> dict:
        return {
            "agreement": round(self.agreement, 4),
            "teacher_forced": round(self.teacher_forced, 4),
            "generating": round(self.generating, 4),
            "prompts": self.prompts,
            "new_tokens_per_prompt": NEW_TOKENS,
            "tokens": self.tokens,
            "reference": "fp32",
            "min_agreement": MIN_AGREEMENT,
        }


def _runner(model_path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    from functions.inference.engine.runners import make_runner

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
    return make_runner(session, max_batch=1, max_context=1024)


def _greedy(runner, prompt: list[int], n: int, eos: set[int]) -> list[int]:
    slot, logits = runner.add(prompt)
    out = [int(np.argmax(logits))]
    while len(out) < n and out[-1] not in eos:
        out.append(int(np.argmax(runner.step([slot], [out[-1]])[0])))
    runner.remove(slot)
    return out


def _forced(runner, prompt: list[int], continuation: list[int]) -> list[int]:
    """The runner's argmax at each position of prompt + continuation (one per continuation token)."""
    slot, logits = runner.add(prompt)
    preds = [int(np.argmax(logits))]
    for tok in continuation[:-1]:
        preds.append(int(np.argmax(runner.step([slot], [tok])[0])))
    runner.remove(slot)
    return preds


def measure(reference_model: str | Path, candidate_model: str | Path, tokenizer_dir: str | Path,
            prompts: list[str] = PROMPTS, new_tokens: int = NEW_TOKENS) -> QualityReport:
    from functions.inference.engine.text import ChatTokenizer

    tok = ChatTokenizer(tokenizer_dir)
    ref, cand = _runner(reference_model), _runner(candidate_model)
    forced_hits = forced_total = gen_hits = gen_total = 0
    for text in prompts:
        ids = tok.encode_chat([{"role": "user", "content": text}])
        ref_cont = _greedy(ref, ids, new_tokens, tok.eos_ids)
        cand_preds = _forced(cand, ids, ref_cont)
        forced_hits += sum(a == b for a, b in zip(cand_preds, ref_cont))
        forced_total += len(ref_cont)
        cand_cont = _greedy(cand, ids, new_tokens, tok.eos_ids)
        ref_preds = _forced(ref, ids, cand_cont)
        gen_hits += sum(a == b for a, b in zip(ref_preds, cand_cont))
        gen_total += len(cand_cont)
    return QualityReport(forced_hits / forced_total, gen_hits / gen_total, len(prompts), forced_total + gen_total)


def gate(report: QualityReport, variant: str, minimum: float = MIN_AGREEMENT) -> None:
    if report.agreement < minimum:
        raise QualityError(
            f"variant {variant!r} refused: agreement {report.agreement:.3f} < {minimum} "
            f"(teacher-forced {report.teacher_forced:.3f}, generating {report.generating:.3f})"
        )
