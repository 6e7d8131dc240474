"""A request without a system message gets the configured default one; an explicit one wins; an
empty setting leaves the model's own chat-template default."""
from __future__ import annotations

from functions.inference.generation import plan_generation
from functions.inference.lifecycle import LoadedModel
from functions.inference.protocol import SamplingParams
from functions.inference.settings import DEFAULT_SYSTEM_PROMPT, settings_from_env


class RecordingEngine:
    def __init__(self) -> None:
        self.seen: list[list[dict]] = []

    def encode_chat(self, messages):
        self.seen.append(messages)
        return [1, 2, 3]


def model(engine) -> LoadedModel:
    return LoadedModel(engine=engine, model_id="m", variant="int8", provider="CPUExecutionProvider",
                       context_length=8192, created=1, load_seconds=0.1, aliases=frozenset())


USER = [{"role": "user", "content": "What is the capital of France?"}]


def test_the_default_system_prompt_is_added_only_when_the_request_has_none():
    engine = RecordingEngine()
    plan_generation(model(engine), USER, SamplingParams(), max_tokens=8, default_max_tokens=8,
                    default_system_prompt="Be brief.")
    mine = [{"role": "system", "content": "Answer in French."}, *USER]
    plan_generation(model(engine), mine, SamplingParams(), max_tokens=8, default_max_tokens=8,
                    default_system_prompt="Be brief.")
    plan_generation(model(engine), USER, SamplingParams(), max_tokens=8, default_max_tokens=8,
                    default_system_prompt=None)
    assert engine.seen == [[{"role": "system", "content": "Be brief."}, *USER], mine, USER]


def test_the_setting_defaults_to_a_helpful_assistant_and_can_be_emptied():
    assert settings_from_env({}).default_system_prompt == DEFAULT_SYSTEM_PROMPT
    assert settings_from_env({"INFERENCE_DEFAULT_SYSTEM_PROMPT": ""}).default_system_prompt is None
