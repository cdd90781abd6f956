"""Benchmark of the meters ingestion worker against a real broker and MongoDB-wire server.

    python tests/perf/bench_meters.py                 # starts local Kafka + FerretDB
    BENCH_REPORTS=200000 BENCH_DEVICES=100000 python tests/perf/bench_meters.py

A backlog of simulated reports (``services.meters.simulator``) is produced first; then, in the
same run:
- baseline: a plain aiokafka consumer reads the backlog and ``insert_many``s the raw documents
  (no validation, no state, no events), once the servers have settled (``BENCH_SETTLE_SECONDS``
  of quiet after the backlog is produced, 75 by default) and after an untimed warm-up on a
  quarter of it; again right after the worker, so that the worker is
  also compared with the mean of two baselines that bracket it (``..._bracketing_baselines``:
  the machine's speed drifts from minute to minute);
- meters: the faust worker decides every report against its table, writes the accepted
  readings with ``insert_many`` and publishes the events; timed from the worker's start until
  every report is flushed (acknowledged);
- readings stored alone: the worker's readings inserted again into a new collection with the
  same index, as the worker writes them, and nothing else: what storing its output costs the
  servers, and the worker's rate against that;
- writes without decisions: the backlog consumed and each report's reading, event and changelog
  record written as the worker writes them, with no validation, state or rules in between: the
  worker's plumbing with its own logic at zero, against the bracketing baselines;
- latency: reports sent at half the measured rate; end-to-end time from a report's
  ``sent_at`` to its ``ReadingAccepted`` on ``meters.events`` (p50, p99);
- scale-out: the same backlog decided again by one worker process, then by two (each its own
  consumer group and database), timed on ``meters.events`` from the first ``ReadingAccepted``
  to the last (each is published once its reading is durable): the two-worker rate and its
  ratio to one (``BENCH_WORKERS=0`` skips it); and both again from the moment the consumer
  group is stable with every worker in it (``..._stable_group``: the processes start together,
  so the second one's joining is a rebalance inside the first window); the CPU per reading of
  the worker processes (``python``) and the servers over the first window
  (``meters_workers_<n>_cpu_*``).
For the baseline and for the worker (after its directory), the CPU each process used per report
(``java`` is Kafka; ``bench`` is this process, where the worker runs) and how busy the machine's
cores were: on a machine that runs the servers too, the ratio of the two runs' CPU per report
bounds the ratio of their rates. Also how long the stream stood still waiting for the flusher.
Each figure on a ``BENCH <name> <value> <unit>`` line. Bounded: fixed counts, a time limit.
Uses ``FLEETDESK_TEST_KAFKA_BOOTSTRAP`` and ``FLEETDESK_TEST_MONGO_URL`` when both are set
(security from ``FLEETDESK_KAFKA_*``), else local servers (SASL, as the super user).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.meters.adapters.store import INDEXES, READINGS  # noqa: E402
from services.meters.adapters.stream import (  # noqa: E402
    Ingestor,
    Record,
    accepted_payload,
    collect_garbage_less_often,
    freeze_what_is_loaded,
    send_records,
)
from services.meters.config import IngestSettings, MetersSettings  # noqa: E402
from services.meters.core.model import Reading  # noqa: E402
from services.meters.inject import ingestion  # noqa: E402
from services.meters.simulator import Odds, Simulator, produce  # noqa: E402
from shared.bus import Publisher, ensure_topics, kafka_partition, new_producer  # noqa: E402
from shared.config import KafkaSettings, MongoSettings  # noqa: E402
from shared.contracts import (  # noqa: E402
    DEVICES,
    METER_EVENTS,
    ORGANISATIONS,
    DeviceState,
    OrganisationState,
    ReadingAccepted,
    ReadingSource,
)
from shared.events import envelope_headers  # noqa: E402
from shared.store import Mongo  # noqa: E402
from tests.integration import meters_worker  # noqa: E402
from tests.perf.servers import (  # noqa: E402
    CpuMeter,
    CpuSnapshot,
    insert_side_by_side,
    let_servers_settle,
    run_bench,
    scratch_dir,
)
from tests.perf.servers import bench_line as bench  # noqa: E402
from tests.support import eventually, kafka_environment  # noqa: E402

REPORTS = int(os.environ.get("BENCH_REPORTS", "200000"))
DEVICES_N = int(os.environ.get("BENCH_DEVICES", "100000"))
LATENCY_SECONDS = float(os.environ.get("BENCH_LATENCY_SECONDS", "10"))
INGEST_SECONDS = float(os.environ.get("BENCH_INGEST_SECONDS", "600"))
PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "6"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
LIMIT_SECONDS = 2400


async def _topic(kafka: KafkaSettings) -> str:
    name = f"meters.bench-{secrets.token_hex(5)}"
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    finally:
        await admin.close()
    return name


async def publish_devices(kafka: KafkaSettings, serials: list[str]) -> None:
    """The bench plays the devices service: one organisation, a device per serial."""
    org_id = "bench-" + secrets.token_hex(4)
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", linger_ms=10)
    await producer.start()
    try:
        org = OrganisationState(
            org_id=org_id,
            customer_number="B" + secrets.token_hex(4),
            system_id="S" + secrets.token_hex(4),
            name="Bench Oy",
            country="FI",
            timezone="Europe/Helsinki",
            language="fi",
            revision=1,
        )
        await producer.send_and_wait(
            ORGANISATIONS.name, org.model_dump_json().encode(), key=org_id.encode()
        )
        pending = []
        for i, serial in enumerate(serials):
            state = DeviceState(
                device_id=f"{org_id}-{i}", org_id=org_id, serial=serial, model="m", revision=1
            )
            pending.append(
                await producer.send(
                    DEVICES.name, state.model_dump_json().encode(), key=state.device_id.encode()
                )
            )
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def backlog_consumer(
    kafka: KafkaSettings, topic: str, max_records: int, partition_fetch_bytes: int
) -> AIOKafkaConsumer:
    """A started consumer of every partition of ``topic`` from its start, without a group."""
    consumer = AIOKafkaConsumer(
        **kafka.client_options(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_records,
        fetch_max_bytes=8 * 1024 * 1024,
        max_partition_fetch_bytes=partition_fetch_bytes,
    )
    await consumer.start()
    consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
    return consumer


async def baseline(
    kafka: KafkaSettings,
    topic: str,
    mongo: Mongo,
    collection_name: str = "baseline",
    count: int = REPORTS,
) -> float:
    """Plain consume of the backlog (its first ``count`` reports) + insert_many of the raw
    documents: reports/s."""
    consumer = await backlog_consumer(kafka, topic, 5000, 4 * 1024 * 1024)
    collection = mongo.db[collection_name]
    seen = 0
    started = time.perf_counter()
    try:
        while seen < count:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            docs = [
                {"_id": f"{r.partition}:{r.offset}", "raw": r.value.decode(errors="replace")}
                for records in batch.values()
                for r in records
            ]
            for start in range(0, len(docs), 1000):
                await collection.insert_many(docs[start : start + 1000], ordered=False)
            seen += len(docs)
    finally:
        await consumer.stop()
    return seen / (time.perf_counter() - started)


async def readings_stored_alone(mongo: Mongo, cpu: CpuMeter, worker_rate: float) -> None:
    """The worker's own readings (read back, untimed) inserted again into a new collection with
    the same index, as the worker writes them (``insert_many`` of 1,000, four side by side), and
    nothing else: no topic, no validation, no state, no events. What storing the worker's output
    costs the servers by itself (``..._cpu_ferretdb``, ``..._cpu_postgres``), beside the
    baseline's raw documents; and the worker's rate after its directory against it."""
    docs = [doc async for doc in mongo.db[READINGS].find({})]
    for doc in docs:
        doc["_id"] = "again:" + doc["_id"]
    collection = mongo.db["readings_alone"]
    await collection.create_indexes(INDEXES[READINGS])
    before = cpu.snapshot()
    seconds = await insert_side_by_side(collection, docs)
    rate = len(docs) / seconds
    bench("meters_readings_stored_alone", rate, "readings/s")
    cpu.report("meters_readings_stored_alone", before, cpu.snapshot(), max(len(docs), 1))
    bench("meters_ingest_after_directory_vs_readings_stored_alone", worker_rate / rate, "ratio")
    await collection.drop()


async def writes_without_decisions(
    kafka: KafkaSettings, topic: str, mongo: Mongo, serials: list[str]
) -> float:
    """The worker's reads and writes with no decision in between: the backlog consumed (a poll
    of up to 4,000 reports at a time), each report's JSON read (orjson, no validation, no state),
    its device looked up in a dict, its reading built as the worker stores it and inserted
    (``insert_many`` of 1,000, four side by side, the same index), then its ``ReadingAccepted``
    event and a changelog record for its device sent (one batch per partition, acks=all, as the
    worker sends them). Malformed reports are skipped. What the worker's plumbing costs with its
    own logic at zero: reports/s."""
    devices = {s.encode(): (f"undecided-{i}", "undecided-org") for i, s in enumerate(serials)}
    events, changelog = await _topic(kafka), await _topic(kafka)
    producer = new_producer(
        kafka, enable_idempotence=True, acks="all", linger_ms=5, max_batch_size=512 * 1024
    )
    collection = mongo.db["readings_undecided"]
    await collection.create_indexes(INDEXES[READINGS])
    consumer = await backlog_consumer(kafka, topic, 4000, 8 * 1024 * 1024)
    await producer.start()
    seen = 0
    started = time.perf_counter()
    try:
        partitions = sorted(await producer.partitions_for(events))
        while seen < REPORTS:
            polled = await consumer.getmany(timeout_ms=500, max_records=4000)
            now = datetime.now(UTC)
            docs: list[dict[str, Any]] = []
            records: list[Record] = []
            for tp, batch in polled.items():
                for r in batch:
                    seen += 1
                    report = orjson.loads(r.value or b"{}")
                    counters = report.get("counters") if isinstance(report, dict) else None
                    device = devices.get(r.key or b"")
                    if not isinstance(counters, dict) or device is None:
                        continue
                    device_id, org_id = device
                    reading = Reading(
                        reading_id=f"{r.topic}:{r.partition}:{r.offset}",
                        device_id=device_id,
                        org_id=org_id,
                        serial=report.get("serial"),
                        source=ReadingSource.EMAINTENANCE,
                        counters=counters,
                        read_at=datetime.fromisoformat(report["sent_at"]),
                    )
                    docs.append(
                        {
                            "_id": reading.reading_id,
                            "device_id": device_id,
                            "org_id": org_id,
                            "serial": reading.serial,
                            "source": "emaintenance",
                            "counters": counters,
                            "read_at": reading.read_at,
                            "accepted_at": now,
                        }
                    )
                    key = device_id.encode()
                    headers = envelope_headers(
                        reading.reading_id, ReadingAccepted.event_type, "meters", occurred_at=now
                    )
                    partition = kafka_partition(key, partitions)
                    records.append((events, partition, key, accepted_payload(reading), headers))
                    state = orjson.dumps({"counters": counters, "last_seen": now.timestamp()})
                    records.append((changelog, tp.partition, r.key or b"", state, []))
            await insert_side_by_side(collection, docs)
            await send_records(producer, records)
    finally:
        await consumer.stop()
        await producer.stop()
    rate = seen / (time.perf_counter() - started)
    await collection.drop()
    return rate


async def events_from_now(kafka: KafkaSettings) -> AIOKafkaConsumer:
    """A started consumer of ``meters.events`` (as the platform's topic setup made it, with
    these settings' partition count) at its end: only what is published from now on."""
    consumer = AIOKafkaConsumer(**kafka.client_options(), group_id=None)
    await consumer.start()
    tps = [TopicPartition(METER_EVENTS.name, p) for p in range(kafka.partitions)]
    consumer.assign(tps)
    for tp, end in (await consumer.end_offsets(tps)).items():
        consumer.seek(tp, end)
    return consumer


async def latency(
    kafka: KafkaSettings, telemetry: str, serials: list[str], rate: float, since_ms: int
) -> list[float]:
    """Send at ``rate`` for a while; seconds from sent_at to ReadingAccepted per reading."""
    count = max(1, min(len(serials), int(rate * LATENCY_SECONDS)))
    sim = Simulator(serials[:count], Odds(0, 0, 0, 0), seed=11)
    for device in sim.devices:  # the same devices, later: every counter above the backlog's
        device.counters = {name: value + 10_000_000 for name, value in device.counters.items()}
    consumer = await events_from_now(kafka)
    samples: list[float] = []
    seen: dict[str, int] = {}
    sender = asyncio.create_task(produce(kafka, telemetry, sim.stream(count), rate))
    deadline = time.monotonic() + LATENCY_SECONDS + 60
    try:
        while len(samples) < count * 0.95 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            now = time.time()
            for records in batch.values():
                for r in records:
                    kind = dict(r.headers or ()).get("event_type", b"?").decode()
                    seen[kind] = seen.get(kind, 0) + 1
                    if (r.headers or ()) and r.timestamp >= since_ms:
                        body = json.loads(r.value)
                        if body.get("source") == "emaintenance" and body["counters"]:
                            sent = datetime.fromisoformat(body["read_at"]).timestamp()
                            samples.append(now - sent)
        await sender
    finally:
        await consumer.stop()
    print(f"latency: {count} reports sent at {rate:.0f}/s; events seen {seen}", flush=True)
    return samples


async def group_stable(admin: AIOKafkaAdminClient, group: str, members: int) -> bool:
    """Whether the consumer group has ``members`` members and no rebalance in progress."""
    try:
        responses = await admin.describe_consumer_groups([group])
    except Exception:  # not there yet (its coordinator unknown): asked again next round
        return False
    # DescribeGroups: (error_code, group_id, state, protocol_type, protocol, members, ...)
    return any(
        g[0] == 0 and g[2] == "Stable" and len(g[5]) == members
        for response in responses
        for g in response.groups
    )


async def workers_rate(
    kafka: KafkaSettings, mongo_url: str, topics: tuple[str, str], workers: int, expected: int
) -> tuple[float, float | None] | None:
    """The backlog decided by ``workers`` worker processes of a new consumer group: readings/s
    from the first ``ReadingAccepted`` on ``meters.events`` to the ``expected``-th (each is
    published once its reading is durable), and the same from the moment the group is stable
    with every worker in it (the processes start together, and a second one joining is a
    rebalance inside the first window; None if it never was); None if not done in time.
    Counted on the topic, not in the database: FerretDB counts by reading the whole
    collection, and polling it took the CPU the workers are measured on."""
    token = secrets.token_hex(3)
    settings = MongoSettings(url=mongo_url, database_prefix="benchw" + token)
    logs = Path(tempfile.mkdtemp(prefix="fleetdesk-bench-workers-"))
    env = {
        **os.environ,
        **kafka_environment(kafka),
        "FLEETDESK_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "FLEETDESK_KAFKA_PARTITIONS": str(PARTITIONS),
        "FLEETDESK_MONGO_URL": mongo_url,
        "FLEETDESK_MONGO_DATABASE_PREFIX": settings.database_prefix,
        "FLEETDESK_METERS_STALE_CHECK_INTERVAL_SECONDS": "3600",
        "FLEETDESK_METERS_DATA_DIR": str(logs),
        "METERS_TEST_APP_ID": "meters.benchw-" + token,
        "METERS_TEST_TELEMETRY": topics[0],
        "METERS_TEST_COMMANDS": topics[1],
    }
    consumer = await events_from_now(kafka)
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    accepted = ReadingAccepted.event_type.encode()
    procs = [meters_worker.spawn(env, logs / f"worker-{i}.log") for i in range(workers)]
    first: tuple[float, int] | None = None
    stable: tuple[float, int] | None = None
    found = 0
    cpu = CpuMeter()  # the worker processes (``python``) and the servers, over the first window
    cpu_before: CpuSnapshot | None = None  # taken with ``first``
    try:
        give_up = time.monotonic() + INGEST_SECONDS + 120
        while time.monotonic() < give_up:
            batch = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            now = time.perf_counter()
            for records in batch.values():
                found += sum(1 for r in records if ("event_type", accepted) in (r.headers or ()))
            if found and first is None:
                first = (now, found)
                cpu_before = cpu.snapshot()
            if stable is None and await group_stable(admin, env["METERS_TEST_APP_ID"], workers):
                stable = (time.perf_counter(), found)
            if first is not None and cpu_before is not None and found >= expected:
                readings = found - first[1]
                cpu.report(f"meters_workers_{workers}", cpu_before, cpu.snapshot(), readings)
                shutil.rmtree(logs, ignore_errors=True)  # kept when they did not finish
                start = max(first, stable) if stable is not None else None
                return (
                    readings / max(now - first[0], 1e-3),
                    None if start is None else (found - start[1]) / max(now - start[0], 1e-3),
                )
        print(f"{workers} worker(s): {found} of {expected} in time; logs in {logs}", flush=True)
        return None
    finally:
        await admin.close()
        await consumer.stop()
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def _done(ingestor: Ingestor) -> bool:
    return ingestor.flushed >= REPORTS


async def run(kafka: KafkaSettings, mongo_url: str) -> None:
    with scratch_dir("fleetdesk-bench-faust-") as faust_dir:
        await _run(kafka, mongo_url, str(faust_dir))


async def _run(kafka: KafkaSettings, mongo_url: str, faust_dir: str) -> None:
    await ensure_topics(kafka)
    telemetry, commands = await _topic(kafka), await _topic(kafka)
    serials = [f"BENCH{secrets.token_hex(3)}-{i}" for i in range(DEVICES_N)]
    print(f"reports: {REPORTS} over {DEVICES_N} devices", flush=True)
    await publish_devices(kafka, serials)
    sim = Simulator(serials, Odds(duplicate=0.01, lower=0.001, malformed=0.001, error=0.01))
    t0 = time.perf_counter()
    await produce(kafka, telemetry, sim.stream(REPORTS), None)
    bench("meters_backlog_produce", REPORTS / (time.perf_counter() - t0), "reports/s")
    # The baseline runs under the garbage collector's settings that the worker gives its process
    # (it shares this one), without the simulator's fleet: before, it had Python's defaults and
    # the simulator's 100,000 devices to traverse (its Python 4.9-5.7 µs a report, now 3.5-4.1).
    del sim
    collect_garbage_less_often(IngestSettings().gc_young_threshold)
    freeze_what_is_loaded()
    await let_servers_settle()  # once the backlog is produced, before anything is measured

    mongo_settings = MongoSettings(url=mongo_url, database_prefix="bench" + secrets.token_hex(3))
    ingest = IngestSettings(data_dir=faust_dir)
    # The worker's table (its changelog) has as many partitions as the inputs it follows.
    worker_kafka = kafka.model_copy(update={"partitions": PARTITIONS})
    settings = MetersSettings(kafka=worker_kafka, mongo=mongo_settings, ingest=ingest)
    async with Mongo(mongo_settings, "meters") as mongo, Publisher(kafka, "meters") as publisher:
        # A quarter of the backlog first, untimed: the run's first requests (connections opened,
        # the database created) are not the baseline's. This alone did not remove the slowness of
        # new servers; the settling above does.
        await baseline(kafka, telemetry, mongo, "baseline_warm_up", REPORTS // 4)
        cpu = CpuMeter()
        before = cpu.snapshot()
        base = await baseline(kafka, telemetry, mongo)
        bench("meters_baseline_consume_insert_many", base, "reports/s")
        cpu.report("meters_baseline", before, cpu.snapshot(), REPORTS)

        started = time.perf_counter()
        async with ingestion(
            settings,
            mongo.db,
            publisher,
            app_id="meters.bench-" + secrets.token_hex(3),
            telemetry_topic=telemetry,
            commands_topic=commands,
        ) as ingestor:
            await ingestor.directory.caught_up.wait()
            ready_at = time.perf_counter()
            before = cpu.snapshot()
            bench("meters_directory_load", ready_at - started, "s")
            try:
                await eventually(
                    lambda: _done(ingestor), timeout=INGEST_SECONDS, interval=0.2, what="flushed"
                )
            except AssertionError:  # bounded: report what was done in the time allowed
                print(f"only {ingestor.flushed} of {REPORTS} in {INGEST_SECONDS}s", flush=True)
            after = cpu.snapshot()
            elapsed = time.perf_counter() - started
            rate = ingestor.flushed / elapsed
            after_directory = ingestor.flushed / (elapsed - (ready_at - started))
            bench("meters_ingest_end_to_end", rate, "reports/s")
            bench("meters_ingest_after_directory", after_directory, "reports/s")
            bench("meters_ingest_vs_baseline", rate / base, "ratio")
            cpu.report("meters_ingest", before, after, max(ingestor.flushed, 1))
            # The machine changes speed from minute to minute: the baseline again right after
            # the worker (idle now, its consumer polling), and the worker against the mean of
            # the two that bracket it.
            before_again = cpu.snapshot()
            again = await baseline(kafka, telemetry, mongo, "baseline_again")
            bench("meters_baseline_again_after_the_worker", again, "reports/s")
            cpu.report("meters_baseline_again", before_again, cpu.snapshot(), REPORTS)
            bracket = (base + again) / 2
            bench("meters_ingest_vs_bracketing_baselines", rate / bracket, "ratio")
            bench(
                "meters_ingest_after_directory_vs_bracketing_baselines",
                after_directory / bracket,
                "ratio",
            )
            bench("meters_ingest_waited_for_flusher", ingestor.stats.waited_for_flusher, "s")
            stats = ingestor.stats
            readings = await mongo.db[READINGS].count_documents({})
            bench("meters_readings_persisted", readings, "readings")
            # The phases below run on a database about as large as the worker's was: each
            # phase's collection is dropped once it is measured (PostgreSQL spent 24-25 µs a
            # reading in them with the baselines' 650,000 documents still there, 18 in the worker).
            for name in ("baseline_warm_up", "baseline", "baseline_again"):
                await mongo.db.drop_collection(name)
            await readings_stored_alone(mongo, cpu, after_directory)
            before_undecided = cpu.snapshot()
            undecided = await writes_without_decisions(kafka, telemetry, mongo, serials)
            bench("meters_writes_without_decisions", undecided, "reports/s")
            cpu.report("meters_writes_without_decisions", before_undecided, cpu.snapshot(), REPORTS)
            bench(
                "meters_writes_without_decisions_vs_bracketing_baselines",
                undecided / bracket,
                "ratio",
            )
            print(
                f"accepted={stats.accepted} duplicates={stats.duplicates} "
                f"anomalies={stats.anomalies} faults={stats.faults} "
                f"dead_lettered={stats.dead_lettered}",
                flush=True,
            )
            since_ms = int(time.time() * 1000)
            samples = await latency(kafka, telemetry, serials, rate / 2, since_ms)
            if samples:
                samples.sort()
                bench("meters_latency_p50_at_half_rate", statistics.median(samples) * 1000, "ms")
                bench(
                    "meters_latency_p99_at_half_rate",
                    samples[int(len(samples) * 0.99) - 1] * 1000,
                    "ms",
                )
                bench("meters_latency_samples", len(samples), "readings")
    if WORKERS >= 2:
        one = await workers_rate(kafka, mongo_url, (telemetry, commands), 1, readings)
        two = await workers_rate(kafka, mongo_url, (telemetry, commands), WORKERS, readings)
        if one:
            bench("meters_one_worker_process", one[0], "readings/s")
        if two:
            bench(f"meters_{WORKERS}_worker_processes", two[0], "readings/s")
        if one and two:
            bench(f"meters_{WORKERS}_workers_vs_one", two[0] / one[0], "ratio")
        # The same once the group is stable with every worker in it (after the joining).
        if one and one[1]:
            bench("meters_one_worker_process_stable_group", one[1], "readings/s")
        if two and two[1]:
            bench(f"meters_{WORKERS}_worker_processes_stable_group", two[1], "readings/s")
        if one and two and one[1] and two[1]:
            bench(f"meters_{WORKERS}_workers_vs_one_stable_group", two[1] / one[1], "ratio")


def main() -> int:
    return run_bench(run, LIMIT_SECONDS, prefix="fleetdesk-bench-meters-")


if __name__ == "__main__":
    sys.exit(main())
