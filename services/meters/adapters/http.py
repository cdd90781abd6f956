"""HTTP routes of the meters service: thin edges over the core handlers and the access rules."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from services.meters.core import handlers
from services.meters.core.model import Device, Reading, billing_snapshot
from services.meters.core.ports import CommandBus, Decisions, DeviceDirectory, ReadingHistory
from shared.auth import CurrentPrincipal, Principal, can_manage_device, can_see_device, forbidden
from shared.contracts import MAX_COUNTERS, CounterName, CounterValue, ReadingSource
from shared.http import Problem

router = APIRouter(tags=["meters"])


class ReadingCreate(BaseModel):
    """A manual reading; agents entering one phoned in by the customer give a reason."""

    model_config = ConfigDict(extra="forbid")

    counters: dict[CounterName, CounterValue] = Field(
        min_length=1,
        max_length=MAX_COUNTERS,
        description="Counter values by name (total, black, ...).",
    )
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = Field(
        None, description="Agents only: why the reading is entered for the customer."
    )


class ReadingPublic(BaseModel):
    reading_id: str
    device_id: str
    source: ReadingSource
    counters: dict[str, int]
    read_at: datetime
    submitted_by: str | None = None
    reason: str | None = None


class ReadingPage(BaseModel):
    items: list[ReadingPublic]
    limit: int
    offset: int


@dataclass
class MetersPorts:
    """What the routes need, put on ``app.state.meters`` by ``inject.py``."""

    directory: DeviceDirectory
    bus: CommandBus
    decisions: Decisions
    history: ReadingHistory
    decision_timeout: float


def _ports(request: Request) -> MetersPorts:
    ports: MetersPorts = request.app.state.meters
    return ports


def _not_found() -> Problem:
    return Problem(
        404, "device-not-found", "No such device", "no device with this id is visible to you"
    )


def _device_in_scope(ports: MetersPorts, principal: Principal, device_id: str) -> Device:
    """404 when the device is not visible to the caller; 403 when visible but its readings
    are not theirs to see or submit (admins of the org, the device's managers, agents)."""
    device = ports.directory.device(device_id)
    if device is None or not can_see_device(principal, device.org_id, device_id):
        raise _not_found()
    if not can_manage_device(principal, device.org_id, device_id):
        raise forbidden("only the organisation's admins and the device's managers may do this")
    return device


def public(reading: Reading) -> ReadingPublic:
    return ReadingPublic(
        reading_id=reading.reading_id,
        device_id=reading.device_id,
        source=reading.source,
        counters=reading.counters,
        read_at=reading.read_at,
        submitted_by=reading.submitted_by,
        reason=reading.reason,
    )


@router.post("/meters/devices/{device_id}/readings", status_code=status.HTTP_201_CREATED)
async def submit_reading(
    device_id: str, body: ReadingCreate, principal: CurrentPrincipal, request: Request
) -> ReadingPublic:
    ports = _ports(request)
    _device_in_scope(ports, principal, device_id)
    if principal.is_agent:
        if not body.reason:
            raise Problem(
                422,
                "reason-required",
                "A reason is required",
                "agents enter readings phoned in by the customer, with the reason",
            )
        source = ReadingSource.PHONED_IN
    else:
        source = ReadingSource.MANUAL
    cmd = handlers.SubmitReading(
        device_id=device_id,
        counters=dict(body.counters),
        submitted_by=principal.user_id,
        submitted_at=datetime.now(UTC),
        source=source,
        reason=body.reason if principal.is_agent else None,
    )
    try:
        outcome = await handlers.submit_reading(
            cmd, ports.directory, ports.bus, ports.decisions, ports.decision_timeout
        )
    except handlers.DecisionTimeout as exc:
        raise Problem(
            503,
            "decision-pending",
            "The reading is not decided yet",
            "look for it in the history before submitting again",
            headers={"Retry-After": "2"},
            command_id=exc.command_id,
        ) from exc
    if not outcome.accepted or outcome.reading is None:
        raise Problem(
            422,
            "reading-refused",
            "The reading was refused",
            "; ".join(r["detail"] for r in outcome.refusals),
            refusals=outcome.refusals,
        )
    r = outcome.reading
    return ReadingPublic(
        reading_id=r["_id"],
        device_id=r["device_id"],
        source=r["source"],
        counters=r["counters"],
        read_at=r["read_at"],
        submitted_by=r.get("submitted_by"),
        reason=r.get("reason"),
    )


@router.get("/meters/devices/{device_id}/readings")
async def reading_history(
    device_id: str,
    principal: CurrentPrincipal,
    request: Request,
    source: ReadingSource | None = None,
    since: Annotated[AwareDatetime | None, Query(description="From this time (inclusive).")] = None,
    until: Annotated[AwareDatetime | None, Query(description="Before this time.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> ReadingPage:
    """Accepted readings, manual and automatic, newest first."""
    ports = _ports(request)
    _device_in_scope(ports, principal, device_id)
    readings = await ports.history.page(
        device_id, source=source, since=since, until=until, limit=limit, offset=offset
    )
    return ReadingPage(items=[public(r) for r in readings], limit=limit, offset=offset)


@router.get("/meters/devices/{device_id}/billing")
async def billing(
    device_id: str,
    principal: CurrentPrincipal,
    request: Request,
    months: Annotated[int, Query(ge=1, le=36)] = 12,
) -> dict[str, Any]:
    """The last accepted value of each counter per month (the organisation's time zone)."""
    ports = _ports(request)
    device = _device_in_scope(ports, principal, device_id)
    since = datetime.now(UTC) - timedelta(days=31 * months)
    readings = await ports.history.since(device_id, since)
    snapshot = billing_snapshot(readings, device.timezone)[:months]
    return {"device_id": device_id, "timezone": device.timezone, "months": snapshot}
