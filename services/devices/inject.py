"""Builds the devices service inside async context managers: nothing connects at import.

Consumer groups: ``devices.projections`` (organisations, and users with the assignments they
reveal), ``devices.telemetry`` (toner levels, a batch handler) and ``devices.commands``
(removals asked for by other services). Outbox collections:
``devices`` (``devices.devices.state``) and ``supply_orders`` (``devices.events``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from fastapi import FastAPI
from pymongo.asynchronous.database import AsyncDatabase

from services.devices.adapters import http
from services.devices.adapters.commands import commands_subscription
from services.devices.adapters.directory import Directory, run_follower
from services.devices.adapters.identity_users import users_handler
from services.devices.adapters.store import (
    DEVICES,
    INDEXES,
    SUPPLY_ORDERS,
    MongoDevices,
    MongoImports,
    MongoLevels,
    MongoStock,
    MongoSupplyOrders,
)
from services.devices.adapters.telemetry import GROUP, TelemetryHandler
from services.devices.config import DevicesSettings
from services.devices.core.model import Device
from services.devices.core.telemetry import LevelsProjection, TelemetryDeps
from shared import contracts, projections
from shared.bus import Publisher, Subscription
from shared.service import Runtime, build_service_app
from shared.store import Document

NAME = "devices"


@dataclass
class Wiring:
    """The pieces that outlive one request, shared by HTTP and the consumers."""

    directory: Directory
    nudge: Callable[[], None] = lambda: None

    def on_write(self, device: Device) -> None:
        self.directory.apply(
            device_id=device.device_id,
            org_id=device.org_id,
            serial=device.serial,
            auto_replenishment=device.auto_replenishment,
            removed=device.removed,
            revision=device.revision,
        )
        self.nudge()


def telemetry_handler(
    db: AsyncDatabase[Document], wiring: Wiring, settings: DevicesSettings
) -> TelemetryHandler:
    levels = MongoLevels(db)
    return TelemetryHandler(
        TelemetryDeps(
            directory=wiring.directory,
            levels=LevelsProjection(levels),
            store=levels,
            orders=MongoSupplyOrders(db, lambda: wiring.nudge()),
            stock=MongoStock(db),
            policy=settings.replenishment.policy(),
        )
    )


def build_app(settings: DevicesSettings | None = None) -> FastAPI:
    settings = settings or DevicesSettings()
    wiring = Wiring(Directory())

    def subscriptions(db: AsyncDatabase[Document], _publisher: Publisher) -> Iterable[Subscription]:
        repo = MongoDevices(db, wiring.on_write)
        yield Subscription(
            group=f"{NAME}.projections",
            handlers={
                contracts.ORGANISATIONS.name: projections.organisations(db),
                contracts.USERS.name: users_handler(db, repo),
            },
        )
        yield Subscription(
            group=GROUP,
            batch_handlers={contracts.TELEMETRY.name: telemetry_handler(db, wiring, settings)},
        )
        # Removals asked for by other services (a resolved device-removal ticket).
        yield commands_subscription(repo)

    async def setup(app: FastAPI, runtime: Runtime) -> Callable[[], Awaitable[None]]:
        wiring.nudge = runtime.relay.nudge
        devices = MongoDevices(runtime.db, wiring.on_write)
        app.state.devices = http.DevicesHttp(
            devices=devices,
            stock=MongoStock(runtime.db),
            orders=MongoSupplyOrders(runtime.db, runtime.relay.nudge),
            levels=MongoLevels(runtime.db),
            imports=MongoImports(runtime.db),
            import_chunk=settings.replenishment.import_chunk_rows,
        )

        async def load() -> None:
            for doc in await devices.all_refs():
                wiring.directory.apply(
                    device_id=doc["_id"],
                    org_id=doc["org_id"],
                    serial=doc["serial"],
                    auto_replenishment=doc.get("auto_replenishment", False),
                    removed=doc.get("removed", False),
                    revision=doc.get("revision", 1),
                )

        stopping = asyncio.Event()
        follower = asyncio.create_task(
            run_follower(wiring.directory, settings.kafka, load, stopping)
        )

        async def cleanup() -> None:
            stopping.set()
            tasks = [follower, *app.state.devices.tasks]
            for task in tasks[1:]:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)

        return cleanup

    return build_service_app(
        name=NAME,
        prefix="/devices",
        settings=settings,
        routers=[http.router],
        indexes=INDEXES,
        outbox_collections=(DEVICES, SUPPLY_ORDERS),
        subscriptions=subscriptions,
        setup=setup,
        body_limits={"/devices/import": http.IMPORT_MAX_BYTES},
    )
