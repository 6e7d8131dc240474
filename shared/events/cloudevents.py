"""CloudEvents 1.0 at the edge: one dataclass, parsed from HTTP, mapped to and from Kafka records.

Deliveries a handler accepts (DESIGN §3), all through :func:`parse_http_event`:

- **Knative binary** (``KafkaSource``): attributes in ``ce-*`` headers, the data in the body.
- **Structured**: ``Content-Type: application/cloudevents+json``, the whole event in the body.
- **OpenFaaS connector**: ``X-Topic``, ``X-Kafka-Key``, ``X-Kafka-Partition``, ``X-Kafka-Offset``
  and the record value as body. The id comes from ``ce-id`` when present, else it is derived as
  ``<topic>-<partition>-<offset>`` (stable across redeliveries, so idempotency still works).
  Our own connector sends both the ``ce-*`` and the ``X-*`` headers; both are read.

On Kafka we use the binary content mode of the CloudEvents Kafka binding: the value is the JSON
data, the attributes ride as ``ce_<name>`` headers with ``content-type``, and the record key is
the partition key (a conversation id, a user id...). Malformed input raises ``BadRequestError``.
"""
from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping
from urllib.parse import quote, unquote

from shared.errors import BadRequestError

__all__ = [
    "CloudEvent",
    "parse_http_event",
    "to_kafka_headers",
    "encode_data",
    "from_kafka_record",
    "to_http_binary",
    "to_structured",
    "KNATIVE_KAFKA_TYPE",
]

SPEC_VERSION = "1.0"
JSON = "application/json"
STRUCTURED = "application/cloudevents+json"
KNATIVE_KAFKA_TYPE = "dev.knative.kafka.event"  # what KafkaSource calls a record that is no CloudEvent

# Attributes with a field of their own; anything else in ce-* / ce_* is an extension.
_CONTEXT = ("specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema")


