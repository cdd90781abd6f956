"""The bus's promises against a real Kafka broker and a real MongoDB-wire server.

Retried until success, dead-lettered with the reason, no duplicate after a crash before the
commit, and no lost event after a crash between a write and its publish (the outbox).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import TopicPartition

from shared.bus import Message, Publisher
from shared.config import KafkaSettings
from shared.contracts import DEVICES, DeviceState
from shared.events import HEADER_EVENT_ID
from shared.store import OUTBOX, Mongo, OutboxRelay, insert_once, new_with_outbox, with_outbox
from tests.integration.conftest import (
    STOP_TIMEOUT,
    Ping,
    committed,
    dead_letters,
    outbox_emptied,
    ping_topic,
    ready,
    unique,
)
from tests.support import create_topic, eventually, header, read_topic

pytestmark = pytest.mark.integration


async def test_a_transient_failure_is_retried_until_the_work_is_done_once(
    kafka_settings: KafkaSettings, publisher: Publisher, mongo: Mongo, run_consumer: Any
) -> None:
    bootstrap = kafka_settings.bootstrap_servers
    topic = ping_topic(await create_topic(bootstrap))
    work = mongo.db["work"]
    calls: dict[str, int] = {}
    inserted: list[bool] = []

    async def handler(msg: Message) -> None:
        calls[msg.event_id] = calls.get(msg.event_id, 0) + 1
        ping = msg.parse(Ping)
        # The work is written on every attempt; only the first write counts.
        inserted.append(await insert_once(work, {"_id": msg.event_id, "n": ping.n}))
        if calls[msg.event_id] <= 2:
            raise ConnectionError("downstream not reachable yet")

    group = unique("retry")
    await run_consumer(group, {topic.name: handler})
    envelope = await publisher.publish(topic, "1", Ping(n=1))

    async def committed_past_it() -> bool:
        return await committed(bootstrap, group, TopicPartition(topic.name, 0)) == 1

    await eventually(committed_past_it, what="offset 1 committed")
    assert calls == {envelope.event_id: 3}
    assert inserted == [True, False, False]
    assert await work.count_documents({}) == 1
    assert await work.find_one({"_id": envelope.event_id}) == {"_id": envelope.event_id, "n": 1}
    letters = await dead_letters(bootstrap, topic.name)
    assert [d for d in letters if d["event_id"] == envelope.event_id] == []


async def test_a_message_that_keeps_failing_is_dead_lettered_and_the_partition_moves_on(
    kafka_settings: KafkaSettings, publisher: Publisher, run_consumer: Any
) -> None:
    bootstrap = kafka_settings.bootstrap_servers
    topic = ping_topic(await create_topic(bootstrap, partitions=1))
    calls: dict[int, int] = {}
    handled: list[int] = []

    async def handler(msg: Message) -> None:
        ping = msg.parse(Ping)
        calls[ping.n] = calls.get(ping.n, 0) + 1
        if ping.n == 13:
            raise RuntimeError("poison pill 13 cannot be handled")
        handled.append(ping.n)

    group = unique("dlq")
    await run_consumer(group, {topic.name: handler})
    poison = await publisher.publish(topic, "13", Ping(n=13))
    good = await publisher.publish(topic, "2", Ping(n=2))
    await publisher.send_raw(topic.name, "3", b"not json", [])
    after = await publisher.publish(topic, "4", Ping(n=4))

    async def all_handled() -> bool:
        return handled == [2, 4]

    await eventually(all_handled, what="good messages handled")

    async def two_letters() -> list[dict[str, Any]]:
        letters = await dead_letters(bootstrap, topic.name)
        return letters if len(letters) >= 2 else []

    letters = sorted(await eventually(two_letters), key=lambda d: d["offset"])
    assert len(letters) == 2
    poisoned, malformed = letters
    assert poisoned["original_topic"] == topic.name
    assert poisoned["partition"] == 0
    assert poisoned["offset"] == 0
    assert poisoned["key"] == "13"
    assert poisoned["event_id"] == poison.event_id
    assert poisoned["consumer_group"] == group
    assert "RuntimeError" in poisoned["error"]
    assert "poison pill 13 cannot be handled" in poisoned["error"]
    assert poisoned["attempts"] == kafka_settings.handler_attempts == 3
    assert json.loads(poisoned["value"]) == {"n": 13}
    assert calls[13] == 3

    # A malformed value can never succeed: dead-lettered at the first attempt.
    assert malformed["offset"] == 2
    assert malformed["event_id"] == f"{topic.name}:0:2"  # no envelope: derived from position
    assert malformed["attempts"] == 1
    assert malformed["error"].startswith("PermanentError: invalid Ping")
    assert malformed["value"] == "not json"
    assert malformed["consumer_group"] == group

    assert good.event_id not in {d["event_id"] for d in letters}
    assert after.event_id not in {d["event_id"] for d in letters}

    async def all_committed() -> bool:
        return await committed(bootstrap, group, TopicPartition(topic.name, 0)) == 4

    await eventually(all_committed, what="every offset committed")


async def test_a_consumer_killed_before_its_commit_redelivers_without_a_duplicate(
    kafka_settings: KafkaSettings, publisher: Publisher, mongo: Mongo, run_consumer: Any
) -> None:
    bootstrap = kafka_settings.bootstrap_servers
    topic = ping_topic(await create_topic(bootstrap, partitions=1))
    received = mongo.db["received"]
    seen: list[tuple[str, str]] = []
    written = asyncio.Event()

    def handler_of(
        consumer: str, *, hang_after_write: bool
    ) -> Callable[[Message], Awaitable[None]]:
        async def handler(msg: Message) -> None:
            seen.append((consumer, msg.event_id))
            await insert_once(received, {"_id": msg.event_id, "n": msg.parse(Ping).n})
            if hang_after_write and not written.is_set():
                written.set()
                await asyncio.Event().wait()  # the process dies here, before the commit

        return handler

    group = unique("crash")
    first = await run_consumer(group, {topic.name: handler_of("first", hang_after_write=True)})
    envelope = await publisher.publish(topic, "1", Ping(n=1))
    await asyncio.wait_for(written.wait(), 15)

    # Kill the consumer between the write and the commit.
    first.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first.task, STOP_TIMEOUT)
    assert seen == [("first", envelope.event_id)]
    tp = TopicPartition(topic.name, 0)
    assert await committed(bootstrap, group, tp) is None

    await run_consumer(group, {topic.name: handler_of("second", hang_after_write=False)})

    async def redelivered() -> bool:
        return len(seen) >= 2

    await eventually(redelivered, timeout=30, what="redelivery to the second consumer")

    async def committed_past_it() -> bool:
        return await committed(bootstrap, group, tp) == 1

    await eventually(committed_past_it, what="offset 1 committed")
    assert seen == [("first", envelope.event_id), ("second", envelope.event_id)]
    assert await received.count_documents({}) == 1
    assert await received.find_one({"_id": envelope.event_id}) == {"_id": envelope.event_id, "n": 1}


async def test_a_crash_between_write_and_publish_is_repaired_by_the_outbox_relay(
    kafka_settings: KafkaSettings, publisher: Publisher, mongo: Mongo
) -> None:
    bootstrap = kafka_settings.bootstrap_servers
    # The relay publishes to catalogue topics only; a unique device id isolates the test.
    device_id = unique("dev")
    event = DeviceState(
        device_id=device_id, org_id=unique("org"), serial="SN-1", model="M1", revision=1
    )
    devices = mongo.db["devices"]
    # The write; no relay runs: the process "crashed" before publishing.
    doc = new_with_outbox({"_id": device_id, "revision": 1}, (DEVICES, device_id, event))
    await devices.insert_one(doc)
    stored = await devices.find_one({"_id": device_id})
    assert stored is not None
    (event_id,) = stored[OUTBOX].keys()
    assert stored[OUTBOX][event_id]["topic"] == DEVICES.name
    assert stored[OUTBOX][event_id]["event_type"] == DeviceState.event_type

    relay = OutboxRelay(mongo.db, ("devices",), publisher, poll_seconds=0.1)
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: outbox_emptied(devices, device_id), what="outbox emptied")
    finally:
        relay.stop()
        await asyncio.wait_for(task, STOP_TIMEOUT)

    async def published() -> list[Any]:
        records = await read_topic(bootstrap, DEVICES.name)
        return [r for r in records if r.key == device_id.encode()]

    mine = await eventually(published, what="the event on the topic")
    assert len(mine) == 1
    assert header(mine[0], HEADER_EVENT_ID) == event_id
    assert DeviceState.model_validate_json(mine[0].value) == event
    assert await devices.find_one({"_id": device_id}) == {
        "_id": device_id,
        "revision": 1,
        OUTBOX: {},
    }

    # Nothing pending: another round publishes nothing, and nothing more arrives.
    assert await relay.publish_pending() == 0
    assert len(await published()) == 1


async def test_writes_racing_the_relay_on_one_document_lose_no_event(
    kafka_settings: KafkaSettings, publisher: Publisher, mongo: Mongo
) -> None:
    """Rapid updates of one document while the relay empties its outbox: every event arrives.

    Each update of the document must be atomic (the relay's ``$unset`` of one entry must not
    overwrite a writer's ``$set`` of the next); no lock in the process helps it.
    """
    device_id = unique("dev")
    devices = mongo.db["devices"]
    await devices.insert_one({"_id": device_id, "revision": 0, OUTBOX: {}})
    relay = OutboxRelay(mongo.db, ("devices",), publisher, poll_seconds=0.01)
    task = asyncio.create_task(relay.run())
    revisions = range(1, 31)
    try:
        for revision in revisions:
            event = DeviceState(
                device_id=device_id, org_id="org", serial="SN-1", model="M1", revision=revision
            )
            await devices.update_one(
                {"_id": device_id},
                with_outbox({"$set": {"revision": revision}}, (DEVICES, device_id, event)),
            )
            relay.nudge()
            await asyncio.sleep(0)  # let the relay interleave with the next write

        await eventually(lambda: outbox_emptied(devices, device_id), what="outbox emptied")
    finally:
        relay.stop()
        await asyncio.wait_for(task, STOP_TIMEOUT)

    async def all_published() -> list[int] | None:
        records = await read_topic(kafka_settings.bootstrap_servers, DEVICES.name)
        seen = [
            DeviceState.model_validate_json(r.value).revision
            for r in records
            if r.key == device_id.encode()
        ]
        return seen if len(seen) >= len(revisions) else None

    # In order (one key, one partition), each revision exactly once.
    assert await eventually(all_published) == list(revisions)


async def test_a_graceful_stop_commits_what_was_handled_and_a_restart_goes_on_from_there(
    kafka_settings: KafkaSettings, publisher: Publisher, run_consumer: Any
) -> None:
    bootstrap = kafka_settings.bootstrap_servers
    topic = ping_topic(await create_topic(bootstrap))
    seen: list[int] = []

    async def handler(msg: Message) -> None:
        seen.append(msg.parse(Ping).n)

    group = unique("graceful")
    first = await run_consumer(group, {topic.name: handler})
    for n in range(5):
        await publisher.publish(topic, "k", Ping(n=n))
    await eventually(lambda: ready(len(seen) == 5), what="five handled")
    await first.stop()
    assert await committed(bootstrap, group, TopicPartition(topic.name, 0)) == 5

    for n in range(5, 8):
        await publisher.publish(topic, "k", Ping(n=n))
    await run_consumer(group, {topic.name: handler})
    await eventually(lambda: ready(len(seen) == 8), what="three more handled")
    assert seen == list(range(8))  # nothing twice, nothing skipped, in order


async def test_two_consumers_of_one_group_share_the_partitions_and_handle_each_once(
    kafka_settings: KafkaSettings, publisher: Publisher, run_consumer: Any
) -> None:
    """A second consumer joins mid-stream (a rebalance): every message is handled, and with
    commits made before partitions move, none is handled twice."""
    bootstrap = kafka_settings.bootstrap_servers
    topic = ping_topic(await create_topic(bootstrap, partitions=3))
    handled: dict[str, list[int]] = {"a": [], "b": []}

    def handler(name: str) -> Callable[[Message], Awaitable[None]]:
        async def handle(msg: Message) -> None:
            handled[name].append(msg.parse(Ping).n)

        return handle

    group = unique("shared")
    await run_consumer(group, {topic.name: handler("a")})
    for n in range(30):
        await publisher.publish(topic, f"key-{n % 9}", Ping(n=n))
    await eventually(lambda: ready(len(handled["a"]) == 30), what="a handled the first 30")
    await run_consumer(group, {topic.name: handler("b")})
    for n in range(30, 90):
        await publisher.publish(topic, f"key-{n % 9}", Ping(n=n))

    async def all_handled() -> bool:
        return len(handled["a"]) + len(handled["b"]) >= 90

    await eventually(all_handled, timeout=30, what="all 90 handled")
    everything = sorted(handled["a"] + handled["b"])
    assert everything == list(range(90))
    assert handled["b"], "the second consumer got partitions"
