"""Replenishment driven through Kafka into FerretDB/MongoDB: realistic telemetry sequences.

The devices service's telemetry handler runs under the platform's consumer runner against a
real broker and a real MongoDB-wire server. A restart in the middle (memory gone, group
offsets kept) and a full re-delivery (a new group reading everything again) change nothing:
exactly one order per need, one closed need per replaced cartridge, one unit taken from stock.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.devices.adapters.directory import Directory
from services.devices.adapters.store import (
    INDEXES,
    STOCK_USAGE,
    SUPPLY_LEVELS,
    SUPPLY_ORDERS,
    SUPPLY_ORDERS_CLOSED,
    MongoDevices,
)
from services.devices.core.model import Device, HistoryEntry, StockLevels
from services.devices.inject import Wiring, telemetry_handler
from shared.bus import ConsumerRunner, Publisher, Subscription, ensure_topics
from shared.config import KafkaSettings, MongoSettings
from shared.contracts import DEAD_LETTER, DEVICE_EVENTS
from shared.store import Mongo, OutboxRelay
from tests.support import (
    client_options,
    create_topic,
    eventually,
    header,
    read_topic,
    topic_partitions,
)

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC) - timedelta(days=40)
SETTINGS_ENV = {"FLEETDESK_DEVICES_LEAD_TIME_DAYS": "0"}  # threshold only: exact expectations


def telemetry(serial: str, hours: float, **supplies: int) -> tuple[str, bytes]:
    body = {
        "serial": serial,
        "sent_at": (T0 + timedelta(hours=hours)).isoformat(),
        "counters": {"total": 1000 + int(hours)},
        "supplies": supplies,
        "errors": [],
    }
    return serial, json.dumps(body).encode()


def scenario(tag: str) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(first half, second half) of the reports of five devices."""
    steady = [telemetry(f"{tag}-steady", h * 6, black=max(1, 40 - h), cyan=80) for h in range(45)]
    dup = [telemetry(f"{tag}-dup", h * 6, black=max(1, 30 - h)) for h in range(35)]
    dup = [r for r in dup for _ in (0, 1)]  # every report twice
    blip = [telemetry(f"{tag}-blip", h, black=level) for h, level in enumerate([12, 11, 9, 9])]
    blip += [telemetry(f"{tag}-blip", 4 + h * 0.5, black=100) for h in range(2)]  # shaken
    blip += [telemetry(f"{tag}-blip", 6 + h, black=8 - h) for h in range(5)]
    swap = [telemetry(f"{tag}-swap", h, black=level) for h, level in enumerate([12, 11, 10, 10])]
    swap += [telemetry(f"{tag}-swap", 10 + h, black=100) for h in range(4)]  # stays: new one
    swap += [telemetry(f"{tag}-swap", 20 + h * 24, black=99 - 10 * h) for h in range(10)]
    gone = [telemetry(f"{tag}-gone", h, black=5) for h in range(3)]
    first = steady[:20] + dup[:30] + blip[:5] + swap[:6] + gone
    second = steady[20:] + dup[30:] + dup[:10] + blip[5:] + swap[6:]
    return first, second


async def produce(bootstrap: str, topic: str, records: Sequence[tuple[str | None, bytes]]) -> None:
    producer = AIOKafkaProducer(**client_options(bootstrap), linger_ms=5)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key.encode() if key else None)
        await producer.flush()
    finally:
        await producer.stop()


async def caught_up(bootstrap: str, group: str, topic: str) -> bool:
    """The group committed every record the topic has now."""
    tps = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
    if not tps:
        return False
    consumer = AIOKafkaConsumer(**client_options(bootstrap), group_id=group)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            if (await consumer.committed(tp) or 0) < ends[tp]:
                return False
        return True
    finally:
        await consumer.stop()


def subscription(group: str, topic: str, handler: Any) -> Subscription:
    return Subscription(group=group, batch_handlers={topic: handler})


@pytest.fixture
async def env(
    kafka_settings: KafkaSettings, mongo_settings: MongoSettings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, Any]]:
    for k, v in SETTINGS_ENV.items():
        monkeypatch.setenv(k, v)
    await ensure_topics(kafka_settings)
    async with (
        Mongo(mongo_settings, "devices") as mongo,
        Publisher(kafka_settings, "devices") as publisher,
    ):
        await mongo.ensure_indexes(INDEXES)
        yield {"mongo": mongo, "publisher": publisher, "kafka": kafka_settings}


