"""Kafka: an idempotent producer, topic creation from the catalogue, and the consumer runner.

The runner's promise: an offset is committed only after the handler's work is durable. A
failure is classified (:func:`classify`): input that can never succeed goes to the dead-letter
topic at once, with its origin, its original bytes (bounded) and the reason; an unavailable
dependency (database, broker) pauses the partition and is retried without limit, committing
nothing, so an outage never turns into lost events; anything else gets a bounded number of
attempts before the dead-letter topic. Handlers must be idempotent: a crash between the work
and the commit, or a retried batch, redelivers messages (see ``shared.store.insert_once`` and
revision guards). ``python -m shared.deadletters`` lists and replays dead letters.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RebalanceInProgressError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    UnknownMemberIdError,
)
from murmurhash2 import murmurhash2
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, ValidationError
from pymongo.errors import (
    ConnectionFailure,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WTimeoutError,
)

from shared.config import KafkaSettings, min_insync_replicas
from shared.contracts import CATALOGUE, DEAD_LETTER, DeadLetter, RecordHeader, Topic
from shared.events import (
    HEADER_CORRELATION_ID,
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    Envelope,
    Event,
    parse_json,
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


BATCH_SIZE = Histogram(
    "fleetdesk_consumer_batch_size",
    "Records of one partition from one fetch given to a batch handler.",
    ["group", "topic"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)
INFRA_FAILURES = Counter(
    "fleetdesk_consumer_infrastructure_failures_total",
    "Handler failures caused by an unavailable dependency (the partition paused and retried).",
    ["group", "topic"],
)
PAUSED_PARTITIONS = Gauge(
    "fleetdesk_consumer_paused_partitions",
    "Partitions paused because a dependency is unavailable.",
    ["group"],
)
RESTARTS = Counter(
    "fleetdesk_consumer_restarts_total",
    "Times a consumer crashed and was restarted by its supervisor.",
    ["group"],
)
CRASH_LOOPING = Gauge(
    "fleetdesk_consumer_crash_looping",
    "1 while a consumer is down after a crash or keeps crashing, else 0.",
    ["group"],
)

MAX_BATCH = 500
POLL_MS = 200
CRASH_LOOP_AFTER = 3
"""Consecutive crashes, without a healthy run between them, that count as a crash loop."""

# Bounds of a dead letter's copy of the record, so that a letter always fits the broker's
# default 1 MiB (the value's own bound is ``KafkaSettings.dead_letter_max_value_bytes``).
DEAD_LETTER_TEXT_PREVIEW_BYTES = 16 * 1024
DEAD_LETTER_MAX_KEY_BYTES = 16 * 1024
DEAD_LETTER_MAX_HEADER_BYTES = 64 * 1024
DEAD_LETTER_MAX_HEADERS = 100


class PermanentError(Exception):
    """The message can never succeed (malformed, unknown type): dead-letter it at once."""


class InfrastructureError(Exception):
    """A dependency is unavailable: retry the message later, without limit (never dead-letter).

    Handlers may raise it (or chain it) for failures the runner cannot recognise by type.
    """


# --- clients: every Kafka client is made here, with the platform's connection settings -------


# Brokers and security come from ``KafkaSettings.client_options`` (SASL, TLS).


KAFKA_MURMUR2_SEED = 0x9747B28C


def kafka_partition(key: bytes, partitions: Sequence[int]) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions`` (sorted):
    murmur2 of the key, as every Kafka client computes it. Compiled (``murmurhash2``): aiokafka's
    own murmur2 is pure Python, about 13 µs a key against 0.4 (a unit test holds them equal)."""
    return partitions[(murmurhash2(key, KAFKA_MURMUR2_SEED) & 0x7FFFFFFF) % len(partitions)]


def partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's ``DefaultPartitioner`` on :func:`kafka_partition`: a keyless record goes to a
    random available partition."""
    if key is None:
        return random.choice(available or all_partitions)
    return kafka_partition(key, all_partitions)


def new_producer(settings: KafkaSettings, **options: Any) -> AIOKafkaProducer:
    options.setdefault("partitioner", partitioner)
    return AIOKafkaProducer(**settings.client_options(), **options)


def new_consumer(settings: KafkaSettings, **options: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(**settings.client_options(), **options)


def new_admin(settings: KafkaSettings, **options: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**settings.client_options(), **options)


# --- producing ------------------------------------------------------------------------------


class Publisher:
    """An idempotent producer (``acks=all``) that writes events with their envelope."""

    def __init__(self, settings: KafkaSettings, service: str) -> None:
        self._settings = settings
        self.service = service
        self._producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> Publisher:
        self._producer = new_producer(
            self._settings,
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
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
    ) -> None:
        raw_key = key.encode() if isinstance(key, str) else key
        await self.producer.send_and_wait(topic, value=value, key=raw_key, headers=headers)


async def ensure_topics(
    settings: KafkaSettings, topics: tuple[Topic, ...] = CATALOGUE, *, wait_seconds: float = 60.0
) -> None:
    """Create the catalogue's topics that are missing (compacted ones with cleanup=compact).

    ``min.insync.replicas`` follows the replication factor (:func:`min_insync_replicas`).
    """
    admin = new_admin(settings)
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
    """A consumed record with its envelope headers decoded (and its raw key and headers)."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes | None
    headers: Mapping[str, str]
    raw_key: bytes | None = None
    """The key's bytes as consumed (``key`` is their UTF-8 text, invalid bytes replaced)."""
    raw_headers: tuple[tuple[str, bytes], ...] = ()
    """Every header as consumed, in order, duplicates kept (for dead letters and replay)."""

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
            return parse_json(model, self.value)
        except ValidationError as exc:
            raise PermanentError(f"invalid {model.__name__}: {_short(exc)}") from exc

    @classmethod
    def of(cls, record: Any) -> Message:
        """The message of a consumed aiokafka record."""
        raw_headers = tuple(record.headers or ())
        key = record.key
        return cls(
            record.topic,
            record.partition,
            record.offset,
            key.decode(errors="replace") if key is not None else None,
            record.value,
            {k: v.decode(errors="replace") for k, v in raw_headers},
            key,
            raw_headers,
        )


def _short(exc: ValidationError) -> str:
    parts = [f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()]
    return "; ".join(parts)[:1000]


Handler = Callable[[Message], Awaitable[None]]
BatchHandler = Callable[[list[Message]], Awaitable[list[tuple[Message, Exception]]]]
PartitionsHook = Callable[[list[TopicPartition]], Awaitable[None]]
"""Handles the records of one partition from one fetch, in offset order, and returns the ones
that are permanently bad, each with its exception (the runner dead-letters them). Raising an
infrastructure error retries the whole batch later; raising anything else makes the runner
call it again one message at a time to isolate the bad one(s). Must be idempotent."""


@dataclass
class Subscription:
    """Which handler serves which topic for one consumer group.

    A topic is served either one message at a time (``handlers``) or a partition's batch at a
    time (``batch_handlers``), not both.
    """

    group: str
    handlers: dict[str, Handler] = field(default_factory=dict)
    from_beginning: bool = True
    batch_handlers: dict[str, BatchHandler] = field(default_factory=dict)
    on_assigned: PartitionsHook | None = None
    """Called with the partitions this consumer was given (before their records are fetched)."""
    on_revoked: PartitionsHook | None = None
    """Called with the partitions taken away (after their handled offsets are committed)."""

    def __post_init__(self) -> None:
        both = set(self.handlers) & set(self.batch_handlers)
        if both:
            raise ValueError(f"topics with both a handler and a batch handler: {sorted(both)}")
        if not self.handlers and not self.batch_handlers:
            raise ValueError(f"subscription {self.group} has no topic")

    @property
    def topics(self) -> list[str]:
        return [*self.handlers, *self.batch_handlers]


# --- failure classes ------------------------------------------------------------------------


class Failure(Enum):
    """What a handler's exception means for the message."""

    PERMANENT = "permanent"
    """The input can never succeed: dead-letter it at once."""
    INFRASTRUCTURE = "infrastructure"
    """A dependency is unavailable: retry without limit, pause the partition, commit nothing."""
    UNKNOWN = "unknown"
    """Anything else: a bounded number of attempts, then the dead-letter topic."""


