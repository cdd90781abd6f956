"""Builds the tickets service inside async context managers: nothing connects at import."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from fastapi import FastAPI
from pymongo.asynchronous.database import AsyncDatabase

from services.tickets import handlers
from services.tickets.adapters import http
from services.tickets.adapters.events import faults_subscription
from services.tickets.adapters.store import INDEXES, TICKETS, MongoTicketStore
from services.tickets.adapters.timers import TimerService
from services.tickets.config import TicketsSettings
from shared import contracts, projections
from shared.bus import Handler, Message, Publisher, Subscription, kafka_partition
from shared.events import utcnow
from shared.service import Runtime, build_service_app
from shared.store import Document

NAME = "tickets"


class Partitions:
    """Which partition of ``tickets.timers`` a ticket id lands on (as the producer will put it).

    The count is read from the broker once; tickets store their partition so that the owner of
    a partition finds them when it rebuilds its heap.
    """

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._all: list[int] | None = None

    async def load(self) -> None:
        if self._all is None:
            parts = await self._publisher.producer.partitions_for(contracts.TICKET_TIMERS.name)
            self._all = sorted(parts)

    def __call__(self, ticket_id: str) -> int:
        if self._all is None:
            raise RuntimeError("partitions of tickets.timers not loaded yet")
        return kafka_partition(ticket_id.encode(), self._all)


def policy(settings: TicketsSettings) -> handlers.Policy:
    return handlers.Policy(
        warning_share=settings.tickets_sla_warning_share,
        hour_seconds=settings.tickets_sla_hour_seconds,
        offer_seconds=settings.tickets_offer_seconds,
        default_calendar=settings.tickets_default_calendar,
    )


class Wiring:
    """What the consumers and the HTTP routes share, built when the runtime starts."""

    def __init__(self, settings: TicketsSettings) -> None:
        self.settings = settings
        self.deps: handlers.Deps | None = None
        self.timers: TimerService | None = None
        self.partitions: Partitions | None = None
        self.nudge: Callable[[], None] = lambda: None

    def subscriptions(
        self, db: AsyncDatabase[Document], publisher: Publisher
    ) -> Iterable[Subscription]:
        # The projections that decide who may see which device and organisation, and the
        # contract (SLA hours, calendar, location, model family) of each device.
        yield projections.subscription(
            NAME, db, contracts.ORGANISATIONS, contracts.USERS, contracts.DEVICES
        )
        self.partitions = Partitions(publisher)
        store = MongoTicketStore(db)
        self.deps = handlers.Deps(store, policy(self.settings), utcnow, self.partitions)
        self.timers = TimerService(
            db, publisher, self.deps, batch=self.settings.tickets_timer_batch
        )
        yield _after(self.partitions.load, faults_subscription(self.deps, lambda: self.nudge()))
        yield self.timers.subscription()

    async def setup(self, app: FastAPI, runtime: Runtime) -> Callable[[], Awaitable[None]]:
        assert self.deps is not None and self.timers is not None and self.partitions is not None
        await self.partitions.load()
        self.nudge = runtime.relay.nudge
        app.state.deps = self.deps
        task = asyncio.create_task(self.timers.run())
        timers = self.timers

        async def cleanup() -> None:
            timers.stop()
            await task

        return cleanup


def _after(first: Callable[[], Awaitable[None]], sub: Subscription) -> Subscription:
    """The same subscription, each handler awaiting ``first`` (cached) before it runs."""

    def wrap(handler: Handler) -> Handler:
        async def handle(msg: Message) -> None:
            await first()
            await handler(msg)

        return handle

    return Subscription(
        group=sub.group,
        handlers={topic: wrap(h) for topic, h in sub.handlers.items()},
        from_beginning=sub.from_beginning,
    )


def build_app(settings: TicketsSettings | None = None) -> FastAPI:
    settings = settings or TicketsSettings()
    wiring = Wiring(settings)
    return build_service_app(
        name=NAME,
        prefix="/tickets",
        settings=settings,
        routers=[http.router],
        indexes=INDEXES,
        outbox_collections=(TICKETS,),
        subscriptions=wiring.subscriptions,
        setup=wiring.setup,
    )
