"""Kafka: an idempotent producer, topic creation from the catalogue, and the consumer runner.

The runner's promise: an offset is committed only after the handler's work is durable; a
handler that fails is retried a bounded number of times with exponential backoff; a message
that still fails (or is malformed) goes to the dead-letter topic with its origin and the
reason, and the partition moves on. Handlers must be idempotent: a crash between the work and
the commit redelivers the message (see ``shared.store.insert_once`` and revision guards).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from shared.config import KafkaSettings, min_insync_replicas
from shared.contracts import CATALOGUE, DEAD_LETTER, DeadLetter, Topic
from shared.events import (
    HEADER_CORRELATION_ID,
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    Envelope,
    Event,
    utcnow,
)
from shared.logging import bind_correlation_id, current_correlation_id, get_logger

log = get_logger(__name__)

M = TypeVar("M", bound=BaseModel)

MESSAGES = Counter(
    "fleetdesk_messages_total",
    "Messages handled by consumers, by topic and outcome.",
    ["group", "topic", "outcome"],
)


class PermanentError(Exception):
    """The message can never succeed (malformed, unknown type): dead-letter it at once."""


# --- producing ------------------------------------------------------------------------------


class Publisher:
    """An idempotent producer (``acks=all``) that writes events with their envelope."""

    def __init__(self, settings: KafkaSettings, service: str) -> None:
        self._settings = settings
        self.service = service
        self._producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> Publisher:
        self._producer = AIOKafkaProducer(
            **self._settings.client_options(),
            client_id=f"{self.service}-producer",
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
        )
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("publisher is not started")
        return self._producer

    def envelope(self, event: Event, *, event_id: str | None = None) -> Envelope:
        extra: dict[str, Any] = {"event_id": event_id} if event_id else {}
        return Envelope(
            event_type=event.event_type,
            event_version=event.event_version,
            correlation_id=current_correlation_id(),
            producer=self.service,
            **extra,
        )

    async def publish(
        self, topic: Topic, key: str, event: Event, *, envelope: Envelope | None = None
    ) -> Envelope:
        """Write ``event`` and wait until the broker has it on all in-sync replicas."""
        if type(event) not in topic.events:
            raise ValueError(f"{event.event_type} does not belong on {topic.name}")
        env = envelope or self.envelope(event)
        await self.send_raw(topic.name, key, event.model_dump_json().encode(), env.to_headers())
        return env

    async def send_raw(
        self, topic: str, key: str | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        await self.producer.send_and_wait(
            topic, value=value, key=key.encode() if key is not None else None, headers=headers
        )


async def ensure_topics(
    settings: KafkaSettings, topics: tuple[Topic, ...] = CATALOGUE, *, wait_seconds: float = 60.0
) -> None:
    """Create the catalogue's topics that are missing (compacted ones with cleanup=compact).

    ``min.insync.replicas`` follows the replication factor (:func:`min_insync_replicas`).
    """
    admin = AIOKafkaAdminClient(**settings.client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                name=t.name,
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs={
                    "min.insync.replicas": str(min_insync_replicas(settings.replication_factor)),
                    **({"cleanup.policy": "compact"} if t.compacted else {}),
                },
            )
            for t in topics
            if t.name not in existing
        ]
        if new:
            try:
                await asyncio.wait_for(admin.create_topics(new), wait_seconds)
            except TopicAlreadyExistsError:
                pass  # another process created them first
    finally:
        await admin.close()


# --- consuming ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A consumed record with its envelope headers decoded."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes | None
    headers: Mapping[str, str]

    @property
    def event_id(self) -> str:
        """The producer's event id, or a stable one derived from the record's position."""
        return self.headers.get(HEADER_EVENT_ID) or f"{self.topic}:{self.partition}:{self.offset}"

    @property
    def event_type(self) -> str | None:
        return self.headers.get(HEADER_EVENT_TYPE)

    def parse(self, model: type[M]) -> M:
        """Validate the value against ``model``; a malformed value is a permanent error."""
        if self.value is None:
            raise PermanentError("empty value (tombstone) where an event was expected")
        try:
            return model.model_validate_json(self.value)
        except ValidationError as exc:
            raise PermanentError(f"invalid {model.__name__}: {_short(exc)}") from exc


def _short(exc: ValidationError) -> str:
    parts = [f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()]
    return "; ".join(parts)[:1000]


Handler = Callable[[Message], Awaitable[None]]


@dataclass
class Subscription:
    """Which handler serves which topic for one consumer group."""

    group: str
    handlers: dict[str, Handler]
    from_beginning: bool = True


@dataclass
class _Tracker(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commits what was processed before partitions move to another consumer."""

    consumer: AIOKafkaConsumer | None = None
    pending: dict[TopicPartition, int] = field(default_factory=dict)

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        due = {tp: off for tp, off in self.pending.items() if tp in revoked}
        if due and self.consumer is not None:
            await self.consumer.commit(due)
        for tp in revoked:
            self.pending.pop(tp, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        return None


class ConsumerRunner:
    """Runs one consumer group: handle, retry, dead-letter, commit after the work is durable."""

    def __init__(
        self,
        settings: KafkaSettings,
        subscription: Subscription,
        publisher: Publisher,
        *,
        client_id: str | None = None,
    ) -> None:
        self._settings = settings
        self._sub = subscription
        self._publisher = publisher
        self._client_id = client_id or subscription.group
        self._stopping = asyncio.Event()
        self.started = asyncio.Event()
        self._counters: dict[tuple[str, str], Any] = {}

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def group(self) -> str:
        return self._sub.group

    async def run(self) -> None:
        tracker = _Tracker()
        consumer = AIOKafkaConsumer(
            **self._settings.client_options(),
            group_id=self._sub.group,
            client_id=self._client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if self._sub.from_beginning else "latest",
            isolation_level="read_committed",
            max_poll_records=500,
        )
        tracker.consumer = consumer
        consumer.subscribe(list(self._sub.handlers), listener=tracker)
        await consumer.start()
        self.started.set()
        try:
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=500)
                for tp, records in batch.items():
                    for record in records:
                        if self._stopping.is_set():
                            break
                        await self._process(record)
                        tracker.pending[tp] = record.offset + 1
                    if tp in tracker.pending:
                        await consumer.commit({tp: tracker.pending.pop(tp)})
        finally:
            try:
                if tracker.pending:
                    await consumer.commit(dict(tracker.pending))
            finally:
                await consumer.stop()

    async def _process(self, record: Any) -> None:
        headers = {k: v.decode(errors="replace") for k, v in (record.headers or ())}
        msg = Message(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode(errors="replace") if record.key is not None else None,
            value=record.value,
            headers=headers,
        )
        bind_correlation_id(headers.get(HEADER_CORRELATION_ID))
        handler = self._sub.handlers[msg.topic]
        try:
            # The common case, without the retry machinery: one attempt that succeeds.
            await handler(msg)
        except PermanentError as exc:
            await self._dead_letter(msg, exc, 1)
            return
        except Exception as exc:  # retried below, then dead-lettered
            await self._retry(handler, msg, exc)
            return
        self._count(msg.topic, "ok")

    def _count(self, topic: str, outcome: str) -> None:
        counter = self._counters.get((topic, outcome))
        if counter is None:
            counter = self._counters[(topic, outcome)] = MESSAGES.labels(
                self._sub.group, topic, outcome
            )
        counter.inc()

    async def _retry(self, handler: Handler, msg: Message, first: Exception) -> None:
        """Attempts 2..n with exponential backoff; the first one failed with ``first``."""
        attempts = 1
        if self._settings.handler_attempts == 1:
            await self._dead_letter(msg, first, attempts)
            return
        await asyncio.sleep(self._settings.retry_backoff_ms / 1000)
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._settings.handler_attempts - 1),
                wait=wait_exponential(
                    multiplier=self._settings.retry_backoff_ms / 1000,
                    max=self._settings.retry_backoff_max_ms / 1000,
                ),
                # Only failures are retried: a cancellation (shutdown) must end the runner
                # before the commit, not be swallowed and turned into another attempt.
                retry=retry_if_exception_type(Exception)
                & retry_if_not_exception_type(PermanentError),
                reraise=True,
            ):
                with attempt:
                    attempts += 1
                    await handler(msg)
        except Exception as exc:  # parked with its reason, never swallowed
            await self._dead_letter(msg, exc, attempts)
            return
        self._count(msg.topic, "ok")

    async def _dead_letter(self, msg: Message, exc: Exception, attempts: int) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:2000]
        log.warning(
            "message dead-lettered",
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            event_id=msg.event_id,
            group=self._sub.group,
            reason=reason,
        )
        self._count(msg.topic, "dead_lettered")
        letter = DeadLetter(
            original_topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key=msg.key,
            event_id=msg.event_id,
            consumer_group=self._sub.group,
            error=reason,
            attempts=attempts,
            value=(msg.value or b"").decode(errors="replace"),
            failed_at=utcnow(),
        )
        # Raises if the broker does not take it: then nothing is committed and the message
        # comes back, rather than being lost.
        await self._publisher.publish(DEAD_LETTER, msg.topic, letter)


class Consumers:
    """Runs several consumer groups as tasks; stops them together."""

    def __init__(self, runners: list[ConsumerRunner]) -> None:
        self.runners = runners
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Consumers:
        self._tasks = [asyncio.create_task(self._supervise(r)) for r in self.runners]
        return self

    @staticmethod
    async def _supervise(runner: ConsumerRunner) -> None:
        """Restart a consumer that crashed (broker gone, dead-letter refused) with backoff."""
        delay = 0.5
        while not runner.stopping:
            try:
                await runner.run()
            except Exception as exc:
                log.error("consumer crashed; restarting", group=runner.group, error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def __aexit__(self, *exc: object) -> None:
        for r in self.runners:
            r.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def healthy(self) -> bool:
        return all(not t.done() for t in self._tasks)
