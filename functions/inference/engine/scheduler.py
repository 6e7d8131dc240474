"""Continuous batching: one background thread owns the runner (and so the ORT session).

Each loop iteration admits waiting requests into free slots (prefill gives each its first
token at once), then runs one decode step for every active request. Requests join and leave
at token boundaries, so a long generation never holds the others back. A long prompt is
prefilled in chunks (where the runner supports it), one chunk per iteration between decode
steps, so it does not stall the requests that are streaming either.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque

import numpy as np

from .sampling import choose_token
from .text import TextStream
from .types import EngineClosedError, GenerationParams, TokenEvent

log = logging.getLogger(__name__)

_DONE = object()


class Generation:
    """Handle of one request: a blocking iterator of TokenEvent, then finish_reason etc."""

    def __init__(self, prompt_ids: list[int], params: GenerationParams, stream: TextStream):
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None
        self._stream = stream
        self._events: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self._error: BaseException | None = None
        self._rng = np.random.default_rng(params.seed)

    @property
    def text(self) -> str:
        return self._stream.text

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """The caller went away: the scheduler frees the slot at its next step."""
        self._cancelled.set()

    def __iter__(self):
        while True:
            item = self._events.get()
            if item is _DONE:
                if self._error is not None:
                    raise self._error
                return
            yield item

    # -- called by the scheduler thread only --
    def _emit(self, token_id: int) -> bool:
        """Records a generated token; returns True when the request is finished."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.completion_tokens += 1
        delta = self._stream.push(token_id)
        self._events.put(TokenEvent(delta, token_id))
        if self._stream.stopped:
            self._finish("stop")
            return True
        return False

    def _finish(self, reason: str) -> None:
        if reason == "length":
            tail = self._stream.finish()
            if tail:
                self._events.put(TokenEvent(tail, -1))
        self.finish_reason = reason
        self._events.put(_DONE)

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._events.put(_DONE)


class Scheduler:
    #: Prompt tokens per prefill chunk: bounds the stall of streaming requests and the
    #: attention scratch memory of one prefill.
    PREFILL_CHUNK = 256

    def __init__(self, runner, eos_ids: set[int], context_length: int):
        self.runner = runner
        self.eos_ids = set(eos_ids)
        self.context_length = context_length
        self._pending: deque[Generation] = deque()
        self._lock = threading.Condition()
        self._active: dict[int, Generation] = {}  # slot -> request
        self._next_token: dict[int, int] = {}  # slot -> token to feed at the next step
        self._prefilling: dict[int, tuple[Generation, list[int]]] = {}  # slot -> (request, ids left)
        self._closed = False
        self.steps = 0
        self._thread = threading.Thread(target=self._loop, name="inference-scheduler", daemon=True)
        self._thread.start()

    def submit(self, gen: Generation) -> None:
        with self._lock:
            if self._closed:
                raise EngineClosedError("engine is closed")
            self._pending.append(gen)
            self._lock.notify()

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout)

    def _loop(self) -> None:
        try:
            while True:
                admitted = self._take_pending()
                if admitted is None:
                    break
                for gen in admitted:
                    self._prefill(gen)
                self._prefill_next_chunk()
                self._drop_cancelled()
                if self._active:
                    self._decode_step()
        except BaseException as exc:  # the session failed: every caller must hear of it
            log.exception("scheduler stopped")
            self._fail_all(exc)
            return
        self._fail_all(EngineClosedError("engine is closed"))

    def _take_pending(self) -> list[Generation] | None:
        """Waiting requests that fit in free slots; blocks while idle; None when closed."""
        with self._lock:
            while not self._pending and not self._active and not self._prefilling and not self._closed:
                self._lock.wait()
            if self._closed:
                return None
            taken = []
            free = self.runner.free_slots()
            if self._active or self._prefilling:
                # one prefill between two decode steps, so that arrivals do not stall the
                # requests that are already streaming
                free = min(free, 1)
            while self._pending and len(taken) < free:
                gen = self._pending.popleft()
                if gen.cancelled:
                    gen._finish("stop")
                else:
                    taken.append(gen)
            return taken

    def _prefill(self, gen: Generation) -> None:
        ids = gen.prompt_ids
        chunked = hasattr(self.runner, "extend") and len(ids) > self.PREFILL_CHUNK
        try:
            slot, logits = self.runner.add(ids[: self.PREFILL_CHUNK] if chunked else ids)
        except ValueError as exc:  # this request does not fit: it fails, the others go on
            gen._fail(exc)
            return
        if chunked:
            self._prefilling[slot] = (gen, ids[self.PREFILL_CHUNK:])
            return
        self._active[slot] = gen
        self._accept(slot, gen, logits)

    def _prefill_next_chunk(self) -> None:
        """One chunk of the oldest request still in chunked prefill."""
        if not self._prefilling:
            return
        slot = next(iter(self._prefilling))
        gen, rest = self._prefilling[slot]
        logits = self.runner.extend(slot, rest[: self.PREFILL_CHUNK])
        rest = rest[self.PREFILL_CHUNK:]
        if rest:
            self._prefilling[slot] = (gen, rest)
            return
        del self._prefilling[slot]
        self._active[slot] = gen
        self._accept(slot, gen, logits)

    def _decode_step(self) -> None:
        slots = sorted(self._active)
        logits = self.runner.step(slots, [self._next_token[s] for s in slots])
        self.steps += 1
        for slot, row in zip(slots, logits):
            self._accept(slot, self._active[slot], row)

    def _accept(self, slot: int, gen: Generation, logits: np.ndarray) -> None:
        """Chooses the next token of one request and decides whether it goes on."""
        p = gen.params
        token = choose_token(logits, p.temperature, p.top_p, gen._rng)
        if token in self.eos_ids:
            self._release(slot, gen, "stop")
            return
        if gen._emit(token):
            self._release(slot, gen, None)
            return
        cache_full = self.runner.lengths[slot] + 1 >= self.context_length  # prompt + completion fill the context
        if gen.completion_tokens >= p.max_tokens or cache_full:
            self._release(slot, gen, "length")
            return
        self._next_token[slot] = token

    def _release(self, slot: int, gen: Generation, reason: str | None) -> None:
        self.runner.remove(slot)
        self._active.pop(slot, None)
        self._next_token.pop(slot, None)
        if reason is not None:
            gen._finish(reason)

    def _drop_cancelled(self) -> None:
        for slot, gen in list(self._active.items()):
            if gen.cancelled:
                self._release(slot, gen, "stop")
        for slot, (gen, _) in list(self._prefilling.items()):
            if gen.cancelled:
                del self._prefilling[slot]
                self._release(slot, gen, "stop")

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            self._closed = True
            waiting = list(self._pending)
            self._pending.clear()
        for gen in [*waiting, *self._active.values(), *(g for g, _ in self._prefilling.values())]:
            gen._fail(exc)
        self._active.clear()
        self._prefilling.clear()