@dataclass
class CloudEvent:
    """A CloudEvent plus where it came from on Kafka (``topic``, ``partition``, ``offset``, ``key``)."""

    id: str
    source: str
    type: str
    subject: str | None = None
    time: str | None = None  # RFC 3339
    data: Any = None
    extensions: dict[str, str] = field(default_factory=dict)
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    datacontenttype: str | None = JSON
    dataschema: str | None = None
    specversion: str = SPEC_VERSION

    @classmethod
    def new(
        cls,
        source: str,
        type: str,
        data: Any,
        *,
        id: str | None = None,
        subject: str | None = None,
        extensions: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> "CloudEvent":
        """A fresh event: a random id unless given, the current time."""
        return cls(
            id=id or str(uuid.uuid4()),
            source=source,
            type=type,
            subject=subject,
            time=datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            data=data,
            extensions=_check_extensions(extensions or {}),
            key=key,
        )

    def attributes(self) -> dict[str, str]:
        """Every set context attribute and extension as strings (the binary-mode headers' values)."""
        attrs = {name: getattr(self, name) for name in _CONTEXT if name != "datacontenttype"}
        attrs.update(self.extensions)
        return {k: str(v) for k, v in attrs.items() if v is not None and v != ""}

    @property
    def time_epoch(self) -> float | None:
        """``time`` as epoch seconds (None when absent or unreadable)."""
        return _epoch(self.time)


def _epoch(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def _check_extensions(extensions: Mapping[str, Any]) -> dict[str, str]:
    checked = {}
    for name, value in extensions.items():
        # CloudEvents §3.1.1: lower-case ASCII letters and digits only.
        if not name or not name.isascii() or not name.isalnum() or name.lower() != name or name in _CONTEXT:
            raise ValueError(f"invalid CloudEvents extension name: {name!r}")
        if value is not None:
            checked[name] = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return checked


# --------------------------------------------------------------------------- data encoding

def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True  # our producers always send JSON; a missing type is read as JSON
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON or media.endswith("+json") or media == "text/json"


def encode_data(event: CloudEvent) -> bytes:
    """The event's data as bytes for a Kafka value or an HTTP body (binary mode)."""
    if event.data is None:
        return b""
    if isinstance(event.data, (bytes, bytearray)):
        return bytes(event.data)
    if _is_json(event.datacontenttype):
        return json.dumps(event.data, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return str(event.data).encode()


def _decode_data(body: bytes | str | None, content_type: str | None) -> Any:
    raw = body.encode() if isinstance(body, str) else (body or b"")
    if not raw.strip():
        return None
    if _is_json(content_type):
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequestError("the event data is not valid JSON", code="invalid_event") from None
    if content_type and content_type.lower().startswith("text/"):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequestError("the event data is not valid UTF-8", code="invalid_event") from None
    return raw


# --------------------------------------------------------------------------- HTTP

# CloudEvents HTTP binding §3.1.3.2: header values are percent-encoded outside printable ASCII.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%') + " "


def _lower(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    items = headers.items() if hasattr(headers, "items") else headers
    return {str(k).lower(): str(v) for k, v in items}


def _bad(message: str) -> BadRequestError:
    return BadRequestError(message, code="invalid_event")


def _required(attrs: Mapping[str, Any], name: str) -> str:
    value = attrs.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"the CloudEvent has no {name!r}")
    return value


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise _bad(f"header {name} must be an integer") from None


def _from_attributes(attrs: Mapping[str, Any], data: Any) -> CloudEvent:
    if attrs.get("specversion") != SPEC_VERSION:
        raise _bad(f"unsupported CloudEvents specversion {attrs.get('specversion')!r} (expected 1.0)")
    return CloudEvent(
        id=_required(attrs, "id"),
        source=_required(attrs, "source"),
        type=_required(attrs, "type"),
        subject=attrs.get("subject") or None,
        time=attrs.get("time") or None,
        data=data,
        datacontenttype=attrs.get("datacontenttype") or None,
        dataschema=attrs.get("dataschema") or None,
        extensions={k: str(v) for k, v in attrs.items() if k not in _CONTEXT and k not in ("data", "data_base64")},
    )


def _parse_structured(body: bytes | str) -> CloudEvent:
    try:
        doc = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError):
        raise _bad("the structured CloudEvent is not valid JSON") from None
    if not isinstance(doc, dict):
        raise _bad("a structured CloudEvent must be a JSON object")
    if "data_base64" in doc:
        try:
            data: Any = base64.b64decode(doc["data_base64"], validate=True)
        except (ValueError, TypeError):
            raise _bad("data_base64 is not valid base64") from None
    else:
        data = doc.get("data")
    attrs = {k: v for k, v in doc.items() if k not in ("data", "data_base64")}
    for name, value in attrs.items():
        # Context attributes are strings; extensions may also be integers or booleans (§2.3).
        allowed = (str,) if name in _CONTEXT else (str, int, bool)
        if value is not None and not isinstance(value, allowed):
            raise _bad(f"CloudEvent attribute {name!r} has an invalid type")
    return _from_attributes(attrs, data)


def _looks_structured(data: Any) -> bool:
    return isinstance(data, dict) and data.get("specversion") == SPEC_VERSION and "id" in data and "type" in data


def parse_http_event(headers: Mapping[str, str] | Iterable[tuple[str, str]], body: bytes | str | None) -> CloudEvent:
    """The CloudEvent of an HTTP delivery (Knative binary or structured, or the OpenFaaS connector)."""
    h = _lower(headers)
    content_type = h.get("content-type", "")
    body = body if body is not None else b""
    if content_type.lower().startswith("application/cloudevents-batch"):
        raise _bad("batched CloudEvents are not supported; deliver one event per request")
    if content_type.lower().startswith(STRUCTURED):
        event = _parse_structured(body)
    elif "ce-specversion" in h:
        attrs = {name[3:]: unquote(value) for name, value in h.items() if name.startswith("ce-")}
        attrs["datacontenttype"] = content_type or None
        event = _from_attributes(attrs, _decode_data(body, content_type))
    elif "x-topic" in h:
        event = _parse_connector(h, body, content_type)
    else:
        raise _bad("not a CloudEvent: no ce-* headers, no structured body and no X-Topic header")
    return _with_kafka_origin(event, h)


def _parse_connector(h: Mapping[str, str], body: bytes | str, content_type: str) -> CloudEvent:
    topic = h["x-topic"].strip()
    if not topic:
        raise _bad("header X-Topic is empty")
    data = _decode_data(body, content_type)
    if _looks_structured(data):  # a record produced in structured mode
        return _parse_structured(body)
    partition, offset = _int_header(h, "x-kafka-partition"), _int_header(h, "x-kafka-offset")
    event_id = h.get("ce-id") or (f"{topic}-{partition}-{offset}" if partition is not None and offset is not None else "")
    if not event_id:
        raise _bad("the event has no id: send ce-id or X-Kafka-Partition and X-Kafka-Offset")
    return CloudEvent(
        id=event_id,
        source=unquote(h.get("ce-source") or f"kafka://{topic}"),
        type=unquote(h.get("ce-type") or KNATIVE_KAFKA_TYPE),
        subject=unquote(h["ce-subject"]) if h.get("ce-subject") else None,
        time=h.get("ce-time") or None,
        data=data,
        datacontenttype=content_type or None,
    )


def _with_kafka_origin(event: CloudEvent, h: Mapping[str, str]) -> CloudEvent:
    key = h.get("x-kafka-key")
    if key is None:  # Knative's KafkaSource carries the record key as an extension
        key = event.extensions.get("partitionkey") or event.extensions.get("key")
    return replace(
        event,
        topic=h.get("x-topic") or event.topic,
        partition=_int_header(h, "x-kafka-partition"),
        offset=_int_header(h, "x-kafka-offset"),
        key=key,
    )


def to_http_binary(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Headers and body of a binary-mode HTTP delivery, with the connector's ``X-*`` headers too."""
    headers = {f"ce-{name}": quote(value, safe=_HEADER_SAFE) for name, value in event.attributes().items()}
    headers["Content-Type"] = event.datacontenttype or JSON
    if event.topic:
        headers["X-Topic"] = event.topic
    if event.partition is not None:
        headers["X-Kafka-Partition"] = str(event.partition)
    if event.offset is not None:
        headers["X-Kafka-Offset"] = str(event.offset)
    if event.key is not None:
        headers["X-Kafka-Key"] = event.key
    return headers, encode_data(event)


def to_structured(event: CloudEvent) -> dict[str, Any]:
    """The event as a structured-mode JSON document."""
    doc: dict[str, Any] = dict(event.attributes())
    if event.datacontenttype:
        doc["datacontenttype"] = event.datacontenttype
    if isinstance(event.data, (bytes, bytearray)):
        doc["data_base64"] = base64.b64encode(event.data).decode()
    elif event.data is not None:
        doc["data"] = event.data
    return doc


# --------------------------------------------------------------------------- Kafka

def to_kafka_headers(event: CloudEvent) -> list[tuple[str, bytes]]:
    """Binary content mode: ``ce_<attribute>`` headers plus ``content-type``."""
    headers = [(f"ce_{name}", value.encode("utf-8")) for name, value in event.attributes().items()]
    headers.append(("content-type", (event.datacontenttype or JSON).encode()))
    return headers


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def from_kafka_record(record: Any) -> CloudEvent:
    """The CloudEvent of a consumed record (kafka-python ``ConsumerRecord`` or alike).

    Binary mode (``ce_*`` headers) and structured values are read as such; any other record gets
    the attributes Knative's KafkaSource would give it (id ``<topic>-<partition>-<offset>``).
    """
    headers = {k.lower(): _text(v) or "" for k, v in (record.headers or ())}
    content_type = headers.get("content-type") or headers.get("ce_datacontenttype")
    key = _text(record.key)
    if "ce_specversion" in headers:
        attrs: dict[str, Any] = {k[3:]: v for k, v in headers.items() if k.startswith("ce_")}
        attrs["datacontenttype"] = content_type
        event = _from_attributes(attrs, _decode_data(record.value, content_type))
    elif content_type and content_type.lower().startswith(STRUCTURED):
        event = _parse_structured(record.value)
    else:
        data = _decode_data(record.value, content_type)
        event = (
            _parse_structured(record.value)
            if _looks_structured(data)
            else CloudEvent(
                id=f"{record.topic}-{record.partition}-{record.offset}",
                source=f"kafka://{record.topic}",
                type=KNATIVE_KAFKA_TYPE,
                data=data,
                datacontenttype=content_type,
            )
        )
    return replace(event, topic=record.topic, partition=record.partition, offset=record.offset, key=key)
