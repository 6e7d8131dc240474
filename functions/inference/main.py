"""The inference function's entry points (one per process; same image, different FUNCTION_TARGET):

- ``inference``: the OpenAI-compatible HTTP API (``/v1/chat/completions``, ``/v1/models``).
- ``inference_worker``: generation for ``inference.requests`` events (Kafka connector / KafkaSource).

Both share one :class:`ModelLifecycle`, so HTTP requests and events in one process join the
same continuous batch. Settings are read here, at import, so a bad value fails the boot.
"""
from __future__ import annotations

import functions_framework

from shared.http import App, Request

from functions.inference.errors import openai_error_body
from functions.inference.lifecycle import ModelLifecycle
from functions.inference.serving import ChatCompletionsService, parse_chat_request
from functions.inference.settings import settings_from_env
from functions.inference.worker import InferenceWorker

settings = settings_from_env()
lifecycle = ModelLifecycle("inference", settings_factory=lambda: settings)
lifecycle.start_after_fork()

# -- the OpenAI API ----------------------------------------------------------------------
app = App("inference", error_body=openai_error_body)
app.readiness_check(lifecycle.readiness)
chat = ChatCompletionsService(lifecycle, default_max_tokens=settings.default_max_tokens, function_name="inference",
                              default_system_prompt=settings.default_system_prompt)


# With INFERENCE_AUTH=user, OpenAI clients pass a platform access token as their api_key (the
# SDK sends it as "Authorization: Bearer …"); health, readiness and metrics stay open.
@app.route("/v1/chat/completions", methods=["POST"], auth=settings.api_auth)
def chat_completions(request: Request):
    return chat.create(parse_chat_request(request))


@app.route("/v1/models", auth=settings.api_auth)
def list_models(request: Request):
    return chat.list_models()


@app.route("/v1/models/<path:model>", auth=settings.api_auth)
def get_model(request: Request):
    return chat.get_model(request.params["model"])


# -- the Kafka-triggered worker ----------------------------------------------------------
worker_app = App("inference-worker")
worker_app.readiness_check(lifecycle.readiness)
worker = InferenceWorker(lifecycle, settings, function_name="inference-worker")


@worker_app.route("/", methods=["POST"])
def handle_event(request: Request):
    return worker.handle(request.headers, request.data())


@functions_framework.http
def inference(flask_request):
    lifecycle.start()  # no-op once loading has started in this process
    return app.handle(flask_request)


@functions_framework.http
def inference_worker(flask_request):
    lifecycle.start()
    return worker_app.handle(flask_request)
