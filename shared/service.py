"""The wiring every service shares, built inside async context managers (nothing at import).

``service_runtime`` connects to MongoDB and Kafka, creates indexes and missing topics, starts
the outbox relay and the service's consumer groups, and tears all of it down in reverse order.
``build_service_app`` wraps a runtime into the service's FastAPI app, with readiness checks
and token verification. Each service's ``inject.py`` only says what is its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI
from pymongo import IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from shared import projections
from shared.auth import PrincipalResolver, TokenVerifier, projection_resolver
from shared.bus import ConsumerRunner, Consumers, Publisher, Subscription, ensure_topics
from shared.config import ServiceSettings
from shared.contracts import CATALOGUE, SIGNING_KEYS, Topic
from shared.http import create_app
from shared.logging import configure_logging, get_logger
from shared.store import OUTBOX_INDEX, Document, Mongo, OutboxRelay

log = get_logger(__name__)


@dataclass
class Runtime:
    """What a running service holds: its settings, database, publisher, relay and consumers."""

    name: str
    settings: ServiceSettings
    mongo: Mongo
    publisher: Publisher
    relay: OutboxRelay
    consumers: Consumers
    extras: dict[str, object] = field(default_factory=dict)

    @property
    def db(self) -> AsyncDatabase[Document]:
        return self.mongo.db

    async def kafka_ready(self) -> bool:
        try:
            await asyncio.wait_for(self.publisher.producer.client.fetch_all_metadata(), 3)
            return True
        except Exception:
            return False

    async def mongo_ready(self) -> bool:
        return await self.mongo.ping()

    async def consumers_ready(self) -> bool:
        return self.consumers.healthy()


def own_topics(name: str, settings: ServiceSettings) -> tuple[Topic, ...]:
    """The catalogue topics a service creates at start-up when missing.

    With SASL (ACLs on) a service may create only topics under its own prefix; the others are
    created by the super user before the services start (``python -m shared.kafka_security
    setup``, run by ``deploy/local`` and the test harness). With security off it creates every
    missing catalogue topic, as a plain development broker expects.
    """
    if not settings.kafka.uses_sasl:
        return CATALOGUE
    return tuple(t for t in CATALOGUE if t.name.startswith(f"{name}."))


SubscriptionFactory = Callable[[AsyncDatabase[Document], Publisher], Iterable[Subscription]]


def signing_keys_subscription(service: str, db: AsyncDatabase[Document]) -> Subscription:
    """Every service keeps the token-verifying public keys in its own database."""
    return Subscription(
        group=f"{service}.signing-keys",
        handlers={SIGNING_KEYS.name: projections.signing_keys(db)},
    )


@asynccontextmanager
async def service_runtime(
    name: str,
    settings: ServiceSettings,
    *,
    indexes: Mapping[str, Iterable[IndexModel]],
    outbox_collections: tuple[str, ...],
    subscriptions: SubscriptionFactory,
) -> AsyncIterator[Runtime]:
    configure_logging(name, settings.log_level)
    await ensure_topics(settings.kafka, own_topics(name, settings))
    async with Mongo(settings.mongo, name) as mongo, Publisher(settings.kafka, name) as publisher:
        await mongo.ensure_indexes(indexes)
        await mongo.ensure_indexes({name: [OUTBOX_INDEX] for name in outbox_collections})
        relay = OutboxRelay(
            mongo.db,
            outbox_collections,
            publisher,
            settings.mongo.outbox_poll_ms / 1000,
        )
        subs = [signing_keys_subscription(name, mongo.db), *subscriptions(mongo.db, publisher)]
        runners = [ConsumerRunner(settings.kafka, sub, publisher) for sub in subs]
        relay_task = asyncio.create_task(relay.run())
        try:
            async with Consumers(runners) as consumers:
                log.info("service started", consumer_groups=[s.group for s in subs])
                yield Runtime(name, settings, mongo, publisher, relay, consumers)
        finally:
            relay.stop()
            await relay_task
            log.info("service stopped")


AppCleanup = Callable[[], Awaitable[None]]
AppSetup = Callable[[FastAPI, Runtime], Awaitable[AppCleanup | None]]
"""Fills ``app.state``; may return a coroutine function that undoes it at shutdown."""
# What a service runs for as long as it lives, beside the runtime (a stream worker, say).
AppContext = Callable[[FastAPI, Runtime], AbstractAsyncContextManager[None]]


def build_service_app(
    *,
    name: str,
    prefix: str,
    settings: ServiceSettings,
    routers: Sequence[APIRouter],
    indexes: Mapping[str, Iterable[IndexModel]],
    outbox_collections: tuple[str, ...],
    subscriptions: SubscriptionFactory,
    setup: AppSetup | None = None,
    resolver: Callable[[Runtime], PrincipalResolver] | None = None,
    body_limits: Mapping[str, int] | None = None,
    context: AppContext | None = None,
) -> FastAPI:
    """The service's FastAPI app; its lifespan runs the runtime and fills ``app.state``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_runtime(
            name,
            settings,
            indexes=indexes,
            outbox_collections=outbox_collections,
            subscriptions=subscriptions,
        ) as runtime:
            app.state.runtime = runtime
            app.state.verifier = TokenVerifier(runtime.db, settings.auth)
            app.state.resolve_principal = (
                resolver(runtime) if resolver else projection_resolver(runtime.db)
            )
            app.state.readiness = {
                "kafka": runtime.kafka_ready,
                "mongodb": runtime.mongo_ready,
                "consumers": runtime.consumers_ready,
            }
            cleanup = await setup(app, runtime) if setup is not None else None
            try:
                if context is None:
                    yield
                else:
                    async with context(app, runtime):
                        yield
            finally:
                if cleanup is not None:
                    await cleanup()

    return create_app(
        service=name, prefix=prefix, routers=routers, lifespan=lifespan, body_limits=body_limits
    )


def use_uvloop() -> None:
    """Every event loop this process makes is uvloop's: the main one (uvicorn's,
    ``asyncio.run``'s) and those libraries make for themselves (faust runs its consumer on a
    loop of its own, in a thread). uvloop does the same work as asyncio's own loop in C, at a
    fraction of the cost per task, callback and socket read."""
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(app: FastAPI, settings: ServiceSettings, port: int) -> None:
    """Run ``app`` under uvicorn until SIGINT/SIGTERM; the lifespan shuts down cleanly."""
    import uvicorn

    use_uvloop()
    uvicorn.run(
        app,
        host=settings.http.host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        # Longer than any client's or proxy's idle timeout (httpx keeps a connection 5 s,
        # proxies typically 60 s): uvicorn's own 5 s raced httpx's, and a request sent on a
        # connection the server was closing at that moment got no answer.
        timeout_keep_alive=75,
        # The socket peer stays the peer: a service that needs the client behind a proxy
        # decides whom to believe itself (identity: FLEETDESK_IDENTITY_TRUSTED_PROXIES).
        proxy_headers=False,
        loop="uvloop",
    )
