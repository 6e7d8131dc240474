"""The model lifecycle on its own: readiness follows the load, a failed load is retried, and
requests meet a 503 with Retry-After until then. The loader here is a stand-in; the real engine
and model are exercised through the processes in the other test modules."""
from __future__ import annotations

import threading
import time

import pytest

from shared.errors import UnavailableError

from functions.inference.lifecycle import LoadedModel, ModelLifecycle
from functions.inference.settings import settings_from_env


def loaded(model_id: str = "m") -> LoadedModel:
    return LoadedModel(engine=object(), model_id=model_id, variant="int8", provider="CPUExecutionProvider",
                       context_length=8192, created=1, load_seconds=0.5, aliases=frozenset({"alias"}))


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_requests_get_503_until_the_load_finishes_then_ready_shows_the_model():
    release = threading.Event()

    def slow_loader(settings):
        release.wait(10)
        return loaded()

    lifecycle = ModelLifecycle("test", settings_factory=settings_from_env, loader=slow_loader)
    ok, details = lifecycle.readiness()  # starts the load
    assert (ok, details["state"]) == (False, "loading")
    with pytest.raises(UnavailableError) as caught:
        lifecycle.model()
    assert caught.value.code == "model_not_ready" and int(caught.value.headers["Retry-After"]) >= 1

    release.set()
    wait_until(lambda: lifecycle.ready)

    ok, details = lifecycle.readiness()
    assert ok and details["model"] == "m" and details["variant"] == "int8"
    assert details["provider"] == "CPUExecutionProvider"
    assert lifecycle.model().serves("m") and lifecycle.model().serves("alias") and not lifecycle.model().serves("x")


def test_a_failed_load_is_reported_and_retried():
    attempts = []

    def flaky_loader(settings):
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise OSError("the artefact store is down")
        return loaded()

    lifecycle = ModelLifecycle("test", settings_factory=settings_from_env, loader=flaky_loader)
    lifecycle.start()
    wait_until(lambda: attempts)
    wait_until(lambda: "last_error" in lifecycle.readiness()[1] or lifecycle.ready)
    if not lifecycle.ready:
        assert "artefact store is down" in lifecycle.readiness()[1]["last_error"]
    wait_until(lambda: lifecycle.ready)
    assert len(attempts) == 2


def test_the_model_is_loaded_once_however_many_requests_start_it():
    calls = []

    def loader(settings):
        calls.append(1)
        return loaded()

    lifecycle = ModelLifecycle("test", settings_factory=settings_from_env, loader=loader)
    threads = [threading.Thread(target=lifecycle.start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until(lambda: lifecycle.ready)
    lifecycle.start()
    assert calls == [1]


def test_auto_variant_is_fp16_on_cuda_and_int8_on_cpu():
    from functions.inference.lifecycle import resolve_variant

    assert resolve_variant("auto", "CUDAExecutionProvider") == "fp16"
    assert resolve_variant("auto", "CPUExecutionProvider") == "int8"
    assert resolve_variant("auto", None) == "int8"  # no GPU on this machine
    assert resolve_variant("int8-optimum", "CUDAExecutionProvider") == "int8-optimum"
    assert settings_from_env({}).variant == "auto"
