"""CloudEvents at the edge and event publishing (DESIGN §3).

- :mod:`shared.events.cloudevents`: ``CloudEvent``, ``parse_http_event`` and the Kafka mapping.
- :mod:`shared.events.publisher`: ``EventPublisher``, ``KafkaPublisher``, ``MemoryPublisher``,
  ``publisher_from_env``.
- :mod:`shared.events.kafka`: kafka-python settings that work on Kafka and tansu, ``ensure_topics``.
- :mod:`shared.events.types`: topic names and event types.

kafka-python is imported lazily: importing this package costs nothing.
"""
from shared.events import types
from shared.events.cloudevents import (
    CloudEvent,
    encode_data,
    from_kafka_record,
    parse_http_event,
    to_http_binary,
    to_kafka_headers,
    to_structured,
)
from shared.events.kafka import consumer_config, ensure_topics, producer_config
from shared.events.publisher import EventPublisher, KafkaPublisher, MemoryPublisher, publisher_from_env

__all__ = [
    "types",
    "CloudEvent",
    "parse_http_event",
    "from_kafka_record",
    "to_kafka_headers",
    "to_http_binary",
    "to_structured",
    "encode_data",
    "EventPublisher",
    "KafkaPublisher",
    "MemoryPublisher",
    "publisher_from_env",
    "consumer_config",
    "producer_config",
    "ensure_topics",
]