async def register(repo: MongoDevices, tag: str) -> dict[str, Device]:
    devices = {}
    for name in ("steady", "dup", "blip", "swap", "gone"):
        device = Device(
            device_id=f"{tag}-{name}-id",
            org_id=f"org-{tag}",
            serial=f"{tag}-{name}",
            model="bizhub C300i",
            auto_replenishment=True,
            removed=name == "gone",
            stock=StockLevels(on_hand={"black": 1} if name == "swap" else {}),
            stock_set_at=T0 - timedelta(days=1),
        )
        await repo.create(device, HistoryEntry(at=T0, by="agent", action="created"))
        devices[name] = device
    return devices


async def consume(env: dict[str, Any], wiring: Wiring, group: str, topic: str) -> None:
    """Run a fresh handler (nothing in memory: a new process) until the group caught up."""
    from services.devices.config import DevicesSettings

    handler = telemetry_handler(env["mongo"].db, wiring, DevicesSettings())
    runner = ConsumerRunner(env["kafka"], subscription(group, topic, handler), env["publisher"])
    task = asyncio.create_task(runner.run())
    try:
        await eventually(
            lambda: caught_up(env["kafka"].bootstrap_servers, group, topic),
            timeout=120,
            interval=0.5,
            what=f"{group} caught up",
        )
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)


async def test_orders_once_per_need_through_restart_and_redelivery(env: dict[str, Any]) -> None:
    db = env["mongo"].db
    bootstrap = env["kafka"].bootstrap_servers
    tag = uuid.uuid4().hex[:8]
    topic = await create_topic(bootstrap, partitions=3)
    wiring = Wiring(Directory())
    repo = MongoDevices(db, wiring.on_write)
    devices = await register(repo, tag)
    wiring.directory.mark_ready()
    first, second = scenario(tag)
    group = f"devices.telemetry-{tag}"

    await produce(bootstrap, topic, [*first, (f"{tag}-steady", b"{not json")])
    await consume(env, wiring, group, topic)
    # A restart: the next process knows nothing but the database (and the group's offsets).
    await produce(bootstrap, topic, second)
    await consume(env, wiring, group, topic)

    async def state() -> tuple[list[Any], ...]:
        return (
            sorted([d async for d in db[SUPPLY_ORDERS].find({}, {"outbox": 0})], key=str),
            sorted([d["_id"] async for d in db[SUPPLY_ORDERS_CLOSED].find({})]),
            sorted([d["_id"] async for d in db[STOCK_USAGE].find({})]),
            sorted([d["_id"] async for d in db[SUPPLY_LEVELS].find({}, {"_id": 1})]),
        )

    orders, closed, used, levels = await state()
    ids = {o["_id"]: o for o in orders}
    d = {name: dev.device_id for name, dev in devices.items()}
    assert sorted(ids) == sorted(
        [
            f"{d['steady']}:black:0",
            f"{d['dup']}:black:0",
            f"{d['blip']}:black:0",
            f"{d['swap']}:black:0",
            f"{d['swap']}:black:1",
        ]
    )
    assert ids[f"{d['steady']}:black:0"]["level"] == 10
    assert ids[f"{d['swap']}:black:0"]["action"] == "install_on_hand"
    assert ids[f"{d['swap']}:black:1"]["action"] == "shipment"  # the unit on hand was used
    assert closed == [f"{d['swap']}:black:0"]  # the blip closed nothing
    assert used == [f"{d['swap']}:black:0"]
    assert not any(lv.startswith(d["gone"]) for lv in levels)  # a removed device: ignored

    # Everything again from the start (a new group): a full re-delivery changes nothing.
    await consume(env, wiring, f"{group}-again", topic)
    assert await state() == (orders, closed, used, levels)

    # The malformed report went to the dead-letter topic; one event per order on devices.events.
    letters = [json.loads(r.value) for r in await read_topic(bootstrap, DEAD_LETTER.name)]
    mine = [x for x in letters if x["original_topic"] == topic]
    assert sorted(x["consumer_group"] for x in mine) == [group, f"{group}-again"]
    relay = OutboxRelay(db, (SUPPLY_ORDERS,), env["publisher"])
    assert await relay.publish_pending() == 5

    async def events() -> list[Any]:
        records = await read_topic(bootstrap, DEVICE_EVENTS.name)
        mine = [r for r in records if r.key.decode().startswith(tag)]
        return mine if len(mine) >= 5 else []

    published = await eventually(events)
    assert sorted(json.loads(r.value)["order_id"] for r in published) == sorted(ids)
    assert {header(r, "event_type") for r in published} == {"devices.supply-order-raised"}
