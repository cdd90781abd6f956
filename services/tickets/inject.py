"""Builds the tickets service inside async context managers: nothing connects at import."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter, FastAPI
from pymongo.asynchronous.database import AsyncDatabase

from services.tickets.config import TicketsSettings
from shared import contracts, projections
from shared.bus import Publisher, Subscription
from shared.service import build_service_app
from shared.store import Document

NAME = "tickets"


def subscriptions(db: AsyncDatabase[Document], _publisher: Publisher) -> Iterable[Subscription]:
    # The projections that decide who may see which device and organisation.
    yield projections.subscription(
        NAME, db, contracts.ORGANISATIONS, contracts.USERS, contracts.DEVICES
    )


def build_app(settings: TicketsSettings | None = None) -> FastAPI:
    return build_service_app(
        name=NAME,
        prefix="/tickets",
        settings=settings or TicketsSettings(),
        routers=[APIRouter()],
        indexes=projections.INDEXES,
        outbox_collections=(),
        subscriptions=subscriptions,
    )
