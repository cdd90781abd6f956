"""Batch handlers against a real broker: a partition's records per call, bad ones parked."""

from __future__ import annotations

import json

import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from shared.bus import Message, PermanentError, Publisher, Subscription
from shared.config import KafkaSettings
from tests.integration.conftest import (
    Ping,
    RunConsumer,
    committed,
    dead_letters,
    ping_topic,
    unique,
)
from tests.support import create_topic, eventually

pytestmark = pytest.mark.integration


def batch_sizes(group: str, topic: str) -> tuple[float, float]:
    labels = {"group": group, "topic": topic}
    count = REGISTRY.get_sample_value("fleetdesk_consumer_batch_size_count", labels) or 0.0
    total = REGISTRY.get_sample_value("fleetdesk_consumer_batch_size_sum", labels) or 0.0
    return count, total


async def test_a_batch_handler_gets_a_partitions_records_in_order_and_its_rejects_are_parked(
    kafka_settings: KafkaSettings, publisher: Publisher, run_consumer: RunConsumer
) -> None:
    bootstrap = kafka_settings.bootstrap_servers
    topic = ping_topic(await create_topic(bootstrap, partitions=1))
    # Published before the consumer starts, so that one fetch brings several records.
    for n in range(20):
        await publisher.publish(topic, "k", Ping(n=n))
    await publisher.send_raw(topic.name, "k", b"not json", [])
    await publisher.publish(topic, "k", Ping(n=20))
    batches: list[list[int]] = []
    handled: list[int] = []

    async def handle(messages: list[Message]) -> list[tuple[Message, Exception]]:
        batches.append([m.offset for m in messages])
        bad: list[tuple[Message, Exception]] = []
        for msg in messages:
            try:
                ping = msg.parse(Ping)
            except PermanentError as exc:
                bad.append((msg, exc))
                continue
            if ping.n == 7:
                bad.append((msg, ValueError("seven is refused")))
            else:
                handled.append(ping.n)
        return bad

    group = unique("batch")
    await run_consumer(Subscription(group, batch_handlers={topic.name: handle}))

    async def all_committed() -> bool:
        return await committed(bootstrap, group, TopicPartition(topic.name, 0)) == 22

    await eventually(all_committed, what="every offset committed")
    offsets = [o for b in batches for o in b]
    assert offsets == list(range(22)), "each record once, in offset order"
    assert any(len(b) > 1 for b in batches), f"records came in batches: {batches}"
    assert handled == [n for n in range(21) if n != 7]

    letters = sorted(await dead_letters(bootstrap, topic.name), key=lambda d: d["offset"])
    assert [(d["offset"], d["failure"], d["attempts"]) for d in letters] == [
        (7, "permanent", 1),
        (20, "permanent", 1),
    ]
    assert letters[0]["error"] == "ValueError: seven is refused"
    assert json.loads(letters[0]["value"]) == {"n": 7}
    assert letters[1]["error"].startswith("PermanentError: invalid Ping")
    assert letters[1]["value"] == "not json"
    count, total = batch_sizes(group, topic.name)
    assert count == len(batches) and total == 22


async def test_a_batch_that_raises_a_permanent_error_is_split_to_find_the_poison_message(
    kafka_settings: KafkaSettings, publisher: Publisher, run_consumer: RunConsumer
) -> None:
    bootstrap = kafka_settings.bootstrap_servers
    topic = ping_topic(await create_topic(bootstrap, partitions=1))
    for n in range(10):
        await publisher.publish(topic, "k", Ping(n=n))
    calls: list[list[int]] = []
    done: set[int] = set()

    async def handle(messages: list[Message]) -> list[tuple[Message, Exception]]:
        pings = [m.parse(Ping).n for m in messages]
        calls.append(pings)
        if 4 in pings:
            raise PermanentError("four poisons the whole batch")
        done.update(pings)  # idempotent work
        return []

    group = unique("split")
    await run_consumer(Subscription(group, batch_handlers={topic.name: handle}))

    async def all_committed() -> bool:
        return await committed(bootstrap, group, TopicPartition(topic.name, 0)) == 10

    await eventually(all_committed, what="every offset committed")
    assert done == set(range(10)) - {4}
    # The failing batch was followed by single calls, one per message of it.
    failing = next(i for i, c in enumerate(calls) if 4 in c and len(c) > 1)
    singles = calls[failing + 1 : failing + 1 + len(calls[failing])]
    assert singles == [[n] for n in calls[failing]]
    (letter,) = await dead_letters(bootstrap, topic.name)
    assert letter["offset"] == 4
    assert letter["error"] == "PermanentError: four poisons the whole batch"
    assert letter["attempts"] == 1


async def test_a_batch_that_raises_an_infrastructure_error_is_retried_whole_never_parked(
    kafka_settings: KafkaSettings, publisher: Publisher, run_consumer: RunConsumer
) -> None:
    bootstrap = kafka_settings.bootstrap_servers
    topic = ping_topic(await create_topic(bootstrap, partitions=1))
    for n in range(5):
        await publisher.publish(topic, "k", Ping(n=n))
    failures = 6  # more than handler_attempts: the old budget would have parked them
    calls: list[list[int]] = []

    async def handle(messages: list[Message]) -> list[tuple[Message, Exception]]:
        calls.append([m.parse(Ping).n for m in messages])
        if len(calls) <= failures:
            raise ConnectionError("database unreachable")
        return []

    group = unique("outage-batch")
    await run_consumer(Subscription(group, batch_handlers={topic.name: handle}))

    async def all_committed() -> bool:
        return await committed(bootstrap, group, TopicPartition(topic.name, 0)) == 5

    await eventually(all_committed, what="every offset committed")
    assert failures > kafka_settings.handler_attempts
    assert all(c[0] == 0 for c in calls), "every retry starts again at the first record"
    assert sorted({n for c in calls for n in c}) == list(range(5))
    assert await dead_letters(bootstrap, topic.name) == []


def test_a_topic_has_a_handler_or_a_batch_handler_not_both() -> None:
    async def one(msg: Message) -> None:
        return None

    async def many(messages: list[Message]) -> list[tuple[Message, Exception]]:
        return []

    with pytest.raises(ValueError, match="both"):
        Subscription("g", handlers={"t": one}, batch_handlers={"t": many})
    assert Subscription("g", {"a": one}, batch_handlers={"b": many}).topics == ["a", "b"]
