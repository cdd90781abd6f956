"""Live updates: the events of tickets, devices and meters, kept in a bounded ring per instance.

Why in memory: the events are on Kafka already, and the stream is about the last seconds. Each
notify instance reads every partition (a consumer group of its own, from the newest offset) and
keeps the last N events with an id that grows by one per event; the id carries the instance's
epoch (``<epoch>-<seq>``), so a client that reconnects with ``Last-Event-ID`` resumes exactly
where it was on the same instance, and is told to reload (event ``reset``) when it lands on
another instance or fell out of the ring. Nothing is written to MongoDB per event, which
matters for the meter stream's volume.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from collections.abc import AsyncIterator

from services.notify.core.visibility import LiveEvent, may_see
from shared import contracts as c
from shared.auth import Principal
from shared.bus import Handler, Message, PermanentError
from shared.events import Event

STREAM_TOPICS = (c.TICKET_EVENTS, c.DEVICE_EVENTS, c.METER_EVENTS, c.DEVICES)
_MODELS: dict[str, type[Event]] = {
    model.event_type: model for topic in STREAM_TOPICS for model in topic.events
}


class StreamHub:
    def __init__(self, size: int) -> None:
        self.epoch = uuid.uuid4().hex[:8]
        self._events: deque[LiveEvent] = deque(maxlen=size)
        self._seq = 0
        self._changed = asyncio.Condition()

    async def publish(self, event: LiveEvent) -> None:
        async with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def event_id(self, event: LiveEvent) -> str:
        return f"{self.epoch}-{event.seq}"

    def resume_point(self, last_event_id: str | None) -> int | None:
        """The sequence to continue after, or None when the client must reload."""
        if not last_event_id:
            return self._seq  # a new client: from now on
        epoch, _, seq = last_event_id.partition("-")
        if epoch != self.epoch or not seq.isdigit():
            return None
        oldest = self._events[0].seq if self._events else self._seq + 1
        if int(seq) < oldest - 1:
            return None  # fell out of the ring
        return int(seq)

    async def follow(self, after: int, heartbeat: float) -> AsyncIterator[LiveEvent | None]:
        """Events after ``after``, as they come; None every ``heartbeat`` seconds of quiet."""
        while True:
            fresh = [e for e in self._events if e.seq > after]
            if fresh:
                for e in fresh:
                    yield e
                after = fresh[-1].seq
                continue
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), heartbeat)
                except TimeoutError:
                    yield None


def live_event(hub: StreamHub, msg: Message) -> LiveEvent | None:
    model = _MODELS.get(msg.event_type or "")
    if model is None:
        return None  # a kind this instance does not know yet
    event = msg.parse(model)
    data = event.model_dump(mode="json")
    people = {data.get(k) for k in ("created_by", "technician_id", "submitted_by")}
    return LiveEvent(
        seq=hub.next_seq(),
        event_type=event.event_type,
        org_id=data.get("org_id"),
        device_id=data.get("device_id"),
        data=data,
        people=frozenset(p for p in people if isinstance(p, str)),
    )


def handler(hub: StreamHub) -> Handler:
    async def handle(msg: Message) -> None:
        try:
            event = live_event(hub, msg)
        except PermanentError:
            return  # malformed: the owning consumers dead-letter it; the stream skips it
        if event is not None:
            await hub.publish(event)

    return handle


def sse(event_id: str | None, kind: str, data: object) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def stream_for(
    hub: StreamHub, principal: Principal, last_event_id: str | None, heartbeat: float = 15.0
) -> AsyncIterator[str]:
    after = hub.resume_point(last_event_id)
    if after is None:
        yield sse(None, "reset", {"reason": "cannot resume; reload the current state"})
        after = hub.resume_point(None)
        assert after is not None
    yield ": connected\n\n"
    async for event in hub.follow(after, heartbeat):
        if event is None:
            yield ": keep-alive\n\n"
        elif may_see(principal, event):
            yield sse(hub.event_id(event), event.event_type, event.data)
