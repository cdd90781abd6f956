"""HTTP routes of the tickets service: validate, check scope, call one handler, answer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from services.tickets import handlers
from services.tickets.core import sla
from services.tickets.core.model import Article, CalendarSpec, Text, Ticket, TimelineEntry
from services.tickets.core.routing import TechnicianProfile
from services.tickets.ports import TicketFilter
from shared.auth import CurrentPrincipal, Principal, can_manage_device, forbidden, require_role
from shared.contracts import Role, TicketCategory, TicketStatus
from shared.http import Problem

router = APIRouter(tags=["tickets"])
T = TypeVar("T")

Description = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=5000)
]
CUSTOMER_TICKET_ROLES = (Role.ADMIN, Role.DEVICE_MANAGER, Role.DEVICE_STOCK_MANAGER)


# --- request and response models ------------------------------------------------------------


class TicketCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    category: TicketCategory
    description: Description
    contact_name: Text = ""
    contact_phone: Annotated[str, StringConstraints(strip_whitespace=True, max_length=40)] = ""


class StatusChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: TicketStatus
    note: Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000)] = ""


class CommentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Description


class Decline(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=300)] = ""


class Assignment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    technician_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class TechnicianUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    postal_prefixes: list[Annotated[str, StringConstraints(max_length=16)]] = Field(
        default_factory=list, max_length=200, description="Postal-code prefixes served."
    )
    regions: list[Text] = Field(default_factory=list, max_length=100, description="Regions.")
    skills: list[Text] = Field(default_factory=list, max_length=100, description="Model families.")
    capacity: int = Field(5, ge=0, le=1000, description="Most open tickets at a time.")
    active: bool = True


class TechnicianPublic(TechnicianUpdate):
    user_id: str


class ArticleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    body: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20000)]
    model_families: list[Text] = Field(default_factory=list, max_length=50)
    tags: list[Text] = Field(default_factory=list, max_length=50)


class ArticlePublic(BaseModel):
    article_id: str
    title: str
    body: str
    model_families: list[str]
    tags: list[str]
    created_at: AwareDatetime
    score: float | None = None


class SlaPublic(BaseModel):
    """The SLA as the timeline implies it."""

    timezone: str
    response_hours: float
    clock_starts_at: datetime = Field(description="When the clock started (or will start).")
    out_of_hours: bool = Field(description="Filed outside business hours.")
    paused: bool = Field(description="Waiting for the customer now.")
    paused_seconds: float = Field(description="Wall-clock time spent waiting for the customer.")
    paused_business_seconds: float = Field(description="Business time the pauses added.")
    warn_at: datetime | None = Field(description="When the warning fires (null: not running).")
    due_at: datetime | None = Field(description="Response deadline (null while paused).")
    responded_at: datetime | None
    breached: bool


class TicketPublic(BaseModel):
    ticket_id: str
    org_id: str
    device_id: str | None
    category: TicketCategory
    description: str
    contact_name: str
    contact_phone: str
    created_by: str | None
    created_at: datetime
    status: TicketStatus
    assignee: str | None
    offer_pending: bool
    error_codes: list[str]
    sla: SlaPublic
    timeline: list[TimelineEntry]
    handled_from: datetime = Field(description="When the service centre will handle it.")


def sla_public(ticket: Ticket, policy: handlers.Policy, now: datetime) -> SlaPublic:
    state = ticket.sla
    calendar = state.calendar.to_calendar()
    pauses = state.pause_list()
    answered = state.responded_at
    breached = bool(
        state.deadline
        and ((answered and answered > state.deadline) or (not answered and now > state.deadline))
    )
    return SlaPublic(
        timezone=state.calendar.timezone,
        response_hours=state.budget_seconds / policy.hour_seconds,
        clock_starts_at=state.clock_starts_at,
        out_of_hours=state.out_of_hours,
        paused=bool(pauses and pauses[-1].end is None),
        paused_seconds=sla.paused_total(pauses, now).total_seconds(),
        paused_business_seconds=sla.paused_business(calendar, pauses, now).total_seconds(),
        warn_at=state.warn_at,
        due_at=state.deadline,
        responded_at=answered,
        breached=breached,
    )


def public(ticket: Ticket, deps: handlers.Deps) -> TicketPublic:
    offer = ticket.offer
    return TicketPublic(
        **ticket.model_dump(
            include={
                "ticket_id",
                "org_id",
                "device_id",
                "category",
                "description",
                "contact_name",
                "contact_phone",
                "created_by",
                "created_at",
                "status",
                "assignee",
                "error_codes",
            }
        ),
        offer_pending=bool(offer and not offer.accepted),
        sla=sla_public(ticket, deps.policy, deps.now()),
        timeline=ticket.timeline,
        handled_from=ticket.sla.clock_starts_at,
    )


# --- helpers --------------------------------------------------------------------------------


def _deps(request: Request) -> handlers.Deps:
    deps: handlers.Deps = request.app.state.deps
    return deps


def _not_found() -> Problem:
    return Problem(404, "ticket-not-found", "No such ticket", "no ticket with this id is visible")


@asynccontextmanager
async def _answers(request: Request) -> AsyncIterator[None]:
    """Domain refusals as problem details; a write nudges the outbox relay."""
    try:
        yield
    except handlers.NotFound as exc:
        raise _not_found() from exc
    except handlers.Refused as exc:
        raise forbidden(str(exc)) from exc
    except handlers.Conflict as exc:
        raise Problem(409, "ticket-conflict", "Not possible now", str(exc)) from exc
    except handlers.Invalid as exc:
        raise Problem(422, "invalid-reference", "Unknown reference", str(exc)) from exc
    request.app.state.runtime.relay.nudge()


def _no_kb_only(principal: Principal) -> None:
    if principal.role in (None, Role.KB_VIEWER):
        raise forbidden("your role does not allow this")


# --- tickets --------------------------------------------------------------------------------


@router.post("/tickets", status_code=status.HTTP_201_CREATED)
async def create_ticket(
    body: TicketCreate, principal: CurrentPrincipal, request: Request
) -> TicketPublic:
    if not principal.is_agent and principal.role not in CUSTOMER_TICKET_ROLES:
        raise forbidden("admins, device managers and agents file tickets")
    deps = _deps(request)
    device = await deps.store.device(body.device_id)
    if (
        device is None
        or device.removed
        or not can_manage_device(principal, device.org_id, device.device_id)
    ):
        raise Problem(404, "device-not-found", "No such device", "no device with this id is yours")
    cmd = handlers.CreateTicket(created_by=principal.user_id, **body.model_dump())
    async with _answers(request):
        ticket = await handlers.create_ticket(cmd, deps, device)
    assert ticket is not None
    return public(ticket, deps)


@router.get("/tickets")
async def list_tickets(
    principal: CurrentPrincipal,
    request: Request,
    org_id: Annotated[str | None, Query(max_length=64)] = None,
    device_id: Annotated[str | None, Query(max_length=64)] = None,
    status_: Annotated[TicketStatus | None, Query(alias="status")] = None,
    breach: bool | None = None,
    assignee: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[TicketPublic]:
    _no_kb_only(principal)
    deps = _deps(request)
    flt = TicketFilter(
        now=deps.now(), org_id=org_id, device_id=device_id, status=status_, breach=breach
    )
    if principal.is_agent:
        flt = replace(flt, assignee=assignee)
    elif principal.role is Role.TECHNICIAN:
        flt = replace(flt, assignee=principal.user_id)
    else:
        if org_id and org_id != principal.org_id:
            raise forbidden("this organisation is not yours")
        devices = None if principal.role is Role.ADMIN else principal.device_ids
        flt = replace(flt, org_id=principal.org_id, device_ids=devices)
    found = await deps.store.list_tickets(flt, limit)
    tickets = await handlers.with_escalations(
        [t for t in found if handlers.can_view(principal, t)], deps
    )
    return [public(t, deps) for t in tickets]


# Paths with a fixed second segment come before /tickets/{ticket_id}.


@router.get("/tickets/technicians")
async def list_technicians(principal: CurrentPrincipal, request: Request) -> list[TechnicianPublic]:
    require_role(principal, Role.AGENT)
    techs = await _deps(request).store.technicians()
    return [_tech_public(t) for t in techs]


def _tech_public(t: TechnicianProfile) -> TechnicianPublic:
    return TechnicianPublic(
        user_id=t.user_id,
        postal_prefixes=list(t.postal_prefixes),
        regions=list(t.regions),
        skills=list(t.skills),
        capacity=t.capacity,
        active=t.active,
    )


@router.put("/tickets/technicians/{user_id}")
async def put_technician(
    user_id: str, body: TechnicianUpdate, principal: CurrentPrincipal, request: Request
) -> TechnicianPublic:
    require_role(principal, Role.AGENT)
    profile = TechnicianProfile(
        user_id=user_id,
        postal_prefixes=tuple(p.strip() for p in body.postal_prefixes if p.strip()),
        regions=tuple(body.regions),
        skills=tuple(body.skills),
        capacity=body.capacity,
        active=body.active,
    )
    async with _answers(request):
        await handlers.put_technician(profile, _deps(request))
    return _tech_public(profile)


@router.get("/tickets/calendars/{calendar_id}")
async def get_calendar(
    calendar_id: str, principal: CurrentPrincipal, request: Request
) -> CalendarSpec:
    require_role(principal, Role.AGENT)
    deps = _deps(request)
    return await deps.store.calendar(calendar_id) or deps.policy.default_calendar


@router.put("/tickets/calendars/{calendar_id}")
async def put_calendar(
    calendar_id: Annotated[str, StringConstraints(max_length=64)],
    body: CalendarSpec,
    principal: CurrentPrincipal,
    request: Request,
) -> CalendarSpec:
    require_role(principal, Role.AGENT)
    try:
        calendar = body.to_calendar()
        calendar.next_opening(_deps(request).now())
    except (ValueError, NotImplementedError, KeyError) as exc:
        raise Problem(422, "invalid-calendar", "The calendar is not usable", str(exc)) from exc
    await _deps(request).store.put_calendar(calendar_id, body)
    return body


@router.get("/tickets/kb/articles")
async def search_articles(
    principal: CurrentPrincipal,
    request: Request,
    q: Annotated[str, Query(max_length=200)] = "",
    model: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[ArticlePublic]:
    if principal.role is None:
        raise forbidden("your role does not allow this")
    found = await handlers.search_articles(q, model, _deps(request), limit)
    return [_article_public(a, s if q else None) for a, s in found]


@router.post("/tickets/kb/articles", status_code=status.HTTP_201_CREATED)
async def add_article(
    body: ArticleCreate, principal: CurrentPrincipal, request: Request
) -> ArticlePublic:
    require_role(principal, Role.AGENT)
    article = await handlers.add_article(
        body.title, body.body, body.model_families, body.tags, principal.user_id, _deps(request)
    )
    return _article_public(article, None)


def _article_public(a: Article, score: float | None) -> ArticlePublic:
    return ArticlePublic(
        **a.model_dump(
            include={"article_id", "title", "body", "model_families", "tags", "created_at"}
        ),
        score=score,
    )


@router.get("/tickets/{ticket_id}")
async def get_ticket(ticket_id: str, principal: CurrentPrincipal, request: Request) -> TicketPublic:
    _no_kb_only(principal)
    deps = _deps(request)
    ticket = await deps.store.get_ticket(ticket_id)
    if ticket is None or not handlers.can_view(principal, ticket):
        raise _not_found()
    (shown,) = await handlers.with_escalations([ticket], deps)
    return public(shown, deps)


async def _run(
    request: Request, principal: Principal, call: Callable[[], Coroutine[Any, Any, Ticket]]
) -> TicketPublic:
    _no_kb_only(principal)
    async with _answers(request):
        ticket = await call()
    (shown,) = await handlers.with_escalations([ticket], _deps(request))
    return public(shown, _deps(request))


@router.post("/tickets/{ticket_id}/status")
async def change_status(
    ticket_id: str, body: StatusChange, principal: CurrentPrincipal, request: Request
) -> TicketPublic:
    cmd = handlers.ChangeStatus(ticket_id, body.status, body.note)
    return await _run(
        request, principal, lambda: handlers.change_status(cmd, principal, _deps(request))
    )


@router.post("/tickets/{ticket_id}/comments", status_code=status.HTTP_201_CREATED)
async def add_comment(
    ticket_id: str, body: CommentCreate, principal: CurrentPrincipal, request: Request
) -> TicketPublic:
    return await _run(
        request,
        principal,
        lambda: handlers.add_comment(ticket_id, body.text, principal, _deps(request)),
    )


@router.post("/tickets/{ticket_id}/accept")
async def accept(ticket_id: str, principal: CurrentPrincipal, request: Request) -> TicketPublic:
    require_role(principal, Role.TECHNICIAN)
    return await _run(
        request, principal, lambda: handlers.accept_offer(ticket_id, principal, _deps(request))
    )


@router.post("/tickets/{ticket_id}/decline")
async def decline(
    ticket_id: str, principal: CurrentPrincipal, request: Request, body: Decline | None = None
) -> TicketPublic:
    require_role(principal, Role.TECHNICIAN)
    reason = body.reason if body else ""
    return await _run(
        request,
        principal,
        lambda: handlers.decline_offer(ticket_id, reason, principal, _deps(request)),
    )


@router.post("/tickets/{ticket_id}/assign")
async def assign(
    ticket_id: str, body: Assignment, principal: CurrentPrincipal, request: Request
) -> TicketPublic:
    require_role(principal, Role.AGENT)
    return await _run(
        request,
        principal,
        lambda: handlers.assign_by_agent(ticket_id, body.technician_id, principal, _deps(request)),
    )
