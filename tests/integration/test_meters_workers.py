"""Meters ingestion workers as real processes: a SIGKILL in the middle of a stream, and a
second worker joining and leaving mid-stream. Every report is accepted exactly once.

The streams: ``METERS_TEST_KILL_REPORTS`` reports for the crash (default 100,000, about three
minutes here) and ``METERS_TEST_SCALE_REPORTS`` for the scale-out (default 2,000) over 1,000
devices, each report of a device higher than the one before, so every report must end up as
exactly one reading: none lost, none doubled, none refused as an anomaly.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.meters.adapters.store import READINGS
from services.meters.simulator import Odds, Simulator, produce
from shared.bus import Publisher, ensure_topics
from shared.config import KafkaSettings, MongoSettings
from shared.contracts import DEVICES, ORGANISATIONS, DeviceState, OrganisationState
from shared.store import Mongo
from tests.conftest import Infra
from tests.integration import meters_worker
from tests.support import create_topic, eventually

# Bounded, but longer than the default: two workers start, one waits out a dead member.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
KILL_REPORTS = int(os.environ.get("METERS_TEST_KILL_REPORTS", "100000"))
SCALE_REPORTS = int(os.environ.get("METERS_TEST_SCALE_REPORTS", "2000"))
DEVICES_N = 1000


@dataclass
class Stream:
    kafka: KafkaSettings
    mongo_settings: MongoSettings
    env: dict[str, str]
    serials: list[str]
    logs: Path

    def spawn(self, name: str) -> subprocess.Popen[bytes]:
        return meters_worker.spawn(self.env, self.logs / f"{name}.log")


@pytest.fixture
async def stream(infra: Infra, tmp_path: Path) -> AsyncIterator[Stream]:
    kafka = infra.kafka_admin
    await ensure_topics(kafka)
    telemetry = await create_topic(kafka, partitions=3)
    commands = await create_topic(kafka, partitions=3)
    mongo_settings = MongoSettings(url=infra.mongo_url, database_prefix="w" + secrets.token_hex(4))
    serials = [f"W{secrets.token_hex(3)}-{i}" for i in range(DEVICES_N)]
    async with Publisher(kafka, "meters") as publisher:
        org_id = "org-" + secrets.token_hex(4)
        await publisher.publish(
            ORGANISATIONS,
            org_id,
            OrganisationState(
                org_id=org_id,
                customer_number="C" + secrets.token_hex(4),
                system_id="S" + secrets.token_hex(4),
                name="Workers Oy",
                country="FI",
                timezone="Europe/Helsinki",
                language="fi",
                revision=1,
            ),
        )
        sends = []
        for i, serial in enumerate(serials):
            state = DeviceState(
                device_id=f"{org_id}-{i}", org_id=org_id, serial=serial, model="m", revision=1
            )
            sends.append(
                await publisher.producer.send(
                    DEVICES.name,
                    state.model_dump_json().encode(),
                    key=state.device_id.encode(),
                    headers=publisher.envelope(state).to_headers(),
                )
            )
        await asyncio.gather(*sends)
    env = {
        **os.environ,
        "FLEETDESK_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "FLEETDESK_MONGO_URL": infra.mongo_url,
        "FLEETDESK_MONGO_DATABASE_PREFIX": mongo_settings.database_prefix,
        "FLEETDESK_METERS_STALE_CHECK_INTERVAL_SECONDS": "3600",
        "FLEETDESK_METERS_DATA_DIR": str(tmp_path),
        "METERS_TEST_APP_ID": "meters.w" + secrets.token_hex(4),
        "METERS_TEST_TELEMETRY": telemetry,
        "METERS_TEST_COMMANDS": commands,
    }
    yield Stream(kafka, mongo_settings, env, serials, tmp_path)


def reports(s: Stream, count: int) -> Iterator[tuple[str, bytes]]:
    return Simulator(s.serials, Odds(duplicate=0, lower=0, malformed=0, error=0)).stream(count)


async def count(s: Stream) -> int:
    async with Mongo(s.mongo_settings, "meters") as mongo:
        return await mongo.db[READINGS].count_documents({})


async def at_least(s: Stream, n: int) -> int:
    found = await count(s)
    return found if found >= n else 0


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.timeout(900)  # 100,000 reports: about three minutes on a quiet machine
async def test_a_worker_killed_mid_stream_loses_and_doubles_nothing(stream: Stream) -> None:
    total = KILL_REPORTS
    first = stream.spawn("first")
    second = None
    try:
        # Spread over 20 s, and the kill lands a few seconds after the worker began: while
        # reports are still coming. (Not at a count: FerretDB counts by reading the collection,
        # which took 8-11 s at 40,000-80,000 readings beside the worker, and a count started at
        # a quarter of the stream once came back after all of it was decided.)
        producing = asyncio.create_task(
            produce(
                stream.kafka,
                stream.env["METERS_TEST_TELEMETRY"],
                reports(stream, total),
                total / 20,
            )
        )
        await eventually(lambda: at_least(stream, 1000), timeout=300, interval=0.2)
        await asyncio.sleep(3)
        stop(first, signal.SIGKILL)  # a crash: nothing flushed or committed on the way out
        killed_at = await count(stream)
        assert 1000 <= killed_at < total
        await producing
        second = stream.spawn("second")
        await eventually(lambda: at_least(stream, total), timeout=600, interval=1.0)
        await asyncio.sleep(0)
        assert await count(stream) == total
    finally:
        stop(first, signal.SIGKILL)
        if second is not None:
            stop(second)
    # Anything more than the stream would be a double; a refused replay would leave fewer.
    assert await count(stream) == total


async def test_a_second_worker_joins_and_leaves_mid_stream(stream: Stream) -> None:
    total = SCALE_REPORTS
    first = stream.spawn("first")
    second = None
    try:
        # Spread over at least 20 s: the second worker joins while reports are still coming.
        producing = asyncio.create_task(
            produce(
                stream.kafka,
                stream.env["METERS_TEST_TELEMETRY"],
                reports(stream, total),
                total / 20,
            )
        )
        await eventually(lambda: at_least(stream, total // 5), timeout=300, interval=0.5)
        second = stream.spawn("second")

        async def second_started() -> bool:
            return "worker started" in (stream.logs / "second.log").read_text()

        # The second worker must really join (take partitions) before the stream is half done.
        await eventually(second_started, timeout=180, interval=0.5)
        await eventually(lambda: at_least(stream, total // 2), timeout=300, interval=0.5)
        stop(second)  # leaves gracefully; its partitions go back to the first
        await producing
        await eventually(lambda: at_least(stream, total), timeout=600, interval=1.0)
    finally:
        stop(first)
        if second is not None:
            stop(second)
    assert await count(stream) == total
    logs = (stream.logs / "second.log").read_text()
    assert "worker started" in logs
