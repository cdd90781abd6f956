"""An outage is not poison: a database that goes away pauses the partition, loses nothing.

The test runs its own FerretDB process (the session's server is shared by other tests), stops
it mid-stream for longer than the retry budget of unknown errors, and starts it again on the
same port and data.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from shared.bus import ConsumerRunner, Consumers, Message, Publisher, Subscription
from shared.config import KafkaSettings
from shared.store import insert_once
from tests.conftest import _local_infra_module
from tests.integration.conftest import Ping, committed, dead_letters, ping_topic, unique
from tests.support import create_topic, eventually

pytestmark = pytest.mark.integration


class PrivateFerretDB:
    """A FerretDB process of this test alone (SQLite backend), stopped and started at will."""

    def __init__(self, run_dir: Path) -> None:
        infra = _local_infra_module()
        try:
            self.binary = infra.fetch_ferretdb()
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"no FerretDB binary for a private server: {exc}")
        self.port: int = infra.free_port()
        self.run_dir = run_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self) -> None:
        data = self.run_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "ferretdb.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    "--handler=sqlite",
                    f"--sqlite-url=file:{data}/",
                    f"--state-dir={self.run_dir}",
                    f"--listen-addr=127.0.0.1:{self.port}",
                    "--debug-addr=-",
                    "--telemetry=disable",
                    "--log-level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def ferretdb(tmp_path: Path) -> Iterator[PrivateFerretDB]:
    server = PrivateFerretDB(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def pings(client: AsyncMongoClient[Any]) -> bool:
    try:
        await client.admin.command("ping")
        return True
    except PyMongoError:
        return False


def infra_failures(group: str, topic: str) -> float:
    labels = {"group": group, "topic": topic}
    value = REGISTRY.get_sample_value("fleetdesk_consumer_infrastructure_failures_total", labels)
    return value or 0.0


async def test_a_database_outage_longer_than_the_retry_budget_parks_nothing_and_loses_nothing(
    kafka_settings: KafkaSettings, publisher: Publisher, ferretdb: PrivateFerretDB
) -> None:
    bootstrap = kafka_settings.bootstrap_servers
    settings = kafka_settings.model_copy(update={"outage_backoff_max_ms": 300})
    stored = ping_topic(await create_topic(bootstrap, partitions=1))
    side = ping_topic(await create_topic(bootstrap, partitions=1))  # needs no database
    # A short server selection: each attempt during the outage fails within half a second.
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        ferretdb.url, serverSelectionTimeoutMS=500, connectTimeoutMS=500
    )
    work = client["outage_" + unique("db").replace("-", "_")]["work"]
    await eventually(lambda: pings(client), what="private FerretDB up")
    side_seen: list[int] = []

    async def store(msg: Message) -> None:
        await insert_once(work, {"_id": msg.event_id, "n": msg.parse(Ping).n})

    async def note(msg: Message) -> None:
        side_seen.append(msg.parse(Ping).n)

    group = unique("outage")
    runner = ConsumerRunner(
        settings, Subscription(group, {stored.name: store, side.name: note}), publisher
    )
    try:
        async with Consumers([runner]) as consumers:
            for n in range(20):
                await publisher.publish(stored, "k", Ping(n=n))

            async def first_twenty() -> bool:
                return await work.count_documents({}) == 20

            await eventually(first_twenty, timeout=30, what="the first 20 stored")
            assert consumers.healthy()

            ferretdb.stop()
            for n in range(20, 40):
                await publisher.publish(stored, "k", Ping(n=n))

            async def paused() -> bool:
                return bool(runner.outages) and not consumers.healthy()

            await eventually(paused, timeout=30, what="the partition paused, not ready")
            # Another partition, whose handler needs no database, goes on meanwhile.
            for n in range(3):
                await publisher.publish(side, "k", Ping(n=n))

            async def side_flows() -> bool:
                return side_seen == [0, 1, 2]

            await eventually(side_flows, timeout=30, what="the other partition flows")

            # Down for longer than the old budget (handler_attempts attempts, then parked).
            down_since = time.monotonic()

            async def outlasted_the_budget() -> bool:
                failures = infra_failures(group, stored.name)
                return failures > 2 * settings.handler_attempts and (
                    time.monotonic() - down_since > 3
                )

            await eventually(outlasted_the_budget, timeout=60, what="a long outage")
            assert not consumers.healthy()
            assert (
                REGISTRY.get_sample_value("fleetdesk_consumer_paused_partitions", {"group": group})
                == 1.0
            )
            assert await committed(bootstrap, group, TopicPartition(stored.name, 0)) == 20

            ferretdb.start()

            async def all_forty() -> bool:
                try:
                    return await work.count_documents({}) == 40
                except PyMongoError:
                    return False

            await eventually(all_forty, timeout=60, what="all 40 stored after the outage")

            async def all_committed() -> bool:
                return await committed(bootstrap, group, TopicPartition(stored.name, 0)) == 40

            await eventually(all_committed, timeout=30, what="every offset committed")

            async def ready_again() -> bool:
                return consumers.healthy()

            await eventually(ready_again, what="ready again by itself")
        assert sorted([d["n"] async for d in work.find({})]) == list(range(40))
    finally:
        await client.close()
    assert await dead_letters(bootstrap, stored.name) == []