_PERMANENT: tuple[type[BaseException], ...] = (
    PermanentError,
    ValidationError,
    json.JSONDecodeError,
    UnicodeDecodeError,
    # A record the broker will never take (too large) cannot succeed by waiting.
    MessageSizeTooLargeError,
    RecordTooLargeError,
)

_INFRASTRUCTURE: tuple[type[BaseException], ...] = (
    InfrastructureError,
    # pymongo: ConnectionFailure covers AutoReconnect, NetworkTimeout, NotPrimaryError and
    # ServerSelectionTimeoutError; the other two are server-side timeouts.
    ConnectionFailure,
    ExecutionTimeout,
    WTimeoutError,
    # aiokafka: the client's own timeouts and lost connections (retriable broker answers such
    # as NotLeaderForPartition are recognised by their ``retriable`` flag below).
    KafkaConnectionError,
    KafkaTimeoutError,
    TimeoutError,  # asyncio.TimeoutError is the same class since Python 3.11
    OSError,  # ConnectionError, socket errors
)


def classify(exc: BaseException) -> Failure:
    """Sort a handler's exception: permanent, infrastructure or unknown.

    The exception itself decides first; otherwise an infrastructure failure anywhere in its
    chain (``raise ... from``, or raised while handling one) makes it an infrastructure one,
    so a handler that wraps a lost connection in its own error does not turn an outage into
    poison.
    """
    if isinstance(exc, _PERMANENT):
        return Failure.PERMANENT
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_infrastructure(current):
            return Failure.INFRASTRUCTURE
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return Failure.UNKNOWN


# Server error codes that mean "not now" rather than "never" (the codes the MongoDB drivers
# retry: host unreachable or not found, network timeout, shutdown in progress, primary stepped
# down, time limit exceeded, socket exception, not writable primary, interrupted at shutdown or
# by a replica-set state change, not primary or secondary, ...).
_MONGO_RETRYABLE_CODES = frozenset(
    {6, 7, 89, 91, 134, 189, 262, 9001, 10058, 10107, 11600, 11602, 13435, 13436}
)


def _is_infrastructure(exc: BaseException) -> bool:
    if isinstance(exc, _INFRASTRUCTURE):
        return True
    if isinstance(exc, KafkaError):
        return bool(exc.retriable)
    if isinstance(exc, PyMongoError):
        return bool(
            exc.timeout
            or exc.has_error_label("RetryableWriteError")
            or exc.has_error_label("TransientTransactionError")
            or (isinstance(exc, OperationFailure) and exc.code in _MONGO_RETRYABLE_CODES)
        )
    return False


# Commit failures that only mean the partitions moved: the new owner goes on from the last
# commit (handlers are idempotent), so they are logged, never fatal.
_LOST_TO_REBALANCE: tuple[type[BaseException], ...] = (
    CommitFailedError,
    IllegalStateError,
    RebalanceInProgressError,
    IllegalGenerationError,
    UnknownMemberIdError,
)


class _Rejected(PermanentError):
    """A batch handler, called with one message, returned it as bad."""

    def __init__(self, original: Exception) -> None:
        super().__init__(str(original))
        self.original = original


# --- the runner -----------------------------------------------------------------------------


