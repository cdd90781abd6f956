"""Notify's HTTP routes (prefix ``/notify``): preferences, the delivery ledger, live updates."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse

from services.notify.adapters.store import MongoLedger, MongoPreferences
from services.notify.adapters.stream import StreamHub, stream_for
from services.notify.core.model import (
    MANDATORY,
    DeliveryPublic,
    DeliveryStatus,
    Preferences,
    PreferencesPublic,
)
from services.notify.ports import DeliveryState
from shared.auth import CurrentPrincipal, require_role
from shared.contracts import Role
from shared.http import Problem

router = APIRouter(prefix="/notify", tags=["notify"])


def _ledger(request: Request) -> MongoLedger:
    ledger: MongoLedger = request.app.state.notify.ledger
    return ledger


def _preferences(request: Request) -> MongoPreferences:
    prefs: MongoPreferences = request.app.state.notify.preferences
    return prefs


def _hub(request: Request) -> StreamHub:
    hub: StreamHub = request.app.state.notify_hub
    return hub


LedgerDep = Annotated[MongoLedger, Depends(_ledger)]
PreferencesDep = Annotated[MongoPreferences, Depends(_preferences)]
HubDep = Annotated[StreamHub, Depends(_hub)]


@router.get("/preferences")
async def get_preferences(principal: CurrentPrincipal, prefs: PreferencesDep) -> PreferencesPublic:
    """The signed-in user's opt-outs."""
    return PreferencesPublic(opted_out=sorted(await prefs.get(principal.user_id)))


@router.put("/preferences")
async def put_preferences(
    body: Preferences, principal: CurrentPrincipal, prefs: PreferencesDep
) -> PreferencesPublic:
    """Replace the signed-in user's opt-outs; mandatory categories cannot be opted out of."""
    mandatory = sorted(set(body.opted_out) & MANDATORY)
    if mandatory:
        raise Problem(
            422,
            "mandatory-category",
            "These messages cannot be turned off",
            f"mandatory categories: {', '.join(mandatory)}",
        )
    await prefs.put(principal.user_id, frozenset(body.opted_out))
    return PreferencesPublic(opted_out=sorted(set(body.opted_out)))


def _public(state: DeliveryState) -> DeliveryPublic:
    r = state.record
    return DeliveryPublic(
        delivery_id=r.delivery_id,
        event_id=r.event_id,
        event_type=r.event_type,
        category=r.category,
        recipient=r.recipient.address,
        user_id=r.recipient.user_id,
        status=state.status,
        answer=state.answer,
        attempts=state.attempts,
        created_at=r.created_at,
        updated_at=state.last_activity,
    )


@router.get("/deliveries")
async def deliveries(
    principal: CurrentPrincipal,
    ledger: LedgerDep,
    recipient: Annotated[str | None, Query(max_length=320)] = None,
    event_type: Annotated[str | None, Query(max_length=100)] = None,
    status: DeliveryStatus | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[DeliveryPublic]:
    """The delivery ledger, newest first (agents only)."""
    require_role(principal, Role.AGENT)
    found = await ledger.search(
        recipient=recipient,
        event_type=event_type,
        status=status,
        since=since,
        until=until,
        limit=limit,
    )
    return [_public(s) for s in found]


@router.get("/stream", response_class=StreamingResponse)
async def stream(
    principal: CurrentPrincipal,
    hub: HubDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
) -> StreamingResponse:
    """Server-sent events of what the signed-in user may see (tickets, devices, readings)."""
    return StreamingResponse(
        stream_for(hub, principal, last_event_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
