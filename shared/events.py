"""The event envelope and the base of every event contract.

An event travels as a Kafka record: the value is the event's JSON payload, the envelope rides
in the record's headers (``event_id``, ``event_type``, ``event_version``, ``occurred_at``,
``correlation_id``, ``producer``). Records written by systems outside the platform (the
eMaintenance telemetry, the billing feed) carry no envelope; the consumer runner derives a
stable event id for them from topic, partition and offset.
"""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime
from typing import ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field

HEADER_EVENT_ID = "event_id"
HEADER_EVENT_TYPE = "event_type"
HEADER_EVENT_VERSION = "event_version"
HEADER_OCCURRED_AT = "occurred_at"
HEADER_CORRELATION_ID = "correlation_id"
HEADER_PRODUCER = "producer"


def new_event_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_json(model: type[ModelT], data: bytes | str) -> ModelT:
    """``model.model_validate_json(data)``: the same validation, result and errors, straight to
    pydantic-core's validator. pydantic's wrapper passes five keyword arguments on every call,
    which cost as much as validating a small event (a telemetry report: 4.8 against 2.4 µs);
    consumers call this for every record."""
    parsed: ModelT = model.__pydantic_validator__.validate_json(data)
    return parsed


class Event(BaseModel):
    """Base of every event payload: names its type and version once, as class variables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_type: ClassVar[str]
    event_version: ClassVar[int] = 1


class Envelope(BaseModel):
    """What every platform event carries besides its payload (in the Kafka headers)."""

    model_config = ConfigDict(frozen=True)

    event_id: str = Field(default_factory=new_event_id, description="Unique id; dedup key.")
    event_type: str = Field(description="Dotted name of the payload's contract.")
    event_version: int = Field(1, ge=1, description="Version of the payload's contract.")
    occurred_at: datetime = Field(default_factory=utcnow, description="When it happened (UTC).")
    correlation_id: str | None = Field(None, description="Id of the flow this event belongs to.")
    producer: str = Field(description="Name of the service that produced the event.")

    def to_headers(self) -> list[tuple[str, bytes]]:
        return envelope_headers(
            self.event_id,
            self.event_type,
            self.producer,
            event_version=self.event_version,
            occurred_at=self.occurred_at,
            correlation_id=self.correlation_id,
        )


def envelope_headers(
    event_id: str,
    event_type: str,
    producer: str,
    *,
    event_version: int = 1,
    occurred_at: datetime,
    correlation_id: str | None = None,
) -> list[tuple[str, bytes]]:
    """An :class:`Envelope` as Kafka headers, for callers that publish many events at once
    from values they already checked (no model built per event; the headers events of one
    batch share are encoded once)."""
    headers = [
        (HEADER_EVENT_ID, event_id.encode()),
        *_shared_headers(event_type, event_version, occurred_at, producer),
    ]
    if correlation_id:
        headers.append((HEADER_CORRELATION_ID, correlation_id.encode()))
    return headers


@functools.lru_cache(maxsize=64)
def _shared_headers(
    event_type: str, event_version: int, occurred_at: datetime, producer: str
) -> tuple[tuple[str, bytes], ...]:
    return (
        (HEADER_EVENT_TYPE, event_type.encode()),
        (HEADER_EVENT_VERSION, str(event_version).encode()),
        (HEADER_OCCURRED_AT, occurred_at.isoformat().encode()),
        (HEADER_PRODUCER, producer.encode()),
    )
