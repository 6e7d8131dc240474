"""Kafka topic names and CloudEvent types of the platform (DESIGN §3).

Types are named ``domain.entity.verb_past``. Every consumed topic has a dead-letter topic
``<topic>.dlq`` (see :func:`dlq`); :data:`ALL_TOPICS` lists every topic and its DLQ, which is what
the dev stack and ``ensure_topics`` create.
"""
from __future__ import annotations

# --------------------------------------------------------------------------- topics
INFERENCE_REQUESTS = "inference.requests"   # chat -> inference-worker (key: conversation id)
INFERENCE_RESULTS = "inference.results"     # inference-worker -> chat-results (key: conversation id)
TRAINING_JOBS = "training.jobs"             # models/admin -> training
TRAINING_EVENTS = "training.events"         # training progress and outcome
MODELS_EVENTS = "models.events"             # registry changes (versions, aliases, stages)
USERS_EVENTS = "users.events"               # auth -> users (account lifecycle)
GATEWAY_ASYNC = "gateway.async"             # the dev gateway's /async-function queue

DLQ_SUFFIX = ".dlq"


def dlq(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + DLQ_SUFFIX


TOPICS = (
    INFERENCE_REQUESTS,
    INFERENCE_RESULTS,
    TRAINING_JOBS,
    TRAINING_EVENTS,
    MODELS_EVENTS,
    USERS_EVENTS,
    GATEWAY_ASYNC,
)
ALL_TOPICS = tuple(t for topic in TOPICS for t in (topic, dlq(topic)))

# --------------------------------------------------------------------------- event types
AUTH_USER_REGISTERED = "auth.user.registered"
AUTH_USER_DELETED = "auth.user.deleted"
USERS_PROFILE_UPDATED = "users.profile.updated"

INFERENCE_REQUEST_SUBMITTED = "inference.request.submitted"
# Tokens of a generation as it runs: an append-only channel in the shared cache, written by
# inference-worker and read by chat (shared.storage.cache channel_append/channel_read).
TOKEN_CACHE_NAMESPACE = "inference"


def token_channel(request_id: str) -> str:
    """The cache channel carrying the tokens of one generation."""
    return f"tokens:{request_id}"


INFERENCE_RESULT_COMPLETED = "inference.result.completed"
INFERENCE_RESULT_FAILED = "inference.result.failed"

TRAINING_JOB_SUBMITTED = "training.job.submitted"
TRAINING_JOB_STARTED = "training.job.started"
TRAINING_JOB_SUCCEEDED = "training.job.succeeded"
TRAINING_JOB_FAILED = "training.job.failed"
TRAINING_JOB_CANCELLED = "training.job.cancelled"

MODELS_MODEL_CREATED = "models.model.created"
MODELS_VERSION_REGISTERED = "models.version.registered"
MODELS_VERSION_STAGE_CHANGED = "models.version.stage_changed"
MODELS_ALIAS_UPDATED = "models.alias.updated"

GATEWAY_INVOCATION_QUEUED = "gateway.invocation.queued"

# The default ``source`` of events we publish when none is configured (CloudEvents: a URI-reference).
DEFAULT_SOURCE = "/chatfaas"
