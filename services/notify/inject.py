"""Builds the notify service inside async context managers: nothing connects at import."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter, FastAPI
from pymongo.asynchronous.database import AsyncDatabase

from services.notify.config import NotifySettings
from shared import contracts, projections
from shared.bus import Publisher, Subscription
from shared.service import build_service_app
from shared.store import Document

NAME = "notify"


def subscriptions(db: AsyncDatabase[Document], _publisher: Publisher) -> Iterable[Subscription]:
    # The projections that decide who may see which device and organisation.
    yield projections.subscription(
        NAME, db, contracts.ORGANISATIONS, contracts.USERS, contracts.DEVICES
    )


def build_app(settings: NotifySettings | None = None) -> FastAPI:
    return build_service_app(
        name=NAME,
        prefix="/notify",
        settings=settings or NotifySettings(),
        routers=[APIRouter()],
        indexes=projections.INDEXES,
        outbox_collections=(),
        subscriptions=subscriptions,
    )
