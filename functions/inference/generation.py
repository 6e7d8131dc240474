"""From validated messages and sampling knobs to a running generation: the token budget checks
both front ends (HTTP API and worker) share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.errors import BadRequestError

from functions.inference.lifecycle import LoadedModel
from functions.inference.protocol import SamplingParams

DEFAULT_TEMPERATURE = 1.0  # OpenAI's defaults
DEFAULT_TOP_P = 1.0


def context_length_exceeded(message: str) -> BadRequestError:
    return BadRequestError(message, code="context_length_exceeded", param="messages")


@dataclass(frozen=True)
class GenerationPlan:
    prompt_ids: list[int]
    params: Any  # functions.inference.engine.GenerationParams

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)


def plan_generation(
    model: LoadedModel,
    messages: list[dict[str, str]],
    sampling: SamplingParams,
    *,
    max_tokens: int | None,
    default_max_tokens: int,
    default_system_prompt: str | None = None,
) -> GenerationPlan:
    """Encode the chat and fix the completion budget; 400 when it cannot fit the context.

    As OpenAI: an explicit ``max_tokens`` must fit beside the prompt; without one, the
    completion gets what is left of the context, capped by ``default_max_tokens``. A request
    without a system message gets ``default_system_prompt`` (when configured).
    """
    from functions.inference.engine import GenerationParams  # heavy: onnxruntime

    context = model.context_length
    if default_system_prompt and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": default_system_prompt}, *messages]
    if max_tokens is not None and max_tokens > context:
        raise BadRequestError(
            f"max_tokens is too large: {max_tokens}. This model's maximum context length is {context} tokens.",
            code="invalid_value",
            param="max_tokens",
        )
    prompt_ids = list(model.engine.encode_chat(messages))
    prompt = len(prompt_ids)
    if max_tokens is None:
        if prompt >= context:
            raise context_length_exceeded(
                f"This model's maximum context length is {context} tokens. However, your messages "
                f"resulted in {prompt} tokens. Please reduce the length of the messages."
            )
        max_tokens = min(default_max_tokens, context - prompt)
    elif prompt + max_tokens > context:
        raise context_length_exceeded(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion."
        )
    params = GenerationParams(
        max_tokens=max_tokens,
        temperature=DEFAULT_TEMPERATURE if sampling.temperature is None else sampling.temperature,
        top_p=DEFAULT_TOP_P if sampling.top_p is None else sampling.top_p,
        stop=list(sampling.stop or []),
        # OpenAI seeds are int64; the engine's generators want a non-negative seed.
        seed=None if sampling.seed is None else sampling.seed % 2**64,
    )
    return GenerationPlan(prompt_ids, params)


def submit(model: LoadedModel, plan: GenerationPlan) -> Any:
    """Join the engine's continuous batch; the engine's own length check maps to the same 400."""
    from functions.inference.engine import PromptTooLongError

    try:
        return model.engine.submit(plan.prompt_ids, plan.params)
    except PromptTooLongError as exc:
        raise context_length_exceeded(str(exc)) from None