@dataclass
class _Outage:
    """A partition paused because a dependency failed; retried from ``offset``."""

    offset: int
    since: float
    retries: int
    retry_at: float
    error: str
    paused: bool = True


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tells the runner when partitions move (called by aiokafka's coordinator task)."""

    def __init__(self, runner: ConsumerRunner, consumer: AIOKafkaConsumer) -> None:
        self._runner = runner
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._runner._revoked(self._consumer, set(revoked))
        hook = self._runner._sub.on_revoked
        if hook is not None:
            await hook(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        hook = self._runner._sub.on_assigned
        if hook is not None:
            await hook(list(assigned))


class ConsumerRunner:
    """Runs one consumer group: handle, classify failures, dead-letter, commit after the work.

    * Success: the offset is committed after the partition's records of the fetch.
    * A permanent failure: the message goes to the dead-letter topic at once.
    * An infrastructure failure: the partition is paused and rewound to the failed record,
      nothing after it is committed, and it is retried after a capped exponential backoff,
      without limit; other partitions go on. :meth:`healthy` is false while it lasts.
    * An unknown failure: ``handler_attempts`` attempts with backoff, then the dead-letter topic.
    * A rebalance: the partitions' handled offsets are committed when they are revoked, and
      records already fetched are dropped (the next owner starts from that commit).
    """

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
        # Set while no handler call is in flight: a revoke waits for it before committing.
        self._idle = asyncio.Event()
        self._idle.set()
        # Bumped by every revoke: records fetched under an older generation are dropped.
        self._generation = 0
        self._pending: dict[TopicPartition, int] = {}
        self._outages: dict[TopicPartition, _Outage] = {}
        self._running_since: float | None = None
        self.consecutive_crashes = 0
        self.healthy_after = 30.0
        self.restart_delays: deque[float] = deque(maxlen=20)
        """The supervisor's latest restart delays (seconds), for operators and tests."""
        PAUSED_PARTITIONS.labels(subscription.group).set_function(lambda: len(self._outages))
        CRASH_LOOPING.labels(subscription.group).set_function(lambda: int(self.crash_looping))

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def wait_stopping(self, timeout: float) -> None:
        """Sleep ``timeout`` seconds, or less when the runner is told to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout)

    @property
    def group(self) -> str:
        return self._sub.group

    @property
    def outages(self) -> dict[TopicPartition, str]:
        """Partitions paused by an infrastructure failure, with the last error."""
        return {tp: o.error for tp, o in self._outages.items()}

    @property
    def running(self) -> bool:
        return self._running_since is not None

    @property
    def crash_looping(self) -> bool:
        """Down after a crash, or crashed ``CRASH_LOOP_AFTER`` times without a healthy run.

        A run is healthy once it has lasted ``healthy_after`` seconds (set by the supervisor).
        """
        if self.consecutive_crashes == 0:
            return False
        if self._running_since is None:
            return True
        if time.monotonic() - self._running_since >= self.healthy_after:
            return False
        return self.consecutive_crashes >= CRASH_LOOP_AFTER

    def healthy(self) -> bool:
        return not self._outages and not self.crash_looping

    def _new_consumer(self) -> AIOKafkaConsumer:
        return new_consumer(
            self._settings,
            group_id=self._sub.group,
            client_id=self._client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if self._sub.from_beginning else "latest",
            isolation_level="read_committed",
            max_poll_records=MAX_BATCH,
        )

    async def run(self) -> None:
        consumer = self._new_consumer()
        consumer.subscribe(self._sub.topics, listener=_Rebalance(self, consumer))
        await consumer.start()
        self._running_since = time.monotonic()
        self.started.set()
        try:
            while not self._stopping.is_set():
                self._resume_due(consumer)
                batch = await consumer.getmany(timeout_ms=self._poll_ms(), max_records=MAX_BATCH)
                generation = self._generation
                for tp, records in batch.items():
                    if self._stopping.is_set() or generation != self._generation:
                        break  # a rebalance: what is left was fetched for the old assignment
                    await self._partition(
                        consumer, tp, [Message.of(r) for r in records], generation
                    )
        finally:
            self._running_since = None
            self._idle.set()
            try:
                if self._pending:
                    await self._commit(consumer, dict(self._pending))
            finally:
                self._pending.clear()
                self._outages.clear()
                await consumer.stop()

    # --- partitions and rebalances

    async def _revoked(self, consumer: AIOKafkaConsumer, revoked: set[TopicPartition]) -> None:
        """Before partitions move: commit what was handled, forget what was fetched."""
        self._generation += 1  # no record fetched before this point is handled from now on
        await self._idle.wait()  # the handler call in flight finishes and records its offset
        due = {tp: off for tp, off in self._pending.items() if tp in revoked}
        for tp in revoked:
            self._pending.pop(tp, None)
            self._outages.pop(tp, None)
        if due:
            await self._commit(consumer, due, keep_on_failure=False)

    async def _commit(
        self,
        consumer: AIOKafkaConsumer,
        offsets: dict[TopicPartition, int],
        *,
        keep_on_failure: bool = True,
    ) -> None:
        """Commit ``offsets``; a rebalance or an unreachable broker is logged, never fatal."""
        try:
            await consumer.commit(offsets)
        except _LOST_TO_REBALANCE as exc:
            log.warning(
                "commit lost to a rebalance; the next owner resumes from the last commit",
                group=self._sub.group,
                error=repr(exc),
            )
        except KafkaError as exc:
            if classify(exc) is not Failure.INFRASTRUCTURE:
                raise
            # The work is done; the next commit of these partitions carries a later offset, and
            # a restart before it redelivers to idempotent handlers.
            log.warning("commit failed; retried with the next one", error=repr(exc))
            if keep_on_failure:
                for tp, off in offsets.items():
                    self._pending[tp] = max(off, self._pending.get(tp, 0))

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self._stopping.is_set()

    async def _partition(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        messages: list[Message],
        generation: int,
    ) -> None:
        if tp in self._outages and self._outages[tp].paused:
            return  # fetched before the pause; the partition was rewound
        # Cooperative scheduling makes "still current, now busy" one step: a revoke cannot
        # slip in between the check and the call, and waits for ``_idle`` after it.
        batch_handler = self._sub.batch_handlers.get(tp.topic)
        if batch_handler is not None:
            BATCH_SIZE.labels(self._sub.group, tp.topic).observe(len(messages))
            if self._current(generation):
                self._idle.clear()
                try:
                    await self._batch(consumer, tp, batch_handler, messages)
                finally:
                    self._idle.set()
        else:
            handler = self._sub.handlers[tp.topic]
            for msg in messages:
                if not self._current(generation):
                    break
                self._idle.clear()
                try:
                    failed = await self._one(handler, msg)
                    if failed is not None:
                        self._pause(consumer, tp, msg.offset, failed)
                        break
                    self._done(tp, msg.offset)
                finally:
                    self._idle.set()
        if generation == self._generation and tp in self._pending:
            await self._commit(consumer, {tp: self._pending.pop(tp)})

    def _done(self, tp: TopicPartition, offset: int) -> None:
        self._pending[tp] = offset + 1
        outage = self._outages.pop(tp, None)
        if outage is not None:
            log.info(
                "partition recovered",
                group=self._sub.group,
                topic=tp.topic,
                partition=tp.partition,
                seconds=round(time.monotonic() - outage.since, 1),
                retries=outage.retries,
            )

    def _pause(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, exc: BaseException
    ) -> None:
        """Rewind ``tp`` to ``offset`` and pause it until its backoff is over."""
        now = time.monotonic()
        previous = self._outages.get(tp)
        retries = previous.retries + 1 if previous is not None else 0
        delay: int = min(
            self._settings.retry_backoff_ms << min(retries, 30),
            self._settings.outage_backoff_max_ms,
        )
        error = f"{type(exc).__name__}: {exc}"[:500]
        self._outages[tp] = _Outage(
            offset=offset,
            since=previous.since if previous is not None else now,
            retries=retries,
            retry_at=now + delay / 1000,
            error=error,
        )
        try:
            consumer.seek(tp, offset)
            consumer.pause(tp)
        except IllegalStateError:  # no longer ours: the next owner starts from the last commit
            self._outages.pop(tp, None)
        INFRA_FAILURES.labels(self._sub.group, tp.topic).inc()
        (log.warning if previous is None else log.info)(
            "dependency unavailable; partition paused",
            group=self._sub.group,
            topic=tp.topic,
            partition=tp.partition,
            offset=offset,
            retry_in_ms=delay,
            retries=retries,
            error=error,
        )

    def _resume_due(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        for tp, outage in self._outages.items():
            if outage.paused and now >= outage.retry_at:
                outage.paused = False  # stays an outage until a record of it succeeds
                consumer.resume(tp)

    def _poll_ms(self) -> int:
        waits = [o.retry_at for o in self._outages.values() if o.paused]
        if not waits:
            return POLL_MS
        return max(1, min(POLL_MS, int((min(waits) - time.monotonic()) * 1000)))

    # --- handling

    async def _one(self, handler: Handler, msg: Message) -> BaseException | None:
        """Handle one message; None when done or dead-lettered, else the outage's error."""
        correlation_id = msg.headers.get(HEADER_CORRELATION_ID)
        # Bounded: it becomes a header of what the handler publishes (and of a dead letter).
        bind_correlation_id(correlation_id[:128] if correlation_id else None)
        try:
            # The common case, without the retry machinery: one attempt that succeeds.
            await handler(msg)
        except Exception as exc:
            return await self._failed(handler, msg, exc)
        self._count(msg.topic, "ok")
        return None

    async def _failed(self, handler: Handler, msg: Message, exc: Exception) -> BaseException | None:
        kind = classify(exc)
        attempts = 1
        # Unknown failures get a bounded number of attempts; the other two kinds are decided.
        while kind is Failure.UNKNOWN and attempts < self._settings.handler_attempts:
            await asyncio.sleep(self._backoff(attempts))
            attempts += 1
            try:
                await handler(msg)
            except Exception as again:
                exc, kind = again, classify(again)
            else:
                self._count(msg.topic, "ok")
                return None
        if kind is Failure.INFRASTRUCTURE:
            return exc
        return await self._dead_letter(msg, exc, attempts, kind)

    def _backoff(self, attempts: int) -> float:
        delay_ms: int = self._settings.retry_backoff_ms << (attempts - 1)
        return min(delay_ms, self._settings.retry_backoff_max_ms) / 1000

    async def _batch(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        handler: BatchHandler,
        messages: list[Message],
    ) -> None:
        try:
            bad = await handler(messages)
        except Exception as exc:
            if classify(exc) is Failure.INFRASTRUCTURE:
                self._pause(consumer, tp, messages[0].offset, exc)
                return
            log.info(
                "batch failed; handling its messages one at a time",
                group=self._sub.group,
                topic=tp.topic,
                partition=tp.partition,
                size=len(messages),
                error=f"{type(exc).__name__}: {exc}"[:500],
            )
            await self._isolate(consumer, tp, handler, messages)
            return
        rejected = {m.offset: (m, e) for m, e in bad}
        for msg in messages:
            if msg.offset in rejected:
                failed = await self._dead_letter(msg, rejected[msg.offset][1], 1, Failure.PERMANENT)
                if failed is not None:  # what came before it is done
                    self._pause(consumer, tp, msg.offset, failed)
                    return
            else:
                self._count(msg.topic, "ok")
            self._done(tp, msg.offset)

    async def _isolate(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        handler: BatchHandler,
        messages: list[Message],
    ) -> None:
        """Call a batch handler with one message at a time to find the poison one(s)."""

        async def single(msg: Message) -> None:
            bad = await handler([msg])
            if bad:
                raise _Rejected(bad[0][1])

        for msg in messages:
            if self._stopping.is_set():
                return
            failed = await self._one(single, msg)
            if failed is not None:
                self._pause(consumer, tp, msg.offset, failed)
                return
            self._done(tp, msg.offset)

    def _count(self, topic: str, outcome: str) -> None:
        counter = self._counters.get((topic, outcome))
        if counter is None:
            counter = self._counters[(topic, outcome)] = MESSAGES.labels(
                self._sub.group, topic, outcome
            )
        counter.inc()

    async def _dead_letter(
        self, msg: Message, exc: Exception, attempts: int, kind: Failure
    ) -> BaseException | None:
        """Park ``msg`` with its reason; the error when the broker is unreachable (retry later).

        Any other refusal raises: then nothing is committed and the message comes back,
        rather than being lost.
        """
        if isinstance(exc, _Rejected):
            exc = exc.original
        reason = f"{type(exc).__name__}: {exc}"[:2000]
        letter = dead_letter_of(
            msg,
            consumer_group=self._sub.group,
            error=reason,
            attempts=attempts,
            failure=kind.value,
            max_value_bytes=self._settings.dead_letter_max_value_bytes,
        )
        try:
            await self._publisher.publish(DEAD_LETTER, msg.topic, letter)
        except Exception as failed:
            if classify(failed) is Failure.INFRASTRUCTURE:
                return failed
            raise
        log.warning(
            "message dead-lettered",
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            event_id=msg.event_id,
            group=self._sub.group,
            reason=reason,
            truncated=letter.truncated,
        )
        self._count(msg.topic, "dead_lettered")
        return None


class Consumers:
    """Runs several consumer groups as supervised tasks; stops them together.

    A consumer that crashes is restarted after a backoff that doubles up to
    ``restart_backoff_max`` and starts again from ``restart_backoff`` once a run has lasted
    ``healthy_after`` seconds. :meth:`healthy` is false while a consumer is down after a crash,
    crash-loops, or has a partition paused by an outage.
    """

    def __init__(
        self,
        runners: list[ConsumerRunner],
        *,
        restart_backoff: float = 0.5,
        restart_backoff_max: float = 30.0,
        healthy_after: float = 30.0,
    ) -> None:
        self.runners = runners
        self.restart_backoff = restart_backoff
        self.restart_backoff_max = restart_backoff_max
        self.healthy_after = healthy_after
        self._tasks: list[asyncio.Task[None]] = []
        for runner in runners:
            runner.healthy_after = healthy_after

    async def __aenter__(self) -> Consumers:
        self._tasks = [asyncio.create_task(self._supervise(r)) for r in self.runners]
        return self

    async def _supervise(self, runner: ConsumerRunner) -> None:
        """Restart a consumer that crashed, with a backoff that resets after a healthy run."""
        delay = self.restart_backoff
        while not runner.stopping:
            started = time.monotonic()
            try:
                await runner.run()
            except Exception as exc:
                lasted = time.monotonic() - started
                if lasted >= self.healthy_after:  # a healthy run ended: start afresh
                    delay = self.restart_backoff
                    runner.consecutive_crashes = 0
                runner.consecutive_crashes += 1
                runner.restart_delays.append(delay)
                RESTARTS.labels(runner.group).inc()
                log.error(
                    "consumer crashed; restarting",
                    group=runner.group,
                    error=repr(exc),
                    restart_in_s=delay,
                    consecutive_crashes=runner.consecutive_crashes,
                )
                await runner.wait_stopping(delay)
                delay = min(delay * 2, self.restart_backoff_max)
            else:
                return

    async def __aexit__(self, *exc: object) -> None:
        for r in self.runners:
            r.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def healthy(self) -> bool:
        return all(not t.done() for t in self._tasks) and all(r.healthy() for r in self.runners)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def dead_letter_of(
    msg: Message,
    *,
    consumer_group: str,
    error: str,
    attempts: int,
    failure: str,
    max_value_bytes: int,
) -> DeadLetter:
    """The dead letter of ``msg``: its origin, the reason, and its bytes, bounded to fit.

    The value is kept up to ``max_value_bytes``, the key and headers up to fixed bounds;
    anything cut sets ``truncated`` (such a letter cannot be replayed). ``value`` is a short
    readable preview; ``value_b64`` holds the exact bytes kept.
    """
    truncated = False
    kept: bytes | None = None
    if msg.value is not None:
        kept = msg.value[:max_value_bytes]
        truncated = len(msg.value) > len(kept)
    raw_key = msg.raw_key
    if raw_key is None and msg.key is not None:
        raw_key = msg.key.encode()
    if raw_key is not None and len(raw_key) > DEAD_LETTER_MAX_KEY_BYTES:
        raw_key, truncated = raw_key[:DEAD_LETTER_MAX_KEY_BYTES], True
    raw_headers = msg.raw_headers or tuple((k, v.encode()) for k, v in msg.headers.items())
    headers: list[RecordHeader] = []
    budget = DEAD_LETTER_MAX_HEADER_BYTES
    for name, value in raw_headers:
        size = len(name.encode()) + len(value)
        if size > budget or len(headers) == DEAD_LETTER_MAX_HEADERS:
            truncated = True
            break
        budget -= size
        headers.append(RecordHeader(name=name, value_b64=_b64(value)))
    return DeadLetter(
        original_topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=msg.key[:1024] if msg.key is not None else None,
        event_id=msg.event_id[:256],
        consumer_group=consumer_group,
        error=error[:2000],
        attempts=attempts,
        failure=failure,
        value=(kept or b"")[:DEAD_LETTER_TEXT_PREVIEW_BYTES].decode(errors="replace"),
        value_b64=_b64(kept) if kept is not None else None,
        value_size=len(msg.value) if msg.value is not None else None,
        truncated=truncated,
        key_b64=_b64(raw_key) if raw_key is not None else None,
        headers=headers,
        record_kept=not truncated,
        failed_at=utcnow(),
    )
