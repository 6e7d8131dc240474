"""Model runners: the step functions over an ONNX Runtime session, one per graph layout.

Both keep per-request KV state in *slots* (0..max_batch-1) and offer the same three calls:
`add(prompt_ids) -> (slot, last_logits)`, `step(slots, tokens) -> logits[len(slots), vocab]`
and `remove(slot)`. A request joins or leaves between two steps (continuous batching).
`SharedBufferRunner` also has `extend(slot, ids)`, which appends prompt tokens to a slot, so a
long prompt can be prefilled in chunks between decode steps.

- `SharedBufferRunner` serves the fused graph (GroupQueryAttention): one pre-allocated KV
  buffer per layer, `[max_batch, kv_heads, capacity, head_dim]`, bound in place through IO
  binding as both past and present, so a step copies no cache at all. A slot is a row. The
  capacity doubles (one copy) when a sequence outgrows it, up to the context length.
- `ConcatRunner` serves optimum's graph (past/present concatenated every step). Rows are
  left-padded to a common length; joining and leaving copy the cache once. Known limit: with
  optimum's graph quantized to MatMulNBits, a left-padded row's logits differ from the same
  request run alone by up to ~0.9 (fp32 graph: exactly equal; cause not found), so greedy
  text can change under batching. The fused graph is batch-invariant; serve that one.
"""
from __future__ import annotations

import numpy as np

_PAST_PREFIX = "past_key_values."


def graph_kind(session) -> str:
    names = {i.name for i in session.get_inputs()}
    if "seqlens_k" in names:
        return "shared-kv"
    if any(n.startswith(_PAST_PREFIX) for n in names):
        return "concat-kv"
    raise ValueError(f"unsupported graph inputs: {sorted(names)}")


def _kv_layout(session) -> tuple[list[str], int, int]:
    """Past input names in order, kv heads and head size (from the declared shapes)."""
    past = [i for i in session.get_inputs() if i.name.startswith(_PAST_PREFIX)]
    past.sort(key=lambda i: (int(i.name.split(".")[1]), i.name.endswith(".value")))
    kv_heads, head_dim = past[0].shape[1], past[0].shape[3]
    if not isinstance(kv_heads, int) or not isinstance(head_dim, int):
        raise ValueError(f"KV cache shape must be static in heads/head_dim: {past[0].shape}")
    return [i.name for i in past], kv_heads, head_dim


def _present_name(past_name: str) -> str:
    return "present." + past_name[len(_PAST_PREFIX):]


