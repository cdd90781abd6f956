"""SLA timers against the real Kafka and MongoDB-wire servers: once each, across a restart and
a rebalance; none for a ticket answered first.

Contract hours are scaled down (``hour_seconds``) and the calendar is open round the clock, so
a one-hour contract runs out in seconds.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import pytest

from services.tickets import handlers
from services.tickets.adapters.store import INDEXES, TICKETS, MongoTicketStore
from services.tickets.adapters.timers import TimerService
from services.tickets.core.model import CalendarSpec, DeviceInfo, Span
from services.tickets.inject import Partitions
from shared import projections
from shared.auth import Principal
from shared.bus import ConsumerRunner, Publisher, ensure_topics
from shared.config import KafkaSettings, MongoSettings
from shared.contracts import TICKET_EVENTS, Role, TicketCategory, TicketStatus
from shared.events import utcnow
from shared.store import Mongo, OutboxRelay
from tests.support import eventually, header, read_topic

pytestmark = pytest.mark.integration

ALWAYS = CalendarSpec(
    timezone="UTC",
    country="",
    weekly={
        d: [Span(start="00:00", end="24:00")]
        for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    },
)
AGENT = Principal("agent-1", None, Role.AGENT)


@dataclass
class Instance:
    deps: handlers.Deps
    timers: TimerService
    relay: OutboxRelay
    mongo: Mongo
    runner: ConsumerRunner
    runner_task: asyncio.Task[None]

    async def leave(self) -> None:
        """Stop only the timer consumer: its partitions move to the other members."""
        self.runner.stop()
        await self.runner_task


@asynccontextmanager
async def instance(
    kafka: KafkaSettings, mongo_settings: MongoSettings, group: str, hour_seconds: float
) -> AsyncIterator[Instance]:
    """One tickets instance: its store, outbox relay, timer consumer and firing loop."""
    async with Mongo(mongo_settings, "tickets") as mongo, Publisher(kafka, "tickets") as pub:
        await mongo.ensure_indexes(INDEXES)
        partitions = Partitions(pub)
        await partitions.load()
        policy = handlers.Policy(hour_seconds=hour_seconds, default_calendar=ALWAYS)
        deps = handlers.Deps(MongoTicketStore(mongo.db), policy, utcnow, partitions)
        timers = TimerService(mongo.db, pub, deps, keep_lateness=True)
        relay = OutboxRelay(mongo.db, (TICKETS,), pub, 0.1)
        runner = ConsumerRunner(kafka, timers.subscription(group), pub)
        tasks = [asyncio.create_task(t) for t in (relay.run(), runner.run(), timers.run())]
        try:
            yield Instance(deps, timers, relay, mongo, runner, tasks[1])
        finally:
            runner.stop()
            relay.stop()
            timers.stop()
            await asyncio.gather(*tasks)


async def add_device(mongo: Mongo, hours: int) -> DeviceInfo:
    device = DeviceInfo(
        device_id=secrets.token_hex(6),
        org_id="org-" + secrets.token_hex(3),
        sla_response_hours=hours,
    )
    await mongo.db[projections.DEVICES].insert_one(
        {
            "_id": device.device_id,
            "org_id": device.org_id,
            "sla_response_hours": hours,
            "revision": 1,
        }
    )
    return device


async def file(inst: Instance, device: DeviceInfo) -> str:
    cmd = handlers.CreateTicket(device.device_id, TicketCategory.FAULT, "jam", created_by="u1")
    ticket = await handlers.create_ticket(cmd, inst.deps, device)
    assert ticket is not None
    inst.relay.nudge()
    return ticket.ticket_id


async def escalations(bootstrap: str, ids: set[str]) -> list[dict[str, object]]:
    return [
        json.loads(r.value)
        for r in await read_topic(bootstrap, TICKET_EVENTS.name)
        if r.key and r.key.decode() in ids and header(r, "event_type") == "tickets.sla-escalation"
    ]


def kinds(events: list[dict[str, object]]) -> Counter[tuple[object, object]]:
    return Counter((e["ticket_id"], e["kind"]) for e in events)


async def owns(inst: Instance, count: int) -> bool:
    return len(inst.timers.owned) == count


async def test_warning_and_breach_once_across_a_restart_none_when_answered(
    kafka_settings: KafkaSettings, mongo_settings: MongoSettings
) -> None:
    await ensure_topics(kafka_settings)
    group = "tickets.timers-" + secrets.token_hex(4)
    boot = kafka_settings.bootstrap_servers
    async with instance(kafka_settings, mongo_settings, group, hour_seconds=8) as a:
        await eventually(lambda: owns(a, 3), timeout=30, what="partitions assigned")
        device = await add_device(a.mongo, 1)  # 1 h = 8 s: warning at 6.4 s, breach at 8 s
        late = await file(a, device)
        answered = await file(a, device)
        await handlers.change_status(
            handlers.ChangeStatus(answered, TicketStatus.IN_PROGRESS), AGENT, a.deps
        )
        a.relay.nudge()
        ids = {late, answered}

        async def warned() -> list[dict[str, object]]:
            return [e for e in await escalations(boot, ids) if e["kind"] == "warning"]

        warning = (await eventually(warned, timeout=30))[0]
        assert warning["ticket_id"] == late
        fired = datetime.fromisoformat(str(warning["fired_at"]))
        ticket = await a.deps.store.get_ticket(late)
        assert ticket is not None and ticket.sla.warn_at is not None
        assert (fired - ticket.sla.warn_at).total_seconds() < 3  # on time, within seconds
    # Restart: a new instance rebuilds its heap from the store; the warning is not repeated.
    async with instance(kafka_settings, mongo_settings, group, hour_seconds=8) as b:

        async def breached() -> list[dict[str, object]]:
            return [e for e in await escalations(boot, ids) if e["kind"] == "breach"]

        await eventually(breached, timeout=30)
        assert b.timers.rebuilds and b.timers.rebuilds[0].tickets >= 1
        counts = kinds(await escalations(boot, ids))
        assert counts == Counter({(late, "warning"): 1, (late, "breach"): 1}), counts
        # The once-only records: one per (ticket, kind, deadline), each marked published.
        assert await b.mongo.db["sla_firings"].count_documents({"ticket_id": late}) == 2
        marked = [i async for d in b.mongo.db["sla_published"].find({}) for i in d["ids"]]
        assert sorted(marked) == sorted(
            [d["_id"] async for d in b.mongo.db["sla_firings"].find({"ticket_id": late})]
        )
        # Both are on the ticket's timeline as shown: by the system, when they fired.
        stored = await b.deps.store.get_ticket(late)
        assert stored is not None and "sla" not in [e.kind for e in stored.timeline]
        (shown,) = await handlers.with_escalations([stored], b.deps)
        sla = [e for e in shown.timeline if e.kind == "sla"]
        assert [(e.by, e.data["escalation"]) for e in sla] == [(None, "warning"), (None, "breach")]
        fired_at = {str(e["kind"]): str(e["fired_at"]) for e in await escalations(boot, {late})}
        assert [e.at for e in sla] == [
            datetime.fromisoformat(fired_at["warning"]),
            datetime.fromisoformat(fired_at["breach"]),
        ]
        assert shown.timeline == sorted(shown.timeline, key=lambda e: e.at)


async def test_each_escalation_once_through_a_rebalance(
    kafka_settings: KafkaSettings, mongo_settings: MongoSettings
) -> None:
    await ensure_topics(kafka_settings)
    group = "tickets.timers-" + secrets.token_hex(4)
    boot = kafka_settings.bootstrap_servers
    async with instance(kafka_settings, mongo_settings, group, hour_seconds=6) as a:
        await eventually(lambda: owns(a, 3), timeout=30, what="partitions assigned")
        short, long = await add_device(a.mongo, 1), await add_device(a.mongo, 2)
        ids = {await file(a, d) for d in (short, long) * 5}
        # A second instance joins (the partitions are split), then the first one leaves.
        async with instance(kafka_settings, mongo_settings, group, hour_seconds=6) as b:
            await eventually(
                lambda: _split(a, b), timeout=30, what="partitions split between two instances"
            )
            await a.leave()
            await eventually(lambda: owns(b, 3), timeout=30, what="the survivor owns all")

            async def all_fired() -> bool:
                return len(await escalations(boot, ids)) >= 2 * len(ids)

            await eventually(all_fired, timeout=60)
            counts = kinds(await escalations(boot, ids))
            assert set(counts.values()) == {1} and len(counts) == 2 * len(ids), counts


async def _split(a: Instance, b: Instance) -> bool:
    return bool(a.timers.owned) and bool(b.timers.owned) and not (a.timers.owned & b.timers.owned)
