"""Text side of the engine: chat template, tokenizer, incremental detokenization, stop sequences."""
from __future__ import annotations

import json
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer


class ChatTokenizer:
    """tokenizer.json + the model's chat template (jinja2, sandboxed like transformers does)."""

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        config = json.loads((model_dir / "tokenizer_config.json").read_text())
        template_file = model_dir / "chat_template.jinja"
        source = template_file.read_text() if template_file.is_file() else config.get("chat_template")
        if not source:
            raise ValueError(f"no chat template in {model_dir}")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
        env.globals["raise_exception"] = _raise_exception
        self._template = env.from_string(source)
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.eos_ids = self._eos_ids(model_dir)

    def _eos_ids(self, model_dir: Path) -> set[int]:
        ids = set()
        if self.eos_token is not None and (i := self.tokenizer.token_to_id(self.eos_token)) is not None:
            ids.add(i)
        gen = model_dir / "generation_config.json"
        if gen.is_file():
            eos = json.loads(gen.read_text()).get("eos_token_id")
            ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        return ids

    def render(self, messages: list[dict]) -> str:
        for m in messages:
            if m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
                raise ValueError("each message needs a role (system, user, assistant) and string content")
        return self._template.render(
            messages=messages, add_generation_prompt=True, bos_token=self.bos_token or "", eos_token=self.eos_token or ""
        )

    def encode_chat(self, messages: list[dict]) -> list[int]:
        # The template writes every special token itself: adding them again would double the BOS.
        return self.tokenizer.encode(self.render(messages), add_special_tokens=False).ids

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _token_text(token) -> str | None:
    if isinstance(token, dict):
        return token.get("content")
    return token


class TextStream:
    """Turns generated token ids into text deltas that are UTF-8 complete and never contain
    (part of) a stop sequence.

    Decoding is incremental over a short window (`prefix`..end), so that tokenizers that merge
    spaces or bytes across tokens decode correctly and a long completion costs O(1) per token.
    Text that may still change (an incomplete multi-byte character, or a suffix that could begin
    a stop sequence) is held back until it is settled.
    """

    def __init__(self, decode, stop: list[str]):
        self._decode = decode
        self._stop = list(stop)
        self._ids: list[int] = []
        self._prefix = 0  # window start for decoding
        self._read = 0  # ids[:_read] are already in _full
        self._full = ""  # decoded completion so far (complete characters only)
        self._emitted = 0  # len of the released prefix of _full
        self.stopped = False

    @property
    def text(self) -> str:
        """The text released so far."""
        return self._full[:self._emitted]

    def _decode_new(self) -> str:
        """Text of the ids not yet decoded, or "" while they end inside a character."""
        known = self._decode(self._ids[self._prefix:self._read])
        window = self._decode(self._ids[self._prefix:])
        if window.endswith("\ufffd") or len(window) <= len(known):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return window[len(known):]

    def push(self, token_id: int) -> str:
        """Adds a token; returns the text that can be released now."""
        self._ids.append(token_id)
        self._full += self._decode_new()
        full = self._full
        for s in self._stop:
            # search from just before the released text: a stop can straddle the boundary
            idx = full.find(s, max(0, self._emitted - len(s) + 1))
            if idx != -1:
                self.stopped = True
                return self._release(full, idx)
        return self._release(full, len(full) - self._held_back(full))

    def _held_back(self, full: str) -> int:
        """Length of the longest suffix of `full` that is a proper prefix of a stop sequence."""
        longest = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(full)), longest, -1):
                if full.endswith(s[:k]):
                    longest = k
                    break
        return longest

    def _release(self, full: str, end: int) -> str:
        end = max(end, self._emitted)
        delta = full[self._emitted:end]
        self._emitted = end
        return delta

    def finish(self) -> str:
        """At the end of generation (not stopped): releases whatever was held back."""
        if self.stopped:
            return ""
        return self._release(self._full, len(self._full))
