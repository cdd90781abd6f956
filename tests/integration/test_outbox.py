"""The outbox relay against the real servers: an entry that can never be published is set aside
while the others flow, the relay's query uses an index, and two relays (two replicas of a
service) publish each entry once."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from shared.bus import Publisher
from shared.config import KafkaSettings, MongoSettings
from shared.contracts import DEVICES, DeviceState
from shared.events import HEADER_EVENT_ID
from shared.store import (
    OUTBOX,
    OUTBOX_AT,
    OUTBOX_INDEX,
    OUTBOX_REJECTED,
    PENDING,
    Mongo,
    OutboxRelay,
    new_with_outbox,
)
from tests.support import eventually, header, read_topic, uses_index

pytestmark = pytest.mark.integration

STOP_TIMEOUT = 20.0


@pytest.fixture
async def mongo(mongo_settings: MongoSettings) -> AsyncIterator[Mongo]:
    async with Mongo(mongo_settings, "outbox") as m:
        await m.ensure_indexes({"devices": [OUTBOX_INDEX]})
        yield m


def device_doc(device_id: str, revision: int = 1) -> dict[str, Any]:
    event = DeviceState(
        device_id=device_id, org_id="org", serial=f"SN-{device_id}", model="M1", revision=revision
    )
    return new_with_outbox({"_id": device_id, "revision": revision}, (DEVICES, device_id, event))


async def published_ids(bootstrap: str, keys: set[str]) -> list[str]:
    records = await read_topic(bootstrap, DEVICES.name)
    return [header(r, HEADER_EVENT_ID) or "" for r in records if r.key.decode() in keys]


def rejected_count() -> float:
    return (
        REGISTRY.get_sample_value(
            "fleetdesk_outbox_events_total", {"collection": "devices", "outcome": "rejected"}
        )
        or 0.0
    )


async def run_relays(*relays: OutboxRelay) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(relay.run()) for relay in relays]


async def stop_relays(relays: tuple[OutboxRelay, ...], tasks: list[asyncio.Task[None]]) -> None:
    for relay in relays:
        relay.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), STOP_TIMEOUT)


async def test_an_unpublishable_entry_is_set_aside_while_the_others_flow(
    kafka_settings: KafkaSettings, publisher: Publisher, mongo: Mongo
) -> None:
    devices = mongo.db["devices"]
    bad_type, bad_payload, good = (f"dev-{uuid.uuid4().hex[:12]}" for _ in range(3))
    unknown = device_doc(bad_type)
    (unknown_id,) = unknown[OUTBOX]
    unknown[OUTBOX][unknown_id]["event_type"] = "devices.no-such-event"
    invalid = device_doc(bad_payload)
    (invalid_id,) = invalid[OUTBOX]
    invalid[OUTBOX][invalid_id]["payload"] = {"device_id": bad_payload}  # required fields missing
    # Written first, so a relay that stops at them never reaches the good one.
    await devices.insert_many([unknown, invalid])
    await devices.insert_one(device_doc(good))
    before = rejected_count()

    relays = (OutboxRelay(mongo.db, ("devices",), publisher, poll_seconds=0.05),)
    tasks = await run_relays(*relays)
    try:
        await eventually(
            lambda: published_ids(kafka_settings.bootstrap_servers, {good}),
            what="the good document's event published",
        )

        async def set_aside() -> bool:
            docs = [await devices.find_one({"_id": i}) for i in (bad_type, bad_payload)]
            return all(d and d[OUTBOX] == {} and OUTBOX_AT not in d for d in docs)

        await eventually(set_aside, what="bad entries moved out of the outbox")
    finally:
        await stop_relays(relays, tasks)

    for doc_id, event_id in ((bad_type, unknown_id), (bad_payload, invalid_id)):
        doc = await devices.find_one({"_id": doc_id})
        assert doc is not None
        kept = doc[OUTBOX_REJECTED][event_id]
        assert kept["key"] == doc_id and kept["error"]
    assert rejected_count() - before == 2
    assert await published_ids(kafka_settings.bootstrap_servers, {bad_type, bad_payload}) == []


async def test_the_relay_query_uses_an_index(mongo: Mongo) -> None:
    devices = mongo.db["devices"]
    await devices.insert_many(
        [{"_id": f"quiet-{uuid.uuid4().hex}", "revision": 1, OUTBOX: {}} for _ in range(5000)]
    )
    await devices.insert_one(device_doc(f"dev-{uuid.uuid4().hex[:12]}"))
    explained = await mongo.db.command("explain", {"find": "devices", "filter": PENDING})
    plan = str(explained["queryPlanner"])
    assert uses_index(plan), plan


async def test_two_relays_publish_each_entry_once(
    kafka_settings: KafkaSettings, publisher: Publisher, mongo: Mongo
) -> None:
    devices = mongo.db["devices"]
    ids = {f"dev-{uuid.uuid4().hex[:12]}" for _ in range(150)}
    docs = [device_doc(i) for i in sorted(ids)]
    event_ids = {event_id for d in docs for event_id in d[OUTBOX]}
    await devices.insert_many(docs)

    relays = (
        OutboxRelay(mongo.db, ("devices",), publisher, poll_seconds=0.01, batch=20),
        OutboxRelay(mongo.db, ("devices",), publisher, poll_seconds=0.01, batch=20),
    )
    tasks = await run_relays(*relays)
    try:

        async def all_emptied() -> bool:
            return await devices.count_documents({"_id": {"$in": sorted(ids)}, **PENDING}) == 0

        await eventually(all_emptied, timeout=60, what="every outbox emptied")
    finally:
        await stop_relays(relays, tasks)

    seen = Counter(await published_ids(kafka_settings.bootstrap_servers, ids))
    assert set(seen) == event_ids
    assert [e for e, n in seen.items() if n > 1] == []
