"""Builds the devices service inside async context managers: nothing connects at import."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import FastAPI
from pymongo.asynchronous.database import AsyncDatabase

from services.devices.adapters import http
from services.devices.adapters.store import DEVICES, INDEXES, DeviceStore
from services.devices.config import DevicesSettings
from shared import contracts, projections
from shared.bus import Publisher, Subscription
from shared.service import Runtime, build_service_app
from shared.store import Document

NAME = "devices"


def subscriptions(db: AsyncDatabase[Document], _publisher: Publisher) -> Iterable[Subscription]:
    yield projections.subscription(NAME, db, contracts.ORGANISATIONS, contracts.USERS)


async def setup(app: FastAPI, runtime: Runtime) -> None:
    app.state.store = DeviceStore(runtime.db)


def build_app(settings: DevicesSettings | None = None) -> FastAPI:
    return build_service_app(
        name=NAME,
        prefix="/devices",
        settings=settings or DevicesSettings(),
        routers=[http.router],
        indexes=INDEXES,
        outbox_collections=(DEVICES,),
        subscriptions=subscriptions,
        setup=setup,
    )
