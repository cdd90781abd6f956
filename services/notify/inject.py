"""Builds the notify service inside async context managers: nothing connects at import."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from pymongo.asynchronous.database import AsyncDatabase

from services.notify.adapters import events, http, stream
from services.notify.adapters.smtp import SmtpMailer
from services.notify.adapters.store import (
    INDEXES,
    MongoDigests,
    MongoLedger,
    MongoPreferences,
    ProjectionDirectory,
)
from services.notify.config import NotifySettings
from services.notify.core.handlers import Deps, Options, flush_digests, recover_deliveries
from services.notify.core.recipients import Policy, language_or
from services.notify.core.render import Renderer
from shared import contracts, projections
from shared.bus import Publisher, Subscription
from shared.contracts import Topic
from shared.logging import get_logger
from shared.sealing import SealingKey
from shared.service import Runtime, build_service_app
from shared.store import Document

NAME = "notify"
log = get_logger(__name__)

PEOPLE_TOPICS = (contracts.DEVICE_EVENTS, contracts.METER_EVENTS, contracts.TICKET_EVENTS)


def options(settings: NotifySettings) -> Options:
    return Options(
        concurrency=settings.notify_smtp_connections,
        send_attempts=settings.notify_send_attempts,
        backoff_seconds=settings.notify_retry_backoff_ms / 1000,
        backoff_max_seconds=settings.notify_retry_backoff_max_ms / 1000,
        lease_seconds=settings.notify_lease_seconds,
        max_claims=settings.notify_max_claims,
        digest_window_seconds=settings.notify_digest_window_seconds,
        horizon=timedelta(days=2),
        message_id_domain=settings.notify_message_id_domain,
    )


def make_deps(db: AsyncDatabase[Document], mailer: Any, settings: NotifySettings) -> Deps:
    key = SealingKey(settings.notify_sealing_private_key.get_secret_value())
    return Deps(
        directory=ProjectionDirectory(db),
        preferences=MongoPreferences(db),
        ledger=MongoLedger(db),
        mailer=mailer,
        digests=MongoDigests(db),
        renderer=Renderer(),
        policy=Policy(
            agents_address=settings.notify_agents_address,
            agents_language=language_or(settings.notify_agents_language),
            portal_url=settings.notify_portal_url.rstrip("/"),
        ),
        opener=key.open,
        options=options(settings),
    )


async def housekeeping(deps: Deps, every: float) -> None:
    """Recovery sweep and digest flush, forever (each safe on any number of instances)."""
    while True:
        for job in (recover_deliveries, flush_digests):
            try:
                await job(deps)
            except Exception as exc:  # next round tries again
                log.error("notify housekeeping failed", job=job.__name__, error=repr(exc))
        await asyncio.sleep(every)


def build_app(
    settings: NotifySettings | None = None, *, topics: Mapping[str, str] | None = None
) -> FastAPI:
    """The notify app. ``topics`` renames catalogue topics (isolated test runs only)."""
    settings = settings or NotifySettings()
    SealingKey(settings.notify_sealing_private_key.get_secret_value())  # fail fast on a bad key
    renamed = dict(topics or {})
    suffix = settings.notify_consumer_group_suffix
    mailer = SmtpMailer(settings)
    hub = stream.StreamHub(settings.notify_stream_buffer)
    holder: dict[str, Deps] = {}

    def name(topic: Topic) -> str:
        return renamed.get(topic.name, topic.name)

    def subscriptions(db: AsyncDatabase[Document], _publisher: Publisher) -> Iterable[Subscription]:
        deps = holder["deps"] = make_deps(db, mailer, settings)
        # Who may see which device and organisation; users' roles, languages, addresses.
        yield Subscription(
            group=f"{NAME}.projections{suffix}",
            handlers={
                name(t): projections.BY_TOPIC[t.name](db)
                for t in (contracts.ORGANISATIONS, contracts.USERS, contracts.DEVICES)
            },
        )
        # Confirmations never wait behind a large fan-out: a group of their own.
        yield Subscription(
            group=f"{NAME}.identity{suffix}",
            handlers={name(contracts.IDENTITY_NOTIFICATIONS): events.handler(deps)},
        )
        yield Subscription(
            group=f"{NAME}.events{suffix}",
            handlers={name(t): events.handler(deps) for t in PEOPLE_TOPICS},
        )
        # Every instance follows every partition for its live clients, from now on.
        yield Subscription(
            group=f"{NAME}.stream.{hub.epoch}{suffix}",
            handlers={name(t): stream.handler(hub) for t in stream.STREAM_TOPICS},
            from_beginning=False,
        )

    async def setup(app: FastAPI, runtime: Runtime) -> None:
        app.state.notify = holder["deps"]
        app.state.notify_hub = hub

    app = build_service_app(
        name=NAME,
        prefix="/notify",
        settings=settings,
        routers=[http.router],
        indexes=INDEXES,
        outbox_collections=(),
        subscriptions=subscriptions,
        setup=setup,
    )
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # SMTP connections close last; the housekeeping task stops before MongoDB closes.
        async with mailer, inner(app):
            task = asyncio.create_task(housekeeping(holder["deps"], settings.notify_sweep_seconds))
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.router.lifespan_context = lifespan
    return app