class SharedBufferRunner:
    """Fused graph: inputs input_ids, seqlens_k, total_sequence_length, past_key_values.*;
    outputs logits (last position only) and present.* sharing the past buffers."""

    #: First KV capacity (tokens per slot) on CPU; it doubles on demand up to max_context.
    INITIAL_CAPACITY = 512

    def __init__(self, session, max_batch: int, max_context: int, device: str = "cpu"):
        self.session = session
        self.max_batch = max_batch
        self.max_context = max_context
        self.device = device
        self.past_names, self._kv_heads, self._head_dim = _kv_layout(session)
        self.vocab = session.get_outputs()[0].shape[-1]
        past_type = next(i.type for i in session.get_inputs() if i.name == self.past_names[0])
        self._kv_dtype = np.float16 if past_type == "tensor(float16)" else np.float32
        self._logits_dtype = np.float16 if session.get_outputs()[0].type == "tensor(float16)" else np.float32
        self.lengths = [0] * max_batch  # tokens in each slot's cache
        self.active = [False] * max_batch
        # ORT's CPU attention touches a slot's whole buffer row, so memory follows the capacity:
        # start small and grow. On CUDA the full context is allocated once (no device copies).
        self.capacity = 0
        self._allocate(max_context if device == "cuda" else min(self.INITIAL_CAPACITY, max_context))

    def _allocate(self, capacity: int) -> None:
        """(Re)allocates the KV buffers with `capacity` tokens per slot, keeping the cached tokens."""
        shape = (self.max_batch, self._kv_heads, capacity, self._head_dim)
        if self.device == "cuda":
            import onnxruntime as ort

            buffers = [ort.OrtValue.ortvalue_from_shape_and_type(shape, self._kv_dtype, "cuda", 0)
                       for _ in self.past_names]
            ptrs = [b.data_ptr() for b in buffers]
        else:
            buffers = [np.zeros(shape, self._kv_dtype) for _ in self.past_names]
            used = max((n for n, a in zip(self.lengths, self.active) if a), default=0)
            if used:
                for new, old in zip(buffers, self._buffers):
                    new[:, :, :used, :] = old[:, :, :used, :]
            ptrs = [b.ctypes.data for b in buffers]
        self._buffers, self._ptrs = buffers, ptrs
        self.capacity = capacity
        self._row_shape = (self._kv_heads, capacity, self._head_dim)
        self._row_bytes = self._kv_heads * capacity * self._head_dim * np.dtype(self._kv_dtype).itemsize
        self._bindings: dict[tuple[int, int], object] = {}

    def _ensure_capacity(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        if needed > self.max_context:
            raise ValueError("sequence does not fit the context")
        grown = self.capacity
        while grown < needed:
            grown *= 2
        self._allocate(min(grown, self.max_context))

    def free_slots(self) -> int:
        return self.active.count(False)

    def _binding(self, first: int, rows: int):
        """An IOBinding with every past/present bound to rows [first, first+rows) of the buffers."""
        key = (first, rows)
        binding = self._bindings.get(key)
        if binding is None:
            binding = self.session.io_binding()
            shape = [rows, *self._row_shape]
            offset = first * self._row_bytes
            dev = "cuda" if self.device == "cuda" else "cpu"
            for name, ptr in zip(self.past_names, self._ptrs):
                binding.bind_input(name, dev, 0, self._kv_dtype, shape, ptr + offset)
                binding.bind_output(_present_name(name), dev, 0, self._kv_dtype, shape, ptr + offset)
            self._bindings[key] = binding
        return binding

    def _run(self, binding, input_ids: np.ndarray, seqlens_k: np.ndarray, total: int) -> np.ndarray:
        binding.bind_cpu_input("input_ids", input_ids)
        binding.bind_cpu_input("seqlens_k", seqlens_k)
        binding.bind_cpu_input("total_sequence_length", np.array(total, dtype=np.int32))
        logits = np.empty((input_ids.shape[0], 1, self.vocab), self._logits_dtype)
        binding.bind_output("logits", "cpu", 0, self._logits_dtype, list(logits.shape), logits.ctypes.data)
        self.session.run_with_iobinding(binding)
        return logits[:, 0, :].astype(np.float32, copy=False)

    def add(self, prompt_ids: list[int]) -> tuple[int, np.ndarray]:
        n = len(prompt_ids)
        if n + 1 > self.max_context:
            raise ValueError("prompt does not fit the KV buffer")
        if not any(self.active) and self.capacity > self.INITIAL_CAPACITY and self.device != "cuda":
            self._allocate(self.INITIAL_CAPACITY)  # idle: give back what a long request grew
        self._ensure_capacity(n)
        slot = self.active.index(False)
        ids = np.asarray(prompt_ids, dtype=np.int64).reshape(1, n)
        logits = self._run(self._binding(slot, 1), ids, np.array([n - 1], np.int32), n)
        self.active[slot] = True
        self.lengths[slot] = n
        return slot, logits[0]

    def extend(self, slot: int, ids: list[int]) -> np.ndarray:
        """Appends more prompt tokens to a slot (chunked prefill); returns the last logits."""
        n, past = len(ids), self.lengths[slot]
        self._ensure_capacity(past + n)
        chunk = np.asarray(ids, dtype=np.int64).reshape(1, n)
        logits = self._run(self._binding(slot, 1), chunk, np.array([past + n - 1], np.int32), past + n)
        self.lengths[slot] = past + n
        return logits[0]

    def step(self, slots: list[int], tokens: list[int]) -> np.ndarray:
        """One token for each slot. Rows between them that are not stepped run on a dummy
        token written just past their cached tokens (free rows: at 0; rows still in chunked
        prefill: where their next chunk will overwrite it), which keeps every step copy-free."""
        rows = max(slots) + 1
        self._ensure_capacity(max(self.lengths[:rows]) + 1)
        ids = np.zeros((rows, 1), np.int64)
        seqlens = np.array(self.lengths[:rows], np.int32)
        for s, t in zip(slots, tokens):
            if self.lengths[s] + 1 > self.max_context:
                raise ValueError(f"slot {s} is full")
            ids[s, 0] = t
            seqlens[s] = self.lengths[s]  # new total length - 1
        logits = self._run(self._binding(0, rows), ids, seqlens, int(seqlens.max()) + 1)
        for s in slots:
            self.lengths[s] += 1
        return logits[slots]

    def remove(self, slot: int) -> None:
        self.active[slot] = False
        self.lengths[slot] = 0


class ConcatRunner:
    """optimum's graph: input_ids, attention_mask, position_ids, past_key_values.*;
    outputs logits for every position and present.* (= past + new)."""

    def __init__(self, session, max_batch: int, max_context: int, device: str = "cpu"):
        self.session = session
        self.max_batch = max_batch
        self.max_context = max_context
        self.past_names, self.kv_heads, self.head_dim = _kv_layout(session)
        self.present_names = [_present_name(n) for n in self.past_names]
        self.input_names = {i.name for i in session.get_inputs()}
        self.kv: list[np.ndarray] | None = None  # each [rows, kv_heads, T, head_dim]
        self.mask = np.zeros((0, 0), np.int64)  # [rows, T], 0 = left padding
        self.slot_of_row: list[int] = []
        self.lengths = [0] * max_batch

    def free_slots(self) -> int:
        return self.max_batch - len(self.slot_of_row)

    def _feed(self, ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray]) -> dict:
        feed = {"input_ids": ids, "attention_mask": mask}
        if "position_ids" in self.input_names:
            positions = np.cumsum(mask, axis=1) - 1
            feed["position_ids"] = np.maximum(positions[:, -ids.shape[1]:], 0)
        feed.update(zip(self.past_names, past))
        return feed

    def _run(self, feed: dict) -> tuple[np.ndarray, list[np.ndarray]]:
        outputs = self.session.run(["logits", *self.present_names], feed)
        return outputs[0][:, -1, :], outputs[1:]

    def add(self, prompt_ids: list[int]) -> tuple[int, np.ndarray]:
        n = len(prompt_ids)
        if n + 1 > self.max_context:
            raise ValueError("prompt does not fit the context")
        used = set(self.slot_of_row)
        slot = next(s for s in range(self.max_batch) if s not in used)
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32)
        ids = np.asarray(prompt_ids, dtype=np.int64).reshape(1, n)
        logits, kv = self._run(self._feed(ids, np.ones((1, n), np.int64), [empty] * len(self.past_names)))
        self._append_row(kv, np.ones((1, n), np.int64))
        self.slot_of_row.append(slot)
        self.lengths[slot] = n
        return slot, logits[0]

    def _append_row(self, kv: list[np.ndarray], mask: np.ndarray) -> None:
        if self.kv is None or not self.slot_of_row:
            self.kv, self.mask = kv, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        self.kv = [np.concatenate([_left_pad(a, width), _left_pad(b, width)]) for a, b in zip(self.kv, kv)]
        self.mask = np.concatenate([_left_pad_mask(self.mask, width), _left_pad_mask(mask, width)])

    def step(self, slots: list[int], tokens: list[int]) -> np.ndarray:
        """One token for every active slot (all of them must be given, in any order)."""
        if sorted(slots) != sorted(self.slot_of_row):
            raise ValueError("ConcatRunner steps every active slot at once")
        by_slot = dict(zip(slots, tokens))
        ids = np.array([[by_slot[s]] for s in self.slot_of_row], np.int64)
        mask = np.concatenate([self.mask, np.ones((len(ids), 1), np.int64)], axis=1)
        logits, self.kv = self._run(self._feed(ids, mask, self.kv))
        self.mask = mask
        for s in slots:
            self.lengths[s] += 1
        order = [self.slot_of_row.index(s) for s in slots]
        return logits[order]

    def remove(self, slot: int) -> None:
        row = self.slot_of_row.index(slot)
        self.slot_of_row.pop(row)
        self.lengths[slot] = 0
        if not self.slot_of_row:
            self.kv, self.mask = None, np.zeros((0, 0), np.int64)
            return
        keep = [r for r in range(self.mask.shape[0]) if r != row]
        mask = self.mask[keep]
        start = int(np.argmax(mask.any(axis=0)))  # drop columns that are padding in every row
        self.mask = mask[:, start:]
        self.kv = [a[keep][:, :, start:, :] for a in self.kv]


def _left_pad(a: np.ndarray, width: int) -> np.ndarray:
    missing = width - a.shape[2]
    if missing == 0:
        return a
    return np.pad(a, ((0, 0), (0, 0), (missing, 0), (0, 0)))


def _left_pad_mask(m: np.ndarray, width: int) -> np.ndarray:
    missing = width - m.shape[1]
    return m if missing == 0 else np.pad(m, ((0, 0), (missing, 0)))


def make_runner(session, max_batch: int, max_context: int, device: str = "cpu"):
    cls = SharedBufferRunner if graph_kind(session) == "shared-kv" else ConcatRunner
    return cls(session, max_batch=max_batch, max_context=max_context, device=device)
