"""The ingestion worker: one faust app that decides every reading of the devices it owns.

It consumes ``emaintenance.telemetry`` and ``meters.commands`` (manual submissions and stale
checks), both keyed by serial with the same partition count, so partition *p* of both belongs
to one worker, and the per-device state lives in a faust Table co-partitioned with them: each
device has exactly one writer, whatever the interleaving of its inputs.

Durability, in order:
1. Each input is decided against the table inside stream iteration (so the changelog record
   goes to the input's partition, which is the key's partition), and its outputs (readings,
   decisions on submissions, events) are buffered; events are not acknowledged yet (``noack``).
2. A flush writes the readings with ``insert_many`` (ids derived from the input's position, so
   a re-delivery inserts nothing), then the decisions, then publishes the events, and only
   then acknowledges the inputs; faust commits acknowledged offsets after flushing its
   producer (the changelog).
3. The changelog can therefore be *ahead* of the committed offsets, never behind. To make a
   re-delivery replay the original decision instead of deciding again against newer state,
   the state records the last offset decided per input topic and the outputs not yet known to
   be durable (``unconfirmed``); a re-delivered input re-emits its own outputs (idempotent by
   id) and nothing else. Outputs older than the last flush are pruned as the device is seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError
from pymongo.asynchronous.database import AsyncDatabase

from services.meters.adapters.directory import Directory
from services.meters.adapters.store import (
    LocalDecisions,
    decision_doc,
    insert_ignoring_duplicates,
    reading_doc,
)
from services.meters.config import IngestSettings
from services.meters.core import model
from services.meters.core.model import Decision, DeviceMemory, Report, Submission
from services.meters.core.ports import Outcome
from shared.bus import Publisher
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
from shared.events import HEADER_CORRELATION_ID, HEADER_EVENT_TYPE, Envelope, Event, utcnow
from shared.logging import get_logger
from shared.store import Document

log = get_logger(__name__)

APP_ID = "meters.ingest"  # also the consumer group; every internal topic starts with it
TABLE = "devices"  # changelog: meters.ingest-devices-changelog
READINGS = "readings"
DECISIONS = "decisions"


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
    return faust.App(
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


@dataclass
class Batch:
    """Outputs waiting for the next flush, and the inputs they came from."""

    readings: list[Document] = field(default_factory=list)
    decisions: list[Document] = field(default_factory=list)
    events: list[Document] = field(default_factory=list)
    inputs: list[Any] = field(default_factory=list)  # faust events to acknowledge
    watermarks: dict[tuple[str, int], int] = field(default_factory=dict)
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
            # the changelog and in recovery); values are JSON.
            key_type=bytes,
            schema=faust.Schema(key_serializer="raw", value_serializer="json"),
            partitions=None,
        )
        self._batch = Batch()
        self._lock = asyncio.Lock()
        self._durable: dict[tuple[str, int], int] = {}
        self._stale_pending: set[bytes] = set()
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
        self._flusher: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, kafka: KafkaSettings) -> None:
        """The events' own producer (idempotent, acks=all, large batches), then the flusher."""
        self._producer = AIOKafkaProducer(
            **kafka.client_options(),
            client_id=f"{self.publisher.service}-ingest-producer",
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_batch_size=512 * 1024,
        )
        await self._producer.start()
        self._flusher = asyncio.create_task(self._flush_loop())

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
        await self.directory.caught_up.wait()
        async for event in stream.noack().events():
            try:
                self._decide(event)
            except Exception as exc:  # a bug, not the message: park it, keep the stream going
                log.exception("decision failed", topic=event.message.topic)
                self._dead_letter(event, f"{type(exc).__name__}: {exc}")
            # Every input is acknowledged by the flush that makes its outputs durable.
            self._batch.inputs.append(event)
            self._mark(event.message)
            batch = self._batch
            if batch.urgent or len(batch) >= self.settings.batch_size:
                await self._flush_until_done()

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

    def _decide(self, event: Any) -> None:
        msg = event.message
        tag = self._tags[msg.topic]
        position = f"{msg.topic}:{msg.partition}:{msg.offset}"
        key: bytes | None = event.key
        if key is None:
            self._dead_letter(event, "no key: messages must be keyed by serial")
            return
        raw = self.table.get(key)
        memory = DeviceMemory.from_dict(raw)
        if memory.positions.get(tag, -1) >= msg.offset:
            self._replay(event, memory, position)
            return
        self._prune(memory, msg.partition)
        headers = {k: bytes(v).decode(errors="replace") for k, v in (msg.headers or ())}
        if tag == "t":
            decision, outputs = self._telemetry(event, key, position, memory)
        else:
            decision, outputs = self._command(event, key, position, headers, memory)
        if decision is None:
            return
        after = decision.memory
        after.positions = {**memory.positions, tag: msg.offset}
        after.unconfirmed = [*memory.unconfirmed, *outputs]
        if len(after.unconfirmed) > self.settings.max_unconfirmed:
            # Bounded: the oldest were certainly flushed by now (a flush is due long before).
            after.unconfirmed = after.unconfirmed[-self.settings.max_unconfirmed :]
        self.table[key] = after.to_dict()
        self._add_outputs(outputs)

    def _mark(self, msg: Any) -> None:
        tp = (msg.topic, msg.partition)
        self._batch.watermarks[tp] = max(self._batch.watermarks.get(tp, -1), msg.offset)

    def _prune(self, memory: DeviceMemory, partition: int) -> None:
        if not memory.unconfirmed:
            return
        memory.unconfirmed = [
            o
            for o in memory.unconfirmed
            if o["offset"] >= self._durable.get((o["topic"], partition), -1)
        ]

    def _replay(self, event: Any, memory: DeviceMemory, position: str) -> None:
        """A re-delivered input: its decision stands; re-emit its outputs (idempotent)."""
        outputs = [o for o in memory.unconfirmed if o["position"] == position]
        self.stats.replayed += 1
        self._add_outputs(outputs)

    def _add_outputs(self, outputs: Iterable[Document]) -> None:
        for out in outputs:
            kind = out["kind"]
            if kind == "reading":
                self._batch.readings.append(out)
            elif kind == "decision":
                self._batch.decisions.append(out)
                self._batch.urgent = True  # someone waits for it
            else:
                self._batch.events.append(out)

    def _dead_letter(self, event: Any, reason: str) -> None:
        msg = event.message
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
            _event_output(
                "", msg.topic, msg.offset, DEAD_LETTER.name, msg.topic, letter,
                f"dlq:{letter.event_id}",
            )
        )  # fmt: skip

    # --- deciding ---------------------------------------------------------------------------

    def _telemetry(
        self, event: Any, key: bytes, position: str, memory: DeviceMemory
    ) -> tuple[Decision | None, list[Document]]:
        msg = event.message
        try:
            report = TelemetryReport.model_validate_json(msg.value or b"")
        except ValidationError as exc:
            self._dead_letter(event, f"invalid TelemetryReport: {_short(exc)}")
            return None, []
        if report.serial.encode() != key:
            self._dead_letter(event, "the key and the report's serial differ")
            return None, []
        device = self.directory.by_serial(report.serial)
        if device is None:
            self._dead_letter(event, "unknown serial: no device has it")
            return None, []
        if device.removed:
            self.stats.removed_dropped += 1
            return None, []
        decision = model.ingest_report(
            memory,
            Report(
                reading_id=position,
                counters=dict(report.counters),
                errors=tuple(report.errors),
                sent_at=report.sent_at,
                received_at=msg.timestamp or time.time(),
            ),
            device,
        )
        outputs: list[Document] = []
        topic, offset = msg.topic, msg.offset
        if decision.reading is not None:
            self.stats.accepted += 1
            outputs.extend(self._accepted(decision.reading, position, topic, offset, None))
        if decision.duplicate:
            self.stats.duplicates += 1
        if decision.anomaly:
            self.stats.anomalies += 1
            anomaly = ReadingAnomaly(
                device_id=device.device_id,
                org_id=device.org_id,
                serial=device.serial,
                counters=decision.anomaly,
                read_at=report.sent_at,
            )
            outputs.append(
                _event_output(
                    position, topic, offset, METER_EVENTS.name, device.device_id, anomaly,
                    f"{position}:anomaly",
                )
            )  # fmt: skip
        if decision.fault:
            self.stats.faults += 1
            fault = DeviceFaultReported(
                device_id=device.device_id,
                org_id=device.org_id,
                serial=device.serial,
                error_codes=decision.fault,
                reported_at=report.sent_at,
            )
            outputs.append(
                _event_output(
                    position, topic, offset, METER_EVENTS.name, device.device_id, fault,
                    f"{position}:fault",
                )
            )  # fmt: skip
        if decision.stale is False and memory.last_seen is not None:
            outputs.append(self._stale_output(device, memory.last_seen, True, position, msg))
        return decision, outputs

    def _stale_output(
        self, device: model.Device, last_seen: float, recovered: bool, position: str, msg: Any
    ) -> Document:
        stale = DeviceStale(
            device_id=device.device_id,
            org_id=device.org_id,
            serial=device.serial,
            last_seen_at=datetime.fromtimestamp(last_seen, UTC),
            recovered=recovered,
        )
        kind = "recovered" if recovered else "stale"
        return _event_output(
            position, msg.topic, msg.offset, METER_EVENTS.name, device.device_id, stale,
            f"{position}:{kind}",
        )  # fmt: skip

    def _command(
        self,
        event: Any,
        key: bytes,
        position: str,
        headers: dict[str, str],
        memory: DeviceMemory,
    ) -> tuple[Decision | None, list[Document]]:
        msg = event.message
        event_type = headers.get(HEADER_EVENT_TYPE)
        try:
            if event_type == StaleCheck.event_type:
                check = StaleCheck.model_validate_json(msg.value or b"")
                self._stale_pending.discard(key)
                device = self.directory.by_serial(check.serial)
                decision = model.check_stale(
                    memory, device, time.time(), self.settings.stale_after_seconds
                )
                if decision.stale and device is not None and memory.last_seen is not None:
                    return decision, [
                        self._stale_output(device, memory.last_seen, False, position, msg)
                    ]
                return (decision if decision.stale else None), []
            cmd = ReadingSubmitted.model_validate_json(msg.value or b"")
        except ValidationError as exc:
            self._dead_letter(event, f"invalid command: {_short(exc)}")
            return None, []
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
        outputs: list[Document] = []
        reading_json: Document | None = None
        if decision.reading is not None:
            self.stats.accepted += 1
            correlation = headers.get(HEADER_CORRELATION_ID)
            outputs.extend(
                self._accepted(decision.reading, position, msg.topic, msg.offset, correlation)
            )
            reading_json = outputs[0]["doc"]
        else:
            self.stats.refused += 1
        outputs.append(
            {
                "kind": "decision",
                "position": position,
                "topic": msg.topic,
                "offset": msg.offset,
                "doc": {
                    "_id": cmd.command_id,
                    "accepted": decision.reading is not None,
                    "reading": reading_json,
                    "refusals": [r.as_dict() for r in decision.refusals],
                },
            }
        )
        return decision, outputs

    def _accepted(
        self,
        reading: model.Reading,
        position: str,
        topic: str,
        offset: int,
        correlation_id: str | None,
    ) -> list[Document]:
        doc = {
            "_id": reading.reading_id,
            "device_id": reading.device_id,
            "org_id": reading.org_id,
            "serial": reading.serial,
            "source": reading.source.value,
            "counters": reading.counters,
            "read_at": _iso(reading.read_at),
            "submitted_by": reading.submitted_by,
            "reason": reading.reason,
        }
        event = ReadingAccepted(
            reading_id=reading.reading_id,
            device_id=reading.device_id,
            org_id=reading.org_id,
            source=reading.source,
            counters=reading.counters,
            read_at=reading.read_at,
            submitted_by=reading.submitted_by,
        )
        return [
            {"kind": "reading", "position": position, "topic": topic, "offset": offset, "doc": doc},
            _event_output(
                position, topic, offset, METER_EVENTS.name, reading.device_id, event,
                reading.reading_id, correlation_id,
            ),
        ]  # fmt: skip

    # --- flushing ---------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        interval = self.settings.flush_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            if len(self._batch):
                try:
                    await self.flush()
                except Exception as exc:  # retried next round; nothing was acknowledged
                    log.error("flush failed; retrying", error=repr(exc))

    async def flush(self) -> None:
        """Readings, decisions, events: durable in that order; then acknowledge the inputs."""
        async with self._lock:
            batch, self._batch = self._batch, Batch()
            if not len(batch):
                return
            try:
                await self._write(batch)
            except BaseException:
                # Put it back in front: retried by the next flush, never acknowledged unwritten.
                self._batch = _merge(batch, self._batch)
                raise
            for event in batch.inputs:
                event.ack()
            for tp, offset in batch.watermarks.items():
                self._durable[tp] = max(self._durable.get(tp, -1), offset + 1)
            self.flushed += len(batch)
            for doc in batch.decisions:
                d = doc["doc"]
                self.decisions.resolve(
                    Outcome(d["_id"], d["accepted"], d["reading"], d["refusals"])
                )

    async def _write(self, batch: Batch) -> None:
        size = self.settings.insert_batch_size
        readings = [reading_doc(o["doc"]) for o in batch.readings]
        for start in range(0, len(readings), size):
            await insert_ignoring_duplicates(self.db[READINGS], readings[start : start + size])
        if batch.decisions:
            await insert_ignoring_duplicates(
                self.db[DECISIONS], [decision_doc(o["doc"]) for o in batch.decisions]
            )
        producer = self._producer or self.publisher.producer
        futures: list[Awaitable[Any]] = []
        for out in batch.events:
            headers = Envelope(
                event_id=out["event_id"],
                event_type=out["event_type"],
                producer=self.publisher.service,
                correlation_id=out.get("correlation_id"),
            ).to_headers()
            futures.append(
                await producer.send(
                    out["target"],
                    value=json.dumps(out["payload"]).encode(),
                    key=out["key"].encode(),
                    headers=headers,
                )
            )
        if futures:
            await asyncio.gather(*futures)

    # --- staleness --------------------------------------------------------------------------

    async def _stale_timer(self) -> None:
        """Ask the owner about devices that look quiet (bounded per round); the owner decides
        once, in stream order, so a device goes stale once and comes back once."""
        now = time.time()
        after = self.settings.stale_after_seconds
        sent = 0
        for key, raw in list(self.table.items()):
            if sent >= self.settings.stale_checks_per_round:
                break
            if key in self._stale_pending or not raw:
                continue
            if not model.is_quiet(DeviceMemory.from_dict(raw), now, after):
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


def _merge(first: Batch, then: Batch) -> Batch:
    merged = Batch(
        readings=first.readings + then.readings,
        decisions=first.decisions + then.decisions,
        events=first.events + then.events,
        inputs=first.inputs + then.inputs,
        urgent=first.urgent or then.urgent,
    )
    for wm in (first.watermarks, then.watermarks):
        for tp, offset in wm.items():
            merged.watermarks[tp] = max(merged.watermarks.get(tp, -1), offset)
    return merged


def _event_output(
    position: str,
    topic: str,
    offset: int,
    target: str,
    key: str,
    event: Event,
    event_id: str,
    correlation_id: str | None = None,
) -> Document:
    return {
        "kind": "event",
        "position": position,
        "topic": topic,
        "offset": offset,
        "target": target,
        "key": key,
        "event_type": event.event_type,
        "event_id": event_id,
        "correlation_id": correlation_id,
        "payload": event.model_dump(mode="json"),
    }


def _short(exc: ValidationError) -> str:
    parts = [f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()]
    return "; ".join(parts)[:1000]


IngestorFactory = Callable[[faust.App], Ingestor]
