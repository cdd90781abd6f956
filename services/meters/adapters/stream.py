"""The ingestion worker: one faust app that decides every reading of the devices it owns.

It consumes ``emaintenance.telemetry`` and ``meters.commands`` (manual submissions and stale
checks), both keyed by serial with the same partition count, so partition *p* of both belongs
to one worker, and the per-device state lives in a faust Table co-partitioned with them: each
device has exactly one writer, whatever the interleaving of its inputs.

Durability, in order:
1. Each input is decided against the device's newest state: the batch's own (not yet written)
   state for that device if it has one, else the table. The new state and the outputs
   (readings, decisions on submissions, events) are buffered; the input is not acknowledged
   yet (``noack``).
2. A flush writes the readings with ``insert_many`` (ids derived from the input's position, so
   a re-delivery inserts nothing), then the decisions, then publishes the events; *then* it
   writes each changed device's state to the table, one changelog record per device per batch,
   sent to the partition of the input it came from (the key's partition, whatever faust's
   current event is); and only then acknowledges the inputs. faust commits acknowledged
   offsets after flushing its producer (the changelog), and a rebalance waits for every
   delivered input to be acknowledged before it hands a partition over.
3. So the changelog is never ahead of the outputs: a state in the table was decided from inputs
   whose outputs are durable. The state records the last offset decided per input topic; an
   input at or below it is a re-delivery whose outputs are already written, and is dropped.
   An input whose state was not written yet is decided again, after a crash, against the same
   older state: the same decision, the same ids, nothing doubled.
4. Inputs are decided in offset order per partition, without holes: the table also holds each
   input partition's last decided offset (its watermark), and an input past a hole is refused
   and its partition sought back (``Ingestor._admit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import faust
import orjson
from aiokafka import AIOKafkaProducer
from faust.types import TP
from faust.types.tuples import Message
from pydantic import ValidationError
from pymongo.asynchronous.database import AsyncDatabase

from services.meters.adapters import faust_direct
from services.meters.adapters.directory import Directory
from services.meters.adapters.store import (
    DECISIONS,
    READINGS,
    LocalDecisions,
    decision_doc,
    delete_decisions_before,
    insert_ignoring_duplicates,
)
from services.meters.config import IngestSettings
from services.meters.core import model
from services.meters.core.model import Decision, DeviceMemory, Report, Submission
from services.meters.core.ports import Outcome
from shared.bus import Publisher, kafka_partition, new_producer
from shared.config import KafkaSettings, faust_broker_credentials
from shared.contracts import (
    DEAD_LETTER,
    METER_COMMANDS,
    METER_EVENTS,
    TELEMETRY,
    DeadLetter,
    DeviceFaultReported,
    DeviceStale,
    ReadingAccepted,
    ReadingAnomaly,
    ReadingSubmitted,
    StaleCheck,
    TelemetryReport,
)
from shared.events import (
    HEADER_CORRELATION_ID,
    HEADER_EVENT_TYPE,
    Event,
    envelope_headers,
    parse_json,
    utcnow,
)
from shared.logging import get_logger
from shared.store import Document

log = get_logger(__name__)

APP_ID = "meters.ingest"  # also the consumer group; every internal topic starts with it
TABLE = "devices"  # changelog: meters.ingest-devices-changelog
# Inputs decided between two turns of the event loop. The flusher's every step (an insert's
# answer, a producer batch's acknowledgement) waits for such a turn: at 256 (some 25 ms of
# deciding) a flush took so long that the stream stood still for it 9 s of every 20 (the bench's
# meters_ingest_waited_for_flusher); at 32 1.9-3.8 s, and 5-9% more reports a second.
YIELD_EVERY = 32
DECISION_PURGE_INTERVAL_SECONDS = 3600.0


def faust_broker_settings(kafka: KafkaSettings) -> dict[str, Any]:
    """The one place that says how faust reaches the brokers, as which principal (SASL)."""
    settings: dict[str, Any] = {
        "broker": [f"kafka://{host.strip()}" for host in kafka.bootstrap_servers.split(",")],
    }
    credentials = faust_broker_credentials(kafka)
    if credentials is not None:
        settings["broker_credentials"] = credentials
    return settings


def build_faust_app(
    kafka: KafkaSettings, ingest: IngestSettings, *, app_id: str = APP_ID
) -> faust.App:
    """A faust app with its broker given at construction (set later, it silently falls back
    to localhost:9092), no web server, and short producer timeouts."""
    datadir = Path(ingest.data_dir or tempfile.gettempdir()) / f"{app_id}-data"
    # faust expects the folder to exist (a first `make run` has none yet).
    datadir.mkdir(parents=True, exist_ok=True)
    return faust_direct.App(
        app_id,
        **faust_broker_settings(kafka),
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        datadir=str(datadir),
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        topic_allow_declare=True,
        table_standby_replicas=0,
        producer_request_timeout=30.0,
        producer_linger=0.005,
        producer_acks=-1,
        # The changelog gets one record per input: batches of 16 KB (the default) would make
        # the broker's round trips, not the work, the limit.
        producer_max_batch_size=512 * 1024,
        broker_commit_interval=ingest.commit_interval_seconds,
        broker_max_poll_records=ingest.max_poll_records,
        consumer_max_fetch_size=4 * 1024 * 1024,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=ingest.max_poll_records * 2,
        processing_guarantee="at_least_once",
    )


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


class EventOut(NamedTuple):
    """An event to publish: its topic, key, type, id (the envelope's) and JSON value."""

    target: str
    key: str
    event_type: str
    event_id: str
    value: bytes
    correlation_id: str | None = None


@dataclass(slots=True)
class Outputs:
    """What one input leads to: at most one reading, at most one decision, any events."""

    reading: Document | None = None
    decision: Document | None = None
    events: list[EventOut] = field(default_factory=list)


@dataclass
class Batch:
    """Outputs waiting for the next flush, and the inputs they came from."""

    readings: list[Document] = field(default_factory=list)
    decisions: list[Document] = field(default_factory=list)
    events: list[EventOut] = field(default_factory=list)
    inputs: list[Message] = field(default_factory=list)  # to acknowledge once durable
    # Each device's state after this batch, and the partition its changelog record goes to.
    states: dict[bytes, tuple[int, Document]] = field(default_factory=dict)
    urgent: bool = False

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class IngestStats:
    accepted: int = 0
    duplicates: int = 0
    anomalies: int = 0
    faults: int = 0
    dead_lettered: int = 0
    refused: int = 0
    replayed: int = 0
    removed_dropped: int = 0
    holes: int = 0
    waited_for_flusher: float = 0.0  # seconds the stream stood still for a flush to finish


class Ingestor:
    """Decides each input against the device's state and flushes the outputs in batches."""

    def __init__(
        self,
        app: faust.App,
        settings: IngestSettings,
        db: AsyncDatabase[Document],
        publisher: Publisher,
        directory: Directory,
        decisions: LocalDecisions,
        *,
        telemetry_topic: str = TELEMETRY.name,
        commands_topic: str = METER_COMMANDS.name,
    ) -> None:
        self.app = app
        self.telemetry_topic = telemetry_topic
        self.commands_topic = commands_topic
        self._tags = {telemetry_topic: "t", commands_topic: "c"}
        self.settings = settings
        self.db = db
        self.publisher = publisher
        self.directory = directory
        self.decisions = decisions
        self.stats = IngestStats()
        self.table = app.Table(
            TABLE,
            default=None,
            # Keys stay the serial's bytes, as on the input topics (key_type=bytes: raw in
            # the changelog and in recovery). Values are each state's JSON, kept as the bytes
            # of its changelog record (raw, in recovery too): one object per device that the
            # garbage collector does not traverse, not four dicts and lists (a million states:
            # 333 MB and a 71 ms full collection against 991 MB and 791 ms; the numbers from
            # tests/perf/bench_meters_state.py).
            key_type=bytes,
            value_type=bytes,
            schema=faust.Schema(key_serializer="raw", value_serializer="raw"),
            partitions=None,
        )
        self._batch = Batch()
        self._flushing: dict[bytes, tuple[int, Document]] = {}  # states being written now
        self._due = asyncio.Event()
        self._partitions: dict[str, list[int]] = {}
        self._lock = asyncio.Lock()
        self._stale_pending: set[bytes] = set()
        self._holes: dict[tuple[str, int], tuple[int, float]] = {}  # partition: (expected, since)
        self._watermark_keys: dict[tuple[str, int], bytes] = {}
        self._seeks: set[asyncio.Future[Any]] = set()
        self.flushed = 0
        source = app.topic(
            telemetry_topic,
            commands_topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        app.agent(source, name=f"{APP_ID}.decide")(self._agent)
        app.timer(settings.stale_check_interval_seconds)(self._stale_timer)
        app.timer(DECISION_PURGE_INTERVAL_SECONDS)(self.purge_decisions)
        self._flusher: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, kafka: KafkaSettings) -> None:
        """The events' own producer (idempotent, acks=all, large batches), then the flusher."""
        collect_garbage_less_often(self.settings.gc_young_threshold)
        self._producer = new_producer(
            kafka,
            client_id=f"{self.publisher.service}-ingest-producer",
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_batch_size=512 * 1024,
        )
        await self._producer.start()
        try:
            await self._check_inputs()
        except BaseException:
            await self._producer.stop()
            raise
        self._flusher = asyncio.create_task(self._flush_loop())

    async def _check_inputs(self) -> None:
        """Telemetry and commands must have the same partition count: a device's inputs then
        share a partition number, owned by one worker. faust co-partitions only topics of equal
        counts (it groups the topics by count, without a word), so a difference would give a
        device two writers."""
        producer = self._events_producer()
        counts = {topic: len(await producer.partitions_for(topic)) for topic in self._tags}
        if len(set(counts.values())) != 1:
            found = ", ".join(f"{topic} has {n}" for topic, n in counts.items())
            raise RuntimeError(
                f"the meters worker's input topics differ in partitions ({found}): a device's "
                "telemetry and manual submissions must share a partition (one writer per "
                "device). Give both topics the same count (FLEETDESK_KAFKA_PARTITIONS when the "
                "platform creates them) and start the worker again."
            )

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        try:  # a graceful stop hands over what it decided; faust commits it on its way out
            await asyncio.wait_for(self.flush(), 10)
        except Exception as exc:
            # Unflushed inputs stay unacknowledged: the next owner replays their decisions.
            log.warning("final flush failed", error=repr(exc))
        if self._producer is not None:
            await self._producer.stop()

    def ready(self) -> bool:
        app = self.app
        return bool(
            app.started
            and not app.rebalancing
            and app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
            and self.directory.caught_up.is_set()
            and (self._flusher is not None and not self._flusher.done())
        )

    # --- the agent --------------------------------------------------------------------------

    async def _agent(self, stream: Any) -> None:
        """faust's agent on the inputs: it makes faust subscribe them and co-partition the
        table with them. On :class:`faust_direct.DirectConsumer` (what ``build_faust_app``
        builds) the inputs go to :meth:`receive` a poll at a time and this stream gets none;
        on faust's own consumer, it hands them over one by one."""
        consumer: Any = self.app.consumer
        sinks = getattr(consumer, "sinks", None)
        if sinks is not None:
            for topic in self._tags:
                sinks[topic] = self.receive
        await self.directory.caught_up.wait()
        freeze_what_is_loaded()
        self._bound_fetch_wait()
        async for event in stream.noack().events():
            await self.receive((event.message,))

    async def receive(self, messages: Sequence[Message]) -> None:
        """Decide inputs in order; each is acknowledged by the flush that makes its outputs
        durable. A rebalance while they are decided drops the rest (fetched for the old
        assignment: faust seeks back to the committed offsets)."""
        await self.directory.caught_up.wait()
        app, settings = self.app, self.settings
        consumer: Any = app.consumer
        generation = app.consumer_generation_id
        for n, msg in enumerate(messages, 1):
            if not self._admit(msg):
                continue  # neither decided nor acknowledged: its partition is sought back
            try:
                self._decide(msg)
            except Exception as exc:  # a bug, not the message: park it, keep the stream going
                log.exception("decision failed", topic=msg.topic)
                self._dead_letter(msg, f"{type(exc).__name__}: {exc}")
            self._batch.inputs.append(msg)
            batch = self._batch
            waited = False
            if batch.urgent or len(batch) >= settings.batch_size:
                self._due.set()  # the flusher writes it while the stream goes on deciding
                if len(batch) >= 2 * settings.batch_size:
                    stood = time.perf_counter()
                    await self._flush_until_done()  # the flusher is behind: wait for it
                    self.stats.waited_for_flusher += time.perf_counter() - stood
                    waited = True
            if n % YIELD_EVERY == 0 and not waited:
                await asyncio.sleep(0)  # the flusher, timers and HTTP get their turn
                waited = True
            if waited and (not consumer.flow_active or generation != app.consumer_generation_id):
                return

    def _bound_fetch_wait(self) -> None:
        """faust builds its consumer with ``fetch_max_wait_ms=1500``, hard-coded. The consumer
        does not fetch a partition again while its last records are unread, so the next fetch
        often asks only for quiet partitions (``meters.commands`` mostly is) and the broker
        holds it for the full wait: fresh telemetry then waited about 1.5 s (measured: p50
        1.5 s end to end at half the sustainable rate). Bounded here to the configured wait."""
        faust_consumer: Any = self.app.consumer
        try:
            consumer = faust_consumer._thread._ensure_consumer()
            consumer._fetcher._fetch_max_wait_ms = self.settings.fetch_max_wait_ms
        except AttributeError as exc:  # another faust or aiokafka: keep theirs, say so
            log.warning("cannot bound the consumer's fetch wait", error=repr(exc))

    def _admit(self, msg: Message) -> bool:
        """Whether this input comes right after the last one decided on its partition (or at or
        before it: a re-delivery); if so, the partition's watermark moves to it (``receive``
        decides every admitted input, with no wait in between). The worker never decides past
        a hole: faust clears its stream buffers when partitions are revoked (direct delivery
        drops the poll), and an input fetched before the rebalance but decided after it could
        otherwise carry the committed offset past the dropped ones (seen here: a range of 88
        inputs never decided, their offsets committed). An input past a hole is neither decided
        nor acknowledged, and its partition is sought back to the hole; a hole still there after
        ``hole_grace_seconds`` is in the log itself (transaction markers, retention) and is
        passed."""
        tp = (msg.topic, msg.partition)
        key = self._watermark_keys.get(tp)
        if key is None:
            key = self._watermark_keys[tp] = _watermark_key(*tp)
        state = self._state(key)
        last = None if state is None else int(state["offset"])
        if last is None or msg.offset <= last + 1:
            if last is None or msg.offset > last:
                self._batch.states[key] = (msg.partition, {"offset": msg.offset})
            return True
        expected, now = last + 1, time.monotonic()
        hole = self._holes.get(tp)
        if hole is None or hole[0] != expected:
            self._holes[tp] = (expected, now)
            self.stats.holes += 1
            log.warning(
                "input past a hole: seeking back",
                topic=msg.topic,
                partition=msg.partition,
                expected=expected,
                got=msg.offset,
            )
            seek = asyncio.ensure_future(self.app.consumer.seek(TP(*tp), expected))
            self._seeks.add(seek)
            seek.add_done_callback(self._seeks.discard)
            return False
        if now - hole[1] < self.settings.hole_grace_seconds:
            return False  # fetched before the seek took effect, or the hole is in the log
        log.warning(
            "offsets absent from the log: going on",
            topic=msg.topic,
            partition=msg.partition,
            missing=f"{expected}-{msg.offset - 1}",
        )
        del self._holes[tp]
        self._batch.states[key] = (msg.partition, {"offset": msg.offset})
        return True

    async def _flush_until_done(self) -> None:
        """Infrastructure failures (MongoDB, the broker) are retried, never skipped: the
        stream waits, nothing is acknowledged until its outputs are durable."""
        delay = 0.1
        while True:
            try:
                await self.flush()
                return
            except Exception as exc:
                log.error("flush failed; retrying", error=repr(exc), delay=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _decide(self, msg: Message) -> None:
        tag = self._tags[msg.topic]
        key: bytes | None = msg.key
        if key is None:
            self._dead_letter(msg, "no key: messages must be keyed by serial")
            return
        memory = DeviceMemory.from_dict(self._state(key))
        if memory.positions.get(tag, -1) >= msg.offset:
            self.stats.replayed += 1  # decided before, its outputs durable: nothing to do
            return
        position = f"{msg.topic}:{msg.partition}:{msg.offset}"  # a reading's id, events' too
        if tag == "t":
            decision, outputs = self._telemetry(msg, key, position, memory)
        else:
            raw: Any = msg.headers or ()  # aiokafka's (name, bytes) pairs
            headers = {k: bytes(v).decode(errors="replace") for k, v in raw}
            decision, outputs = self._command(msg, key, position, headers, memory)
        if decision is None:
            return
        after = decision.memory
        after.positions = {**memory.positions, tag: msg.offset}
        self._batch.states[key] = (msg.partition, after.to_dict())
        self._add_outputs(outputs)

    def _state(self, key: bytes) -> Document | None:
        """The device's newest state: this batch's, the one being flushed, or the table's."""
        pending = self._batch.states.get(key) or self._flushing.get(key)
        if pending is not None:
            return pending[1]
        raw: bytes | None = self._store().get(key)
        return None if raw is None else _loads(raw)

    def _add_outputs(self, outputs: Outputs) -> None:
        batch = self._batch
        if outputs.reading is not None:
            batch.readings.append(outputs.reading)
        if outputs.decision is not None:
            batch.decisions.append(outputs.decision)
            batch.urgent = True  # someone waits for it
        batch.events.extend(outputs.events)

    def _dead_letter(self, msg: Message, reason: str) -> None:
        self.stats.dead_lettered += 1
        value = msg.value if isinstance(msg.value, bytes) else b""
        letter = DeadLetter(
            original_topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key=msg.key.decode(errors="replace") if isinstance(msg.key, bytes) else None,
            event_id=f"{msg.topic}:{msg.partition}:{msg.offset}",
            consumer_group=self.app.conf.id,
            error=reason[:2000],
            attempts=1,
            value=value.decode(errors="replace"),
            failed_at=utcnow(),
        )
        self._batch.events.append(
            _model_event(DEAD_LETTER.name, msg.topic, letter, f"dlq:{letter.event_id}")
        )

    # --- deciding ---------------------------------------------------------------------------

    def _telemetry(
        self, msg: Message, key: bytes, position: str, memory: DeviceMemory
    ) -> tuple[Decision | None, Outputs]:
        try:
            report = parse_json(TelemetryReport, msg.value or b"")
        except ValidationError as exc:
            self._dead_letter(msg, f"invalid TelemetryReport: {_short(exc)}")
            return None, NOTHING
        if report.serial.encode() != key:
            self._dead_letter(msg, "the key and the report's serial differ")
            return None, NOTHING
        device = self.directory.by_serial(report.serial)
        if device is None:
            self._dead_letter(msg, "unknown serial: no device has it")
            return None, NOTHING
        if device.removed:
            self.stats.removed_dropped += 1
            return None, NOTHING
        decision = model.ingest_report(
            memory,
            Report(
                reading_id=position,
                counters=report.counters,  # the report's own (ingest_report copies it)
                errors=tuple(report.errors),
                sent_at=report.sent_at,
                received_at=msg.timestamp or time.time(),
            ),
            device,
        )
        outputs = Outputs()
        if decision.reading is not None:
            self.stats.accepted += 1
            self._accepted(outputs, decision.reading, None)
        if decision.duplicate:
            self.stats.duplicates += 1
        problems: list[tuple[str, Event]] = []
        if decision.anomaly:
            self.stats.anomalies += 1
            anomaly = ReadingAnomaly(
                device_id=device.device_id,
                org_id=device.org_id,
                serial=device.serial,
                counters=decision.anomaly,
                read_at=report.sent_at,
            )
            problems.append(("anomaly", anomaly))
        if decision.fault:
            self.stats.faults += 1
            fault = DeviceFaultReported(
                device_id=device.device_id,
                org_id=device.org_id,
                serial=device.serial,
                error_codes=decision.fault,
                reported_at=report.sent_at,
            )
            problems.append(("fault", fault))
        for kind, problem in problems:
            outputs.events.append(
                _model_event(METER_EVENTS.name, device.device_id, problem, f"{position}:{kind}")
            )
        if decision.stale is False and memory.last_seen is not None:
            outputs.events.append(_stale_event(device, memory.last_seen, True, position))
        return decision, outputs

    def _command(
        self,
        msg: Message,
        key: bytes,
        position: str,
        headers: dict[str, str],
        memory: DeviceMemory,
    ) -> tuple[Decision | None, Outputs]:
        event_type = headers.get(HEADER_EVENT_TYPE)
        try:
            if event_type == StaleCheck.event_type:
                check = parse_json(StaleCheck, msg.value or b"")
                self._stale_pending.discard(key)
                device = self.directory.by_serial(check.serial)
                decision = model.check_stale(
                    memory, device, time.time(), self.settings.stale_after_seconds
                )
                if decision.stale and device is not None and memory.last_seen is not None:
                    stale = _stale_event(device, memory.last_seen, False, position)
                    return decision, Outputs(events=[stale])
                return (decision if decision.stale else None), NOTHING
            cmd = parse_json(ReadingSubmitted, msg.value or b"")
        except ValidationError as exc:
            self._dead_letter(msg, f"invalid command: {_short(exc)}")
            return None, NOTHING
        device = self.directory.by_serial(cmd.serial)
        if device is not None and device.device_id != cmd.device_id:
            device = self.directory.device(cmd.device_id)
        decision = model.submit_reading(
            memory,
            Submission(
                command_id=cmd.command_id,
                counters=dict(cmd.counters),
                submitted_by=cmd.submitted_by,
                submitted_at=cmd.submitted_at,
                source=cmd.source,
                reason=cmd.reason,
            ),
            device,
        )
        outputs = Outputs()
        reading_json: Document | None = None
        if decision.reading is not None:
            self.stats.accepted += 1
            doc = self._accepted(outputs, decision.reading, headers.get(HEADER_CORRELATION_ID))
            reading_json = {**doc, "read_at": _iso(decision.reading.read_at)}
        else:
            self.stats.refused += 1
        outputs.decision = {
            "_id": cmd.command_id,
            "accepted": decision.reading is not None,
            "reading": reading_json,
            "refusals": [r.as_dict() for r in decision.refusals],
        }
        return decision, outputs

    def _accepted(
        self, outputs: Outputs, reading: model.Reading, correlation_id: str | None
    ) -> Document:
        """The reading to store and its ``ReadingAccepted`` event, into ``outputs``; returns
        the reading's document."""
        doc: Document = {
            "_id": reading.reading_id,
            "device_id": reading.device_id,
            "org_id": reading.org_id,
            "serial": reading.serial,
            "source": reading.source.value,
            "counters": reading.counters,
            "read_at": reading.read_at,
        }
        # Only people's readings have these: an automatic one is stored without them (each
        # field costs the server work on every insert; the history reads them as absent).
        if reading.submitted_by is not None:
            doc["submitted_by"] = reading.submitted_by
        if reading.reason is not None:
            doc["reason"] = reading.reason
        outputs.reading = doc
        outputs.events.append(
            EventOut(
                METER_EVENTS.name, reading.device_id, ReadingAccepted.event_type,
                reading.reading_id, accepted_payload(reading), correlation_id,
            )
        )  # fmt: skip
        return doc

    # --- flushing ---------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        """Flushes a batch when it is full or urgent, or once the interval has passed since the
        last flush began; one at a time, in order, while the stream decides the next batch. A
        flush that took longer than the interval is followed at once: waiting a whole interval
        after each flush added that interval to the latency of every report."""
        interval = self.settings.flush_interval_ms / 1000
        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:
            wait = interval - (loop.time() - began)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._due.wait(), wait)
            self._due.clear()
            began = loop.time()
            if len(self._batch):
                try:
                    await self.flush()
                except Exception as exc:  # retried next round; nothing was acknowledged
                    log.error("flush failed; retrying", error=repr(exc))
                    await asyncio.sleep(interval)

    async def flush(self) -> None:
        """Readings, decisions, events: durable in that order; then acknowledge the inputs."""
        async with self._lock:
            batch, self._batch = self._batch, Batch()
            if not len(batch):
                return
            self._flushing = batch.states
            try:
                await self._write(batch)
                # The outputs are durable: now the states they came from (acknowledged by the
                # broker before the inputs are), then the acknowledgement of the inputs.
                await self._write_states(batch.states)
            except BaseException:
                # Put it back in front: retried by the next flush, never acknowledged unwritten.
                self._batch = _merge(batch, self._batch)
                raise
            finally:
                self._flushing = {}
            ack = self.app.consumer.ack
            for msg in batch.inputs:
                ack(msg)
            self.flushed += len(batch)
            for d in batch.decisions:
                self.decisions.resolve(
                    Outcome(d["_id"], d["accepted"], d["reading"], d["refusals"])
                )

    async def _write(self, batch: Batch) -> None:
        size = self.settings.insert_batch_size
        now = utcnow()  # when the batch's readings were accepted and its events occurred
        readings = batch.readings
        for doc in readings:  # the batch's own documents (a retried flush sets it again)
            doc["accepted_at"] = now
        # The chunks go in side by side, each on its own connection: FerretDB and PostgreSQL
        # work on them in parallel (one after the other, the worker mostly waited for them).
        inserts = [
            insert_ignoring_duplicates(self.db[READINGS], readings[start : start + size])
            for start in range(0, len(readings), size)
        ]
        if batch.decisions:
            decisions = [decision_doc(doc) for doc in batch.decisions]
            inserts.append(insert_ignoring_duplicates(self.db[DECISIONS], decisions))
        await asyncio.gather(*inserts)
        records: list[Record] = []
        producer = self.publisher.service
        for target in {out.target for out in batch.events} - self._partitions.keys():
            partitions = await self._events_producer().partitions_for(target)
            self._partitions[target] = sorted(partitions)
        partitions = self._partitions
        for out in batch.events:
            headers = envelope_headers(
                out.event_id,
                out.event_type,
                producer,
                occurred_at=now,
                correlation_id=out.correlation_id,
            )
            key = out.key.encode()
            target = out.target
            partition = kafka_partition(key, partitions[target])  # the producer's own choice
            records.append((target, partition, key, out.value, headers))
        await self._send_records(records)

    async def _write_states(self, states: dict[bytes, tuple[int, Document]]) -> None:
        """Each device's state into the table and its changelog record onto the partition of
        the input it was decided from (the key's partition on the co-partitioned inputs)."""
        if not states:
            return
        table = self.table
        changelog = table.changelog_topic.get_topic_name()
        records: list[Record] = []
        for key, (partition, state) in states.items():
            # A copy of exactly its size: orjson's own result keeps the 4 KB it was written in
            # for as long as it lives (measured: 4 GB resident for a million states).
            value = memoryview(orjson.dumps(state)).tobytes()
            records.append((changelog, partition, key, value, []))
        await self._send_records(records)
        data = self._store()
        for _, _, key, value, _ in records:
            data[key] = value

    def _store(self) -> MutableMapping[bytes, bytes]:
        """The table's store: for faust's ``memory://`` store (``build_faust_app``), the plain
        dict it keeps. A report reads it once and a flush writes it once per device, and faust's
        mapping layers in between (``FastUserDict``) cost about 1 µs each time."""
        store: Any = self.table.data
        data = getattr(store, "data", None)
        return data if isinstance(data, dict) else store

    def _events_producer(self) -> AIOKafkaProducer:
        return self._producer or self.publisher.producer

    async def _send_records(self, records: list[Record]) -> None:
        await send_records(self._events_producer(), records)

    async def purge_decisions(self) -> int:
        """Drop decisions older than the retention (every instance does it: deleting is
        idempotent). A failure is logged and tried again next round."""
        before = utcnow() - timedelta(seconds=self.settings.decision_retention_seconds)
        try:
            purged = await delete_decisions_before(self.db, before)
        except Exception as exc:
            log.warning("purging old decisions failed; trying again later", error=repr(exc))
            return 0
        if purged:
            log.info("old decisions purged", purged=purged)
        return purged

    # --- staleness --------------------------------------------------------------------------

    async def _stale_timer(self) -> None:
        """Ask the owner about devices that look quiet (bounded per round); the owner decides
        once, in stream order, so a device goes stale once and comes back once."""
        now = time.time()
        after = self.settings.stale_after_seconds
        sent = 0
        for n, (key, raw) in enumerate(list(self.table.data.items()), 1):
            if n % 10_000 == 0:
                await asyncio.sleep(0)  # a million devices: the stream goes on meanwhile
            if sent >= self.settings.stale_checks_per_round:
                break
            if key in self._stale_pending or not raw or key.startswith(WATERMARK_PREFIX):
                continue
            if not model.is_quiet(DeviceMemory.from_dict(_loads(raw)), now, after):
                continue
            serial = key.decode(errors="replace")
            check = StaleCheck(serial=serial, checked_at=datetime.now(UTC))
            envelope = self.publisher.envelope(check)
            await self.publisher.send_raw(
                self.commands_topic, serial, check.model_dump_json().encode(), envelope.to_headers()
            )
            self._stale_pending.add(key)
            sent += 1
        if sent == 0 and len(self._stale_pending) > 10 * self.settings.stale_checks_per_round:
            self._stale_pending.clear()  # answers lost to a rebalance: ask again


async def send_records(producer: AIOKafkaProducer, records: list[Record]) -> None:
    """Records grouped into one batch per partition (``send_batch``: far less work per record
    than one ``send`` each); returns when the broker has every one (acks=all)."""
    if not records:
        return
    groups: dict[tuple[str, int], list[Record]] = {}
    for record in records:
        groups.setdefault((record[0], record[1]), []).append(record)
    futures: list[Awaitable[Any]] = []
    for (topic, partition), group in groups.items():
        builder = producer.create_batch()
        for _, _, key, value, headers in group:
            # A full batch refuses the record: send it, and the record opens the next one.
            while builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                if not builder.record_count():
                    raise ValueError(f"a record for {topic} is larger than a batch")
                futures.append(await producer.send_batch(builder, topic, partition=partition))
                builder = producer.create_batch()
        if builder.record_count():
            futures.append(await producer.send_batch(builder, topic, partition=partition))
    await asyncio.gather(*futures)


def collect_garbage_less_often(threshold: int) -> None:
    """Every report allocates some hundred short-lived containers, so with Python's default
    threshold (700) a young collection ran every few reports, and the older generations, which
    hold the table and the directory, were traversed again and again as they grew (measured on
    the bench: about 8 s of garbage collection, 5.6 s of it full collections, in a process that
    ran 100,000 reports; at 50,000 the worker decided about a quarter more reports a second). The
    process is the worker's: its objects are collected less often, in larger rounds."""
    first, *older = gc.get_threshold()
    if threshold > first:
        gc.set_threshold(threshold, *older)
        log.info("garbage collector tuned", young_threshold=threshold)


def freeze_what_is_loaded() -> None:
    """Once the directory is loaded and faust has started, everything the process holds is
    moved out of the garbage collector's generations (``gc.freeze``): the directory alone is
    some hundred thousand objects for a fleet of 100,000, which every full collection traversed
    again (measured on the bench: 0.23 s for one, 0.15 s for two middle ones, in 14 s of
    ingest). Objects made later are collected as before; a frozen object is still freed when its
    last reference goes (only cycles among frozen objects would stay)."""
    gc.collect(1)  # the young garbage is not frozen (a full collection here took 0.19 s)
    gc.freeze()
    log.info("loaded objects frozen out of the garbage collector", frozen=gc.get_freeze_count())


def _loads(raw: bytes) -> Document:
    state: Document = orjson.loads(raw)
    return state


WATERMARK_PREFIX = b"\x00watermark:"  # no serial starts with a NUL byte


def _watermark_key(topic: str, partition: int) -> bytes:
    return WATERMARK_PREFIX + f"{topic}:{partition}".encode()


def _merge(first: Batch, then: Batch) -> Batch:
    return Batch(
        readings=first.readings + then.readings,
        decisions=first.decisions + then.decisions,
        events=first.events + then.events,
        inputs=first.inputs + then.inputs,
        states={**first.states, **then.states},  # the newer state of a device wins
        urgent=first.urgent or then.urgent,
    )


NOTHING = Outputs()  # what an input that changes no state leads to (never added to)


def _model_event(target: str, key: str, event: Event, event_id: str) -> EventOut:
    return EventOut(target, key, event.event_type, event_id, event.model_dump_json().encode())


def _stale_event(
    device: model.Device, last_seen: float, recovered: bool, position: str
) -> EventOut:
    stale = DeviceStale(
        device_id=device.device_id,
        org_id=device.org_id,
        serial=device.serial,
        last_seen_at=datetime.fromtimestamp(last_seen, UTC),
        recovered=recovered,
    )
    kind = "recovered" if recovered else "stale"
    return _model_event(METER_EVENTS.name, device.device_id, stale, f"{position}:{kind}")


def accepted_payload(reading: model.Reading) -> bytes:
    """The ``ReadingAccepted`` event of a reading the rules accepted, as JSON: built directly
    from the validated values (a model built and dumped per report costs several times more;
    a unit test holds the two equal)."""
    return orjson.dumps(
        {
            "reading_id": reading.reading_id,
            "device_id": reading.device_id,
            "org_id": reading.org_id,
            "source": reading.source,  # orjson writes an enum as its value
            "counters": reading.counters,
            "read_at": reading.read_at,
            "submitted_by": reading.submitted_by,
        }
    )


def _short(exc: ValidationError) -> str:
    parts = [f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()]
    return "; ".join(parts)[:1000]


Record = tuple[str, int, bytes, bytes, list[tuple[str, bytes]]]
"""topic, partition, key, value, headers"""

IngestorFactory = Callable[[faust.App], Ingestor]
