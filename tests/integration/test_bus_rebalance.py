"""A rebalance while a consumer still holds fetched records: nothing handled twice, no crash."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest
from aiokafka import TopicPartition

from shared.bus import Handler, Message, Publisher, Subscription
from shared.config import KafkaSettings
from tests.integration.conftest import Ping, RunConsumer, committed, ping_topic, unique
from tests.support import create_topic, eventually

pytestmark = pytest.mark.integration


async def test_records_of_a_revoked_partition_are_neither_handled_nor_committed_by_the_old_owner(
    kafka_settings: KafkaSettings, publisher: Publisher, run_consumer: RunConsumer
) -> None:
    """60 messages, a 100 ms handler, a second consumer joining while the first holds them."""
    bootstrap = kafka_settings.bootstrap_servers
    topic = ping_topic(await create_topic(bootstrap, partitions=3))
    for n in range(60):
        await publisher.publish(topic, f"key-{n % 9}", Ping(n=n))
    handled: list[tuple[str, int]] = []
    b_assigned = asyncio.Event()

    def slow(name: str) -> Handler:
        async def handle(msg: Message) -> None:
            handled.append((name, msg.parse(Ping).n))
            if b_assigned.is_set():
                await asyncio.sleep(0.1)
                return
            # Until the rebalance has given the second consumer partitions, the first one works
            # at up to 1 s a record, so that its records outlast a slow rebalance on a loaded
            # machine (at 0.1 s it once handled all 60 first). No longer: a revoke waits for it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(b_assigned.wait(), 1.0)

        return handle

    async def on_b_assigned(partitions: list[TopicPartition]) -> None:
        if partitions:
            b_assigned.set()

    group = unique("slow")
    first = await run_consumer(group, {topic.name: slow("a")})

    async def a_is_busy() -> bool:
        return len(handled) >= 5

    await eventually(a_is_busy, what="the first consumer is handling its fetched records")
    second = await run_consumer(
        Subscription(group, {topic.name: slow("b")}, on_assigned=on_b_assigned)
    )

    async def all_handled() -> bool:
        return len({n for _, n in handled}) == 60

    await eventually(all_handled, timeout=60, what="all 60 handled")

    async def all_committed() -> bool:
        offsets = [
            await committed(bootstrap, group, TopicPartition(topic.name, p)) for p in range(3)
        ]
        return sum(o or 0 for o in offsets) == 60

    await eventually(all_committed, timeout=30, what="every offset committed")
    twice = {n: c for n, c in Counter(n for _, n in handled).items() if c > 1}
    assert twice == {}, f"handled twice: {twice}"
    assert {name for name, _ in handled} == {"a", "b"}, "the second consumer took partitions"
    assert not first.task.done() and not second.task.done(), "no consumer crashed"
