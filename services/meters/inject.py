"""Builds the meters service inside async context managers: nothing connects at import.

One process serves the HTTP API and runs the ingestion worker (a faust app started in the
service's lifespan on the same event loop); more processes share the partitions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from faust.contrib.asgi import faust_app_running
from pymongo.asynchronous.database import AsyncDatabase

from services.meters.adapters import http
from services.meters.adapters.directory import Directory, DirectoryFeed
from services.meters.adapters.store import INDEXES, LocalDecisions, ReadingStore
from services.meters.adapters.stream import APP_ID, Ingestor, build_faust_app
from services.meters.config import MetersSettings
from shared import contracts, projections
from shared.bus import Publisher, Subscription
from shared.contracts import METER_COMMANDS, TELEMETRY, ReadingSubmitted
from shared.service import AppContext, Runtime, build_service_app
from shared.store import Document

NAME = "meters"


def subscriptions(db: AsyncDatabase[Document], _publisher: Publisher) -> Iterable[Subscription]:
    # The projections that decide who may see which device and organisation.
    yield projections.subscription(
        NAME, db, contracts.ORGANISATIONS, contracts.USERS, contracts.DEVICES
    )


class KafkaCommandBus:
    """Submissions go to ``meters.commands`` keyed by serial, like the telemetry."""

    def __init__(self, publisher: Publisher, topic: str = METER_COMMANDS.name) -> None:
        self._publisher = publisher
        self._topic = topic

    async def submit(self, cmd: ReadingSubmitted) -> None:
        envelope = self._publisher.envelope(cmd)
        await self._publisher.send_raw(
            self._topic, cmd.serial, cmd.model_dump_json().encode(), envelope.to_headers()
        )


@asynccontextmanager
async def ingestion(
    settings: MetersSettings,
    db: AsyncDatabase[Document],
    publisher: Publisher,
    *,
    app_id: str = APP_ID,
    telemetry_topic: str = TELEMETRY.name,
    commands_topic: str = METER_COMMANDS.name,
) -> AsyncIterator[Ingestor]:
    """The directory feed and the faust worker, started and stopped together."""
    directory = Directory()
    decisions = LocalDecisions(db)
    faust_app = build_faust_app(settings.kafka, settings.ingest, app_id=app_id)
    ingestor = Ingestor(
        faust_app,
        settings.ingest,
        db,
        publisher,
        directory,
        decisions,
        telemetry_topic=telemetry_topic,
        commands_topic=commands_topic,
    )
    async with DirectoryFeed(settings.kafka, directory, f"{NAME}-directory"):
        await ingestor.start(settings.kafka)
        try:
            # faust stops first: its stop waits for every delivered input to be acknowledged,
            # which the still-running flusher does.
            async with faust_app_running(faust_app, stop_timeout=30):
                yield ingestor
        finally:
            await ingestor.stop()


def context(settings: MetersSettings) -> AppContext:
    @asynccontextmanager
    async def run(app: FastAPI, runtime: Runtime) -> AsyncIterator[None]:
        async with ingestion(settings, runtime.db, runtime.publisher) as ingestor:
            app.state.ingestor = ingestor
            app.state.meters = http.MetersPorts(
                directory=ingestor.directory,
                bus=KafkaCommandBus(runtime.publisher),
                decisions=ingestor.decisions,
                history=ReadingStore(runtime.db),
                decision_timeout=settings.ingest.decision_timeout_seconds,
            )

            async def ingest_ready() -> bool:
                return ingestor.ready()

            app.state.readiness["ingest"] = ingest_ready
            yield

    return run


def build_app(settings: MetersSettings | None = None) -> FastAPI:
    settings = settings or MetersSettings()
    return build_service_app(
        name=NAME,
        prefix="/meters",
        settings=settings,
        routers=[http.router],
        indexes=INDEXES,
        outbox_collections=(),
        subscriptions=subscriptions,
        context=context(settings),
    )
