"""Benchmark: eMaintenance telemetry through the devices service's batch handler, against a
baseline measured in the same run (plain consumption of the same topic + ``insert_many`` of
the raw reports, one bulk write per partition batch).

    make bench                                   # starts local Kafka + FerretDB unless given
    BENCH_DEVICES=100000 BENCH_REPORTS=200000 python tests/perf/bench_devices.py

A backlog of ``BENCH_REPORTS`` realistic reports over ``BENCH_DEVICES`` devices is produced
once (every device reports in turn, round after round; four toner levels fall slowly, so most
reports repeat the last level), then, once the servers have settled (``BENCH_SETTLE_SECONDS`` of
quiet, 75 by default), read by three consumer groups: the baseline, the devices service's
handler under the platform's consumer runner (the device directory is filled in memory
beforehand, as the service fills it from its database at start), and the baseline again (the
handler against the mean of the two: ``devices_telemetry_vs_bracketing_baselines``). Prints
``BENCH`` lines. Bounded: a fixed backlog and ``BENCH_LIMIT_SECONDS`` (default 1200) for the
whole run.

Uses ``FLEETDESK_TEST_KAFKA_BOOTSTRAP`` and ``FLEETDESK_TEST_MONGO_URL`` when both are set
(security from ``FLEETDESK_KAFKA_*``), else starts ``deploy/local/infra.py`` on free ports for
the run (SASL, as the super user) and stops it afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.devices.adapters.directory import Directory  # noqa: E402
from services.devices.adapters.store import (  # noqa: E402  # noqa: E402
    INDEXES,
    SUPPLY_LEVELS,
    MongoLevels,
    MongoStock,
    MongoSupplyOrders,
)
from services.devices.adapters.telemetry import TelemetryHandler  # noqa: E402
from services.devices.core.replenishment import Policy  # noqa: E402
from services.devices.core.telemetry import LevelsProjection, TelemetryDeps  # noqa: E402
from shared.bus import ConsumerRunner, Message, Publisher, Subscription, ensure_topics  # noqa: E402
from shared.config import KafkaSettings, MongoSettings  # noqa: E402
from shared.store import Mongo  # noqa: E402
from tests.perf.servers import bench_line, let_servers_settle, run_bench  # noqa: E402

DEVICES = int(os.environ.get("BENCH_DEVICES", "100000"))
REPORTS = int(os.environ.get("BENCH_REPORTS", "200000"))
LIMIT_SECONDS = float(os.environ.get("BENCH_LIMIT_SECONDS", "1200"))
PARTITIONS = 3
TONERS = ("black", "cyan", "magenta", "yellow")
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def serial(n: int) -> str:
    return f"BENCH-{n:07d}"


def backlog() -> list[tuple[bytes, bytes]]:
    """Every device in turn, round after round, a report every 15 minutes of device time;
    each toner falls one point with probability 0.1 per report (slowly, as toner does)."""
    rnd = random.Random(7)
    levels = [[rnd.randint(30, 100) for _ in TONERS] for _ in range(DEVICES)]
    records = []
    for i in range(REPORTS):
        n, rnd_no = i % DEVICES, i // DEVICES
        for k in range(len(TONERS)):
            if rnd.random() < 0.1:
                levels[n][k] = max(0, levels[n][k] - 1)
        sent = T0 + timedelta(minutes=15 * rnd_no, seconds=n % 900)
        body = {
            "serial": serial(n),
            "sent_at": sent.isoformat(),
            "counters": {"total": 10_000 + 37 * rnd_no + n % 100, "colour": 4_000 + 9 * rnd_no},
            "supplies": dict(zip(TONERS, levels[n], strict=True)),
            "errors": [],
        }
        records.append((serial(n).encode(), json.dumps(body).encode()))
    return records


async def produce(settings: KafkaSettings, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(
        **settings.client_options(), linger_ms=20, max_batch_size=256 * 1024, acks="all"
    )
    await producer.start()
    started = time.perf_counter()
    try:
        for start in range(0, len(records), 5000):
            futures = [
                await producer.send(topic, value, key=key)
                for key, value in records[start : start + 5000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def baseline(settings: KafkaSettings, topic: str, mongo: Mongo) -> float:
    """Plain consumption + insert_many of the raw reports per partition batch + commit."""
    collection = mongo.db[f"raw_{uuid.uuid4().hex[:6]}"]
    consumer = AIOKafkaConsumer(
        topic,
        **settings.client_options(),
        group_id=f"bench-baseline-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    try:
        while seen < REPORTS:
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            for tp, records in batch.items():
                await collection.insert_many([json.loads(r.value) for r in records])
                await consumer.commit({tp: records[-1].offset + 1})
                seen += len(records)
    finally:
        await consumer.stop()
    return time.perf_counter() - started


async def ours(settings: KafkaSettings, topic: str, mongo: Mongo, publisher: Publisher) -> float:
    directory = Directory()
    for n in range(DEVICES):
        directory.apply(
            device_id=f"dev-{n:07d}",
            org_id=f"org-{n % 500}",
            serial=serial(n),
            auto_replenishment=True,
            removed=False,
            revision=1,
        )
    directory.mark_ready()
    levels = MongoLevels(mongo.db)
    handler = TelemetryHandler(
        TelemetryDeps(
            directory=directory,
            levels=LevelsProjection(levels),
            store=levels,
            orders=MongoSupplyOrders(mongo.db, lambda: None),
            stock=MongoStock(mongo.db),
            policy=Policy(),
        )
    )
    seen = 0
    done = asyncio.Event()

    async def counted(messages: list[Message]) -> list[tuple[Message, Exception]]:
        nonlocal seen
        bad = await handler(messages)
        seen += len(messages)
        if seen >= REPORTS:
            done.set()
        return bad

    runner = ConsumerRunner(
        settings,
        Subscription(
            group=f"bench-devices-{uuid.uuid4().hex[:6]}", batch_handlers={topic: counted}
        ),
        publisher,
    )
    task = asyncio.create_task(runner.run())
    await runner.started.wait()
    started = time.perf_counter()
    await done.wait()
    elapsed = time.perf_counter() - started
    runner.stop()
    await task
    return elapsed


async def bench(settings: KafkaSettings, mongo_url: str) -> None:
    await ensure_topics(settings)
    topic = f"bench.telemetry.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**settings.client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    records = backlog()
    produced = await produce(settings, topic, records)
    del records
    print(f"backlog: {REPORTS} reports over {DEVICES} devices, produced in {produced:.1f}s")
    mongo_settings = MongoSettings(url=mongo_url, database_prefix="bench" + uuid.uuid4().hex[:6])
    async with Mongo(mongo_settings, "devices") as mongo, Publisher(settings, "devices") as pub:
        await mongo.ensure_indexes(INDEXES)
        await let_servers_settle()
        base = await baseline(settings, topic, mongo)
        bench_line("devices_telemetry_baseline_insert_many", REPORTS / base, "reports/s")
        mine = await ours(settings, topic, mongo, pub)
        stored = await mongo.db[SUPPLY_LEVELS].count_documents({})
        bench_line("devices_telemetry_batch_handler", REPORTS / mine, "reports/s")
        bench_line("devices_telemetry_vs_baseline", base / mine, "ratio")
        bench_line("devices_telemetry_level_documents_written", stored, "documents")
        # The machine's speed drifts from minute to minute: the baseline again right after the
        # handler, and the handler against the mean rate of the two that bracket it.
        again = await baseline(settings, topic, mongo)
        bench_line(
            "devices_telemetry_baseline_again_after_the_handler", REPORTS / again, "reports/s"
        )
        bracket = (REPORTS / base + REPORTS / again) / 2
        bench_line("devices_telemetry_vs_bracketing_baselines", REPORTS / mine / bracket, "ratio")


def main() -> int:
    return run_bench(bench, LIMIT_SECONDS, prefix="fleetdesk-bench-")


if __name__ == "__main__":
    sys.exit(main())
