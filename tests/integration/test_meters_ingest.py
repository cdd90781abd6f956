"""The meters ingestion worker (faust) against a real Kafka broker and MongoDB-wire server.

Telemetry in, readings and events out; duplicates dropped, a counter going down an anomaly,
malformed reports dead-lettered while the stream goes on, removed devices refused; manual
submissions through the same partitions (two at once: one accepted; racing a report: one
consistent order); a full re-delivery changes nothing; each changelog record on its key's
partition; a quiet device goes stale once and comes back; a worker whose inputs differ in
partition count refuses to start; decisions older than their retention are purged.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from services.meters.adapters.store import DECISIONS, INDEXES, READINGS
from services.meters.adapters.stream import WATERMARK_PREFIX, Ingestor
from services.meters.config import IngestSettings, MetersSettings
from services.meters.core import handlers
from services.meters.inject import KafkaCommandBus, ingestion
from shared.bus import Publisher, ensure_topics
from shared.config import KafkaSettings, MongoSettings
from shared.contracts import (
    DEAD_LETTER,
    DEVICES,
    METER_EVENTS,
    ORGANISATIONS,
    DeviceState,
    OrganisationState,
    ReadingSource,
)
from shared.store import Mongo
from tests.conftest import Infra
from tests.support import create_topic, eventually, header, read_topic

pytestmark = pytest.mark.integration


@dataclass
class Fleet:
    org_id: str
    timezone: str
    devices: dict[str, str] = field(default_factory=dict)  # serial -> device_id


@dataclass
class Worker:
    settings: MetersSettings
    mongo: Mongo
    publisher: Publisher
    telemetry: str
    commands: str
    app_id: str
    fleet: Fleet
    producer: AIOKafkaProducer
    ingestor: Ingestor | None = None

    async def send(self, serial: str, report: dict[str, Any] | bytes) -> None:
        value = report if isinstance(report, bytes) else json.dumps(report).encode()
        await self.producer.send_and_wait(self.telemetry, value=value, key=serial.encode())

    async def readings(self, device_id: str) -> list[dict[str, Any]]:
        cursor = self.mongo.db[READINGS].find({"device_id": device_id})
        return [d async for d in cursor]


def unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(5)}"


def report(
    serial: str, counters: dict[str, int], errors: list[str] | None = None
) -> dict[str, Any]:
    return {
        "serial": serial,
        "sent_at": datetime.now(UTC).isoformat(),
        "counters": counters,
        "supplies": {"black": 50},
        "errors": errors or [],
    }


async def publish_fleet(publisher: Publisher, count: int, *, removed: int = 0) -> Fleet:
    fleet = Fleet(unique("org"), "Europe/Helsinki")
    org = OrganisationState(
        org_id=fleet.org_id,
        customer_number=unique("C"),
        system_id=unique("S"),
        name="Oy Testi Ab",
        country="FI",
        timezone=fleet.timezone,
        language="fi",
        revision=1,
    )
    await publisher.publish(ORGANISATIONS, fleet.org_id, org)
    for i in range(count):
        serial, device_id = unique("SN"), unique("dev")
        state = DeviceState(
            device_id=device_id,
            org_id=fleet.org_id,
            serial=serial,
            model="bizhub",
            removed=i < removed,
            revision=1,
        )
        await publisher.publish(DEVICES, device_id, state)
        fleet.devices[serial] = device_id
    return fleet


@pytest.fixture(scope="module")
async def base(infra: Infra) -> AsyncIterator[tuple[KafkaSettings, MongoSettings]]:
    kafka = infra.kafka_admin
    await ensure_topics(kafka)
    yield kafka, MongoSettings(url=infra.mongo_url, database_prefix="t" + secrets.token_hex(4))


async def start_worker(worker: Worker) -> Ingestor:
    cm = ingestion(
        worker.settings,
        worker.mongo.db,
        worker.publisher,
        app_id=worker.app_id,
        telemetry_topic=worker.telemetry,
        commands_topic=worker.commands,
    )
    ingestor = await cm.__aenter__()
    ingestor._cm = cm  # type: ignore[attr-defined]
    worker.ingestor = ingestor
    await eventually(lambda: _ready(ingestor), timeout=60, what="ingestion ready")
    return ingestor


async def _ready(ingestor: Ingestor) -> bool:
    return ingestor.ready() and bool(ingestor.app.consumer.assignment())


async def stop_worker(worker: Worker) -> None:
    assert worker.ingestor is not None
    await worker.ingestor._cm.__aexit__(None, None, None)  # type: ignore[attr-defined]
    worker.ingestor = None


@pytest.fixture(scope="module")
async def worker(
    base: tuple[KafkaSettings, MongoSettings], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    kafka, mongo_settings = base
    ingest = IngestSettings(
        stale_after_seconds=3.0,
        stale_check_interval_seconds=0.5,
        flush_interval_ms=50,
        data_dir=str(tmp_path_factory.mktemp("faust")),
    )
    settings = MetersSettings(kafka=kafka, mongo=mongo_settings, ingest=ingest)
    telemetry = await create_topic(kafka, partitions=3)
    commands = await create_topic(kafka, partitions=3)
    async with (
        Mongo(mongo_settings, "meters") as mongo,
        Publisher(kafka, "meters") as publisher,
    ):
        await mongo.ensure_indexes(INDEXES)
        fleet = await publish_fleet(publisher, 8, removed=1)
        producer = AIOKafkaProducer(**kafka.client_options(), acks="all")
        await producer.start()
        w = Worker(
            settings, mongo, publisher, telemetry, commands, "meters.t" + secrets.token_hex(4),
            fleet, producer,
        )  # fmt: skip
        try:
            await start_worker(w)
            yield w
        finally:
            if w.ingestor is not None:
                await stop_worker(w)
            await producer.stop()


def serials(worker: Worker) -> list[str]:
    return list(worker.fleet.devices)


async def events_for(worker: Worker, device_id: str, event_type: str) -> list[dict[str, Any]]:
    return [
        json.loads(r.value)
        for r in await read_topic(worker.settings.kafka, METER_EVENTS.name)
        if r.key == device_id.encode() and header(r, "event_type") == event_type
    ]


async def test_reports_become_readings_duplicates_dropped_lower_is_an_anomaly(
    worker: Worker,
) -> None:
    serial = serials(worker)[1]
    device_id = worker.fleet.devices[serial]
    for counters in ({"total": 10}, {"total": 10}, {"total": 12}, {"total": 11}, {"total": 15}):
        await worker.send(serial, report(serial, counters))

    async def three() -> list[dict[str, Any]]:
        docs = await worker.readings(device_id)
        return docs if len(docs) == 3 else []

    docs = await eventually(three, timeout=30)
    assert sorted(d["counters"]["total"] for d in docs) == [10, 12, 15]
    assert {d["source"] for d in docs} == {"emaintenance"}
    anomalies = await eventually(
        lambda: events_for(worker, device_id, "meters.reading-anomaly"), timeout=15
    )
    assert anomalies[0]["counters"] == {"total": [12, 11]}
    accepted = await eventually(
        lambda: _at_least(events_for(worker, device_id, "meters.reading-accepted"), 3)
    )
    assert sorted(e["counters"]["total"] for e in accepted) == [10, 12, 15]


async def _at_least(coro: Any, n: int) -> list[Any]:
    items: list[Any] = await coro
    return items if len(items) >= n else []


async def test_faults_are_published_when_the_codes_change(worker: Worker) -> None:
    serial = serials(worker)[2]
    device_id = worker.fleet.devices[serial]
    for errors in (["C-1"], ["C-1"], ["C-1", "J-7"], [], ["C-1"]):
        await worker.send(serial, report(serial, {}, errors))
    faults = await eventually(
        lambda: _at_least(events_for(worker, device_id, "meters.device-fault-reported"), 3)
    )
    assert [f["error_codes"] for f in faults] == [["C-1"], ["C-1", "J-7"], ["C-1"]]


async def test_malformed_reports_are_dead_lettered_and_the_stream_goes_on(worker: Worker) -> None:
    serial = serials(worker)[3]
    device_id = worker.fleet.devices[serial]
    await worker.send(serial, b"{not json")
    await worker.send(serial, report(serial, {"total": -1}))
    await worker.send(unique("SN"), report(unique("SN"), {"total": 1}))  # key and serial differ
    # Counters the store cannot hold (a 64-bit integer, a field name): their batch used to fail
    # to write, and the worker retried it for ever, deciding nothing after it.
    await worker.send(serial, report(serial, {"total": 2**64}))
    await worker.send(serial, report(serial, {"$set": 5}))
    await worker.send(serial, report(serial, {"a.b": 5}))
    await worker.send(serial, report(serial, {"total": 7}))

    async def one() -> list[dict[str, Any]]:
        return await worker.readings(device_id)

    assert [d["counters"] for d in await eventually(one, timeout=30)] == [{"total": 7}]

    async def letters() -> list[dict[str, Any]]:
        found = [
            json.loads(r.value)
            for r in await read_topic(worker.settings.kafka, DEAD_LETTER.name)
            if r.key == worker.telemetry.encode()
        ]
        return found if len(found) >= 6 else []

    found = await eventually(letters, timeout=15)
    assert {f["consumer_group"] for f in found} == {worker.app_id}
    reasons = " | ".join(f["error"] for f in found)
    assert "invalid TelemetryReport" in reasons and "differ" in reasons
    assert "counters.total: Input should be less than or equal to 1000000000000" in reasons
    assert reasons.count("counters.$set") == 1 and reasons.count("counters.a.b") == 1


async def test_reports_of_removed_devices_are_refused(worker: Worker) -> None:
    removed = serials(worker)[0]
    live = serials(worker)[4]
    await worker.send(removed, report(removed, {"total": 5}))
    await worker.send(live, report(live, {"total": 5}))
    await eventually(lambda: worker.readings(worker.fleet.devices[live]), timeout=30)
    assert await worker.readings(worker.fleet.devices[removed]) == []


async def test_two_manual_submissions_at_once_exactly_one_accepted(worker: Worker) -> None:
    assert worker.ingestor is not None
    serial = serials(worker)[5]
    device_id = worker.fleet.devices[serial]
    bus = KafkaCommandBus(worker.publisher, worker.commands)
    now = datetime.now(UTC)

    async def submit(total: int) -> Any:
        cmd = handlers.SubmitReading(
            device_id, {"total": total}, "user-1", now, ReadingSource.MANUAL
        )
        return await handlers.submit_reading(
            cmd, worker.ingestor.directory, bus, worker.ingestor.decisions, 10.0
        )

    outcomes = await asyncio.gather(submit(100), submit(101))
    assert sorted(o.accepted for o in outcomes) == [False, True]
    refused = next(o for o in outcomes if not o.accepted)
    assert [r["rule"] for r in refused.refusals] == ["already_submitted_today"]
    assert len(await worker.readings(device_id)) == 1
    assert await worker.mongo.db[DECISIONS].count_documents({"_id": refused.command_id}) == 1


async def test_a_manual_submission_racing_a_report_is_decided_in_one_order(
    worker: Worker,
) -> None:
    assert worker.ingestor is not None
    serial = serials(worker)[6]
    device_id = worker.fleet.devices[serial]
    bus = KafkaCommandBus(worker.publisher, worker.commands)
    cmd = handlers.SubmitReading(
        device_id, {"total": 50}, "user-1", datetime.now(UTC), ReadingSource.MANUAL
    )
    outcome, _ = await asyncio.gather(
        handlers.submit_reading(cmd, worker.ingestor.directory, bus, worker.ingestor.decisions, 10),
        worker.send(serial, report(serial, {"total": 100})),
    )

    async def settled() -> list[dict[str, Any]]:
        docs = await worker.readings(device_id)
        return docs if any(d["source"] == "emaintenance" for d in docs) else []

    docs = await eventually(settled, timeout=30)
    if outcome.accepted:  # the submission came first: the report (higher) follows it
        assert sorted(d["counters"]["total"] for d in docs) == [50, 100]
    else:  # the report came first: the submission is lower than it
        assert outcome.refusals[0]["rule"] == "lower_than_previous"
        assert outcome.refusals[0]["previous"] == 100
        assert [d["counters"]["total"] for d in docs] == [100]


async def test_changelog_records_land_on_their_keys_partition(worker: Worker) -> None:
    # Written by the earlier tests; the producer's partitioner is the reference.
    changelog = f"{worker.app_id}-devices-changelog"
    records = await read_topic(worker.settings.kafka, changelog)
    partitioner = DefaultPartitioner()
    states = [r for r in records if not r.key.startswith(WATERMARK_PREFIX)]
    assert len(states) >= 5
    for r in states:
        assert r.partition == partitioner(r.key, [0, 1, 2], [0, 1, 2]), r.key
    # Each input partition's watermark (its last decided offset) on that same partition.
    watermarks = [r for r in records if r.key.startswith(WATERMARK_PREFIX)]
    assert {r.key.decode().rsplit(":", 1)[0] for r in watermarks} >= {
        f"\x00watermark:{worker.telemetry}"
    }
    for r in watermarks:
        assert r.partition == int(r.key.rsplit(b":", 1)[1]), r.key


async def test_a_quiet_device_goes_stale_once_and_comes_back(worker: Worker) -> None:
    serial = serials(worker)[7]
    device_id = worker.fleet.devices[serial]
    await worker.send(serial, report(serial, {"total": 1}))
    stale = await eventually(
        lambda: events_for(worker, device_id, "meters.device-stale"), timeout=30
    )
    assert stale[0]["recovered"] is False
    await worker.send(serial, report(serial, {"total": 2}))

    async def recovered() -> list[dict[str, Any]]:
        found = await events_for(worker, device_id, "meters.device-stale")
        return found if any(e["recovered"] for e in found) else []

    found = await eventually(recovered, timeout=30)
    assert [e["recovered"] for e in found][:2] == [False, True]


async def test_a_full_redelivery_changes_nothing(worker: Worker) -> None:
    """The group's offsets go back to the start: every report and submission comes again; the
    table (recovered from its changelog) already holds their decisions, whose outputs are
    durable, so each input is recognised as decided and dropped: nothing is written twice."""
    await asyncio.sleep(0)  # the earlier tests' outputs are flushed: their readings are counted
    before = await worker.mongo.db[READINGS].count_documents({})
    assert before > 0
    await stop_worker(worker)
    consumer = AIOKafkaConsumer(
        **worker.settings.kafka.client_options(),
        group_id=worker.app_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in (worker.telemetry, worker.commands) for p in range(3)]
        consumer.assign(tps)
        await consumer.commit({tp: 0 for tp in tps})
    finally:
        await consumer.stop()
    ingestor = await start_worker(worker)

    async def caught_up() -> bool:
        ends = await _ends(worker)
        return ingestor.flushed >= sum(ends.values())

    await eventually(caught_up, timeout=180, what="the re-delivered inputs flushed")
    assert await worker.mongo.db[READINGS].count_documents({}) == before
    assert ingestor.stats.replayed > 0


async def _ends(worker: Worker) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(**worker.settings.kafka.client_options())
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in (worker.telemetry, worker.commands) for p in range(3)]
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def test_decisions_older_than_the_retention_are_purged(worker: Worker) -> None:
    assert worker.ingestor is not None
    decisions = worker.mongo.db[DECISIONS]
    now = datetime.now(UTC)
    old, recent = unique("cmd-old"), unique("cmd-recent")
    await decisions.insert_many(
        [
            {"_id": old, "accepted": False, "reading": None, "refusals": [],
             "decided_at": now - timedelta(days=2)},
            {"_id": recent, "accepted": False, "reading": None, "refusals": [],
             "decided_at": now - timedelta(hours=1)},
        ]
    )  # fmt: skip
    assert await worker.ingestor.purge_decisions() == 1  # retention: a day (the default)
    assert await decisions.find_one({"_id": old}) is None
    assert await decisions.find_one({"_id": recent}) is not None


async def test_a_worker_whose_inputs_differ_in_partitions_refuses_to_start(
    base: tuple[KafkaSettings, MongoSettings], tmp_path_factory: pytest.TempPathFactory
) -> None:
    kafka, mongo_settings = base
    ingest = IngestSettings(data_dir=str(tmp_path_factory.mktemp("faust-mismatch")))
    settings = MetersSettings(kafka=kafka, mongo=mongo_settings, ingest=ingest)
    telemetry = await create_topic(kafka, partitions=3)
    commands = await create_topic(kafka, partitions=1)
    async with Mongo(mongo_settings, "meters") as mongo, Publisher(kafka, "meters") as publisher:
        with pytest.raises(RuntimeError, match="differ in partitions") as refused:
            async with ingestion(
                settings,
                mongo.db,
                publisher,
                app_id=unique("meters.t"),
                telemetry_topic=telemetry,
                commands_topic=commands,
            ):
                pass
    assert f"{telemetry} has 3, {commands} has 1" in str(refused.value)
