"""One handler per command: plain async functions over the ports (no Kafka, Mongo or HTTP).

Each handler loads what it needs through the store port, applies the domain rules of
``core/``, and writes the result together with the events it implies (the store puts them in
the document's outbox, so nothing is written without being published or the reverse).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.tickets.core import kb, routing, sla
from services.tickets.core import status as machine
from services.tickets.core.model import (
    Article,
    CalendarSpec,
    DeviceInfo,
    Offer,
    PauseModel,
    SlaState,
    Ticket,
)
from services.tickets.core.routing import TechnicianProfile
from services.tickets.ports import Outgoing, TicketStore
from shared.auth import Principal, can_manage_device, can_see_device
from shared.contracts import (
    DEVICE_COMMANDS,
    TICKET_EVENTS,
    TICKET_TIMERS,
    DeviceRemovalRequested,
    Role,
    TicketAssigned,
    TicketCategory,
    TicketCreated,
    TicketStatus,
    TicketStatusChanged,
    TicketTimersSet,
)

S = TicketStatus


class NotFound(Exception):
    pass


class Conflict(Exception):
    """The ticket's state does not allow it, or it changed meanwhile (409)."""


class Refused(Exception):
    """The caller may not do this (403)."""


class Invalid(Exception):
    """The request names something unknown or unusable (422)."""


@dataclass(frozen=True)
class Policy:
    """The tunable rules (from settings)."""

    warning_share: float = 0.8
    hour_seconds: float = 3600.0  # how long one contract hour lasts (scaled down in tests)
    offer_seconds: float = 900.0  # a technician's time to accept or decline
    default_calendar: CalendarSpec = field(default_factory=CalendarSpec)


@dataclass
class Deps:
    store: TicketStore
    policy: Policy
    now: Callable[[], datetime]
    partition_of: Callable[[str], int]


# --- shared steps ---------------------------------------------------------------------------


def refresh_sla(ticket: Ticket, policy: Policy) -> None:
    """Recompute warning, due and deadline from the ticket's facts."""
    state = ticket.sla
    calendar = state.calendar.to_calendar()
    budget = timedelta(seconds=state.budget_seconds)
    pauses = state.pause_list()
    state.deadline = sla.deadline(calendar, state.clock_starts_at, budget, pauses)
    times = sla.timers(
        calendar,
        state.clock_starts_at,
        budget,
        pauses,
        warning_share=policy.warning_share,
        answered=state.responded_at is not None or not ticket.is_open,
    )
    state.warn_at, state.due_at = times.warn_at, times.due_at


def timers_event(ticket: Ticket) -> Outgoing:
    offer = ticket.offer
    pending = offer is not None and not offer.accepted and offer.expires_at is not None
    return (
        TICKET_TIMERS,
        ticket.ticket_id,
        TicketTimersSet(
            ticket_id=ticket.ticket_id,
            org_id=ticket.org_id,
            device_id=ticket.device_id,
            version=ticket.revision,
            warn_at=ticket.sla.warn_at,
            due_at=ticket.sla.due_at,
            offer_id=offer.offer_id if pending and offer else None,
            offer_expires_at=offer.expires_at if pending and offer else None,
        ),
    )


def _timer_key(ticket: Ticket) -> tuple[object, ...]:
    offer = ticket.offer
    return (
        ticket.sla.warn_at,
        ticket.sla.due_at,
        offer.offer_id if offer else None,
        offer.expires_at if offer and not offer.accepted else None,
    )


async def resolve_calendar(store: TicketStore, policy: Policy, device: DeviceInfo) -> CalendarSpec:
    """The device contract's calendar, else the organisation's, else the default."""
    for calendar_id in (device.calendar_id, device.org_id):
        if calendar_id:
            spec = await store.calendar(calendar_id)
            if spec is not None:
                return spec
    return policy.default_calendar


async def route(
    ticket: Ticket, deps: Deps, now: datetime, why: str, device: DeviceInfo | None = None
) -> list[Outgoing]:
    """Offer the ticket to the best matching technician, or leave it unassigned; say why."""
    if device is None and ticket.device_id:
        device = await deps.store.device(ticket.device_id)
    place = routing.Place(
        postal_code=device.postal_code if device else "",
        region=device.region if device else "",
        model_family=device.model_family if device else "",
    )
    techs = [t for t in await deps.store.technicians() if t.active]
    loads = await deps.store.open_loads([t.user_id for t in techs])
    decision = routing.choose(place, techs, loads, excluded=ticket.excluded)
    if decision.technician_id is None:
        ticket.assignee, ticket.offer = None, None
        if ticket.status is S.ASSIGNED:
            ticket.status = S.NEW
        ticket.note(now, None, "routing", f"{why}: not routed: {decision.reason}")
        return []
    ticket.assignee = decision.technician_id
    ticket.offer = Offer(
        offer_id=uuid.uuid4().hex,
        technician_id=decision.technician_id,
        expires_at=now + timedelta(seconds=deps.policy.offer_seconds),
    )
    if ticket.status is S.NEW:
        ticket.status = S.ASSIGNED
    reason = f"{why}: {decision.reason}"
    ticket.note(now, None, "routing", reason, technician_id=decision.technician_id)
    return [_assigned(ticket, decision.technician_id, reason)]


def _assigned(ticket: Ticket, technician_id: str, reason: str) -> Outgoing:
    return (
        TICKET_EVENTS,
        ticket.ticket_id,
        TicketAssigned(
            ticket_id=ticket.ticket_id,
            org_id=ticket.org_id,
            device_id=ticket.device_id,
            technician_id=technician_id,
            reason=reason[:500],
        ),
    )


async def _save(
    ticket: Ticket, deps: Deps, before: tuple[object, ...], events: list[Outgoing]
) -> None:
    refresh_sla(ticket, deps.policy)
    expected = ticket.revision
    ticket.revision += 1
    if _timer_key(ticket) != before:
        events.append(timers_event(ticket))
    if not await deps.store.save_ticket(ticket, expected, events):
        raise Conflict("the ticket changed meanwhile; read it again and retry")


async def _load(deps: Deps, ticket_id: str) -> Ticket:
    ticket = await deps.store.get_ticket(ticket_id)
    if ticket is None:
        raise NotFound(ticket_id)
    return ticket


# --- visibility -----------------------------------------------------------------------------


def can_view(principal: Principal, ticket: Ticket) -> bool:
    if principal.is_agent:
        return True
    if principal.role is Role.TECHNICIAN:
        offered = ticket.offer.technician_id if ticket.offer else None
        return principal.user_id in (ticket.assignee, offered)
    if principal.role in (None, Role.KB_VIEWER):
        return False
    if ticket.device_id is None:
        return principal.role is Role.ADMIN and principal.org_id == ticket.org_id
    return can_see_device(principal, ticket.org_id, ticket.device_id)


def actor_of(principal: Principal, ticket: Ticket) -> machine.Actor:
    if principal.is_agent:
        return machine.Actor.AGENT
    if principal.role is Role.TECHNICIAN and principal.user_id == ticket.assignee:
        return machine.Actor.ASSIGNEE
    if ticket.device_id and can_manage_device(principal, ticket.org_id, ticket.device_id):
        return machine.Actor.CUSTOMER
    return machine.Actor.OTHER


# --- commands -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateTicket:
    device_id: str
    category: TicketCategory
    description: str
    contact_name: str = ""
    contact_phone: str = ""
    created_by: str | None = None
    ticket_id: str | None = None
    fault_key: str | None = None
    error_codes: tuple[str, ...] = ()


async def create_ticket(cmd: CreateTicket, deps: Deps, device: DeviceInfo) -> Ticket | None:
    """File a ticket for ``device`` (access already checked); None if its id exists already."""
    now = deps.now()
    spec = await resolve_calendar(deps.store, deps.policy, device)
    calendar = spec.to_calendar()
    starts = calendar.next_opening(now)
    ticket_id = cmd.ticket_id or uuid.uuid4().hex
    ticket = Ticket(
        ticket_id=ticket_id,
        org_id=device.org_id,
        device_id=device.device_id,
        category=cmd.category,
        description=cmd.description,
        contact_name=cmd.contact_name,
        contact_phone=cmd.contact_phone,
        created_by=cmd.created_by,
        created_at=now,
        sla=SlaState(
            calendar=spec,
            budget_seconds=device.sla_response_hours * deps.policy.hour_seconds,
            clock_starts_at=starts,
            out_of_hours=starts > now,
        ),
        partition=deps.partition_of(ticket_id),
        fault_key=cmd.fault_key,
        error_codes=list(cmd.error_codes),
    )
    when = "now" if starts <= now else f"at the next opening, {starts.isoformat()}"
    ticket.note(
        now,
        cmd.created_by,
        "created",
        f"{cmd.category} ticket filed; the SLA clock starts {when}",
        clock_starts_at=starts.isoformat(),
    )
    events = await route(ticket, deps, now, "new ticket", device)
    refresh_sla(ticket, deps.policy)
    assert ticket.sla.due_at is not None
    created = (
        TICKET_EVENTS,
        ticket_id,
        TicketCreated(
            ticket_id=ticket_id,
            org_id=ticket.org_id,
            device_id=ticket.device_id,
            created_by=cmd.created_by,
            category=cmd.category,
            status=S.NEW,
            clock_starts_at=starts,
            due_at=ticket.sla.due_at,
            out_of_hours=ticket.sla.out_of_hours,
        ),
    )
    if not await deps.store.insert_ticket(ticket, [created, *events, timers_event(ticket)]):
        return None
    return ticket


@dataclass(frozen=True)
class ChangeStatus:
    ticket_id: str
    target: TicketStatus
    note: str = ""


async def change_status(cmd: ChangeStatus, principal: Principal, deps: Deps) -> Ticket:
    ticket = await _load(deps, cmd.ticket_id)
    if not can_view(principal, ticket):
        raise NotFound(cmd.ticket_id)
    actor = actor_of(principal, ticket)
    try:
        machine.check(ticket.status, cmd.target, actor, ticket.resume_to)
    except machine.ActorRefused as exc:
        raise Refused(str(exc)) from exc
    except machine.TransitionRefused as exc:
        raise Conflict(str(exc)) from exc
    removal = ticket.category is TicketCategory.DEVICE_REMOVAL and cmd.target is S.RESOLVED
    if removal and actor is not machine.Actor.AGENT:
        # Resolving it removes the device: only the service centre's agents remove devices.
        raise Refused("only an agent resolves a device-removal ticket (it removes the device)")
    now = deps.now()
    before = _timer_key(ticket)
    events = _move(ticket, cmd.target, principal, actor, cmd.note, now)
    await _save(ticket, deps, before, events)
    if not ticket.is_open and ticket.fault_key:
        await deps.store.release_fault(ticket.fault_key, ticket.ticket_id)
    return ticket


def _move(
    ticket: Ticket,
    target: TicketStatus,
    principal: Principal,
    actor: machine.Actor,
    note: str,
    now: datetime,
) -> list[Outgoing]:
    """Apply an allowed status change (already checked) to ``ticket``; the events it implies."""
    removal = ticket.category is TicketCategory.DEVICE_REMOVAL and target is S.RESOLVED
    old = ticket.status
    if target is S.WAITING_FOR_CUSTOMER:
        ticket.resume_to = old
        ticket.sla.pauses.append(PauseModel(start=now))
    if old is S.WAITING_FOR_CUSTOMER:
        ticket.resume_to = None
        if ticket.sla.pauses and ticket.sla.pauses[-1].end is None:
            ticket.sla.pauses[-1].end = now
    if target in machine.RESPONDED and ticket.sla.responded_at is None:
        ticket.sla.responded_at = now
    ticket.status = target
    offer = ticket.offer
    if offer is not None and not offer.accepted:
        if not ticket.is_open:
            ticket.offer = None
        elif actor is machine.Actor.ASSIGNEE or target in machine.RESPONDED:
            # Working on it answers the offer: it must not lapse and re-route the ticket.
            ticket.offer = offer.model_copy(update={"accepted": True, "expires_at": None})
    ticket.note(now, principal.user_id, "status", note[:1000], old=str(old), new=str(target))
    events: list[Outgoing] = [
        (
            TICKET_EVENTS,
            ticket.ticket_id,
            TicketStatusChanged(
                ticket_id=ticket.ticket_id,
                org_id=ticket.org_id,
                device_id=ticket.device_id,
                created_by=ticket.created_by,
                old_status=old,
                new_status=target,
                changed_by=principal.user_id,
            ),
        )
    ]
    if removal and ticket.device_id:
        # First in the outbox: whoever sees the resolution on tickets.events may rely on it.
        events.insert(0, _removal_command(ticket, principal.user_id, note))
        ticket.note(
            now,
            principal.user_id,
            "removal",
            "the devices service was asked to remove the device",
            device_id=ticket.device_id,
        )
    return events


def _removal_command(ticket: Ticket, agent_id: str, note: str) -> Outgoing:
    """The command that removes the ticket's device: in the ticket's outbox, like its events,
    so it reaches ``devices.commands`` exactly when the resolution is stored."""
    assert ticket.device_id is not None
    reason = f"device-removal ticket {ticket.ticket_id} resolved"
    if note.strip():
        reason += f": {note.strip()}"
    return (
        DEVICE_COMMANDS,
        ticket.device_id,
        DeviceRemovalRequested(
            device_id=ticket.device_id,
            org_id=ticket.org_id,
            ticket_id=ticket.ticket_id,
            requested_by=agent_id,
            reason=reason[:1000],
        ),
    )


async def add_comment(ticket_id: str, text: str, principal: Principal, deps: Deps) -> Ticket:
    ticket = await _load(deps, ticket_id)
    if not can_view(principal, ticket):
        raise NotFound(ticket_id)
    if ticket.status is S.CLOSED:
        raise Conflict("a closed ticket takes no more comments")
    now = deps.now()
    before = _timer_key(ticket)
    ticket.note(now, principal.user_id, "comment", text)
    events: list[Outgoing] = []
    actor = actor_of(principal, ticket)
    if ticket.status is S.WAITING_FOR_CUSTOMER and actor is machine.Actor.CUSTOMER:
        # The customer's answer: the ticket resumes where it was (in progress, typically)
        # and its SLA clock runs again.
        target = ticket.resume_to or S.IN_PROGRESS
        events = _move(ticket, target, principal, actor, "the customer answered", now)
    await _save(ticket, deps, before, events)
    return ticket


async def with_escalations(tickets: list[Ticket], deps: Deps) -> list[Ticket]:
    """The tickets as shown: their SLA warnings and breaches on the timeline (by the system,
    when they fired). Read from the once-only firing records, never written into the ticket,
    so the timer owner never races a ticket's writers."""
    fired = await deps.store.escalations([t.ticket_id for t in tickets])
    shown = []
    for ticket in tickets:
        extra = fired.get(ticket.ticket_id)
        if extra:
            ticket = ticket.model_copy(
                update={"timeline": sorted([*ticket.timeline, *extra], key=lambda e: e.at)}
            )
        shown.append(ticket)
    return shown


async def accept_offer(ticket_id: str, principal: Principal, deps: Deps) -> Ticket:
    ticket = await _load(deps, ticket_id)
    offer = ticket.offer
    if offer is None or offer.technician_id != principal.user_id:
        if can_view(principal, ticket):
            raise Conflict("the ticket is not offered to you")
        raise NotFound(ticket_id)
    if offer.accepted:
        raise Conflict("you accepted this ticket already")
    before = _timer_key(ticket)
    ticket.offer = offer.model_copy(update={"accepted": True, "expires_at": None})
    ticket.note(deps.now(), principal.user_id, "assignment", "accepted by the technician")
    await _save(ticket, deps, before, [])
    return ticket


async def decline_offer(ticket_id: str, reason: str, principal: Principal, deps: Deps) -> Ticket:
    ticket = await _load(deps, ticket_id)
    offer = ticket.offer
    if offer is None or offer.technician_id != principal.user_id:
        if can_view(principal, ticket):
            raise Conflict("the ticket is not offered to you")
        raise NotFound(ticket_id)
    if offer.accepted:
        raise Conflict("an accepted ticket is handed back by an agent")
    now = deps.now()
    before = _timer_key(ticket)
    ticket.excluded.append(principal.user_id)
    ticket.note(now, principal.user_id, "assignment", f"declined: {reason[:300]}".rstrip(": "))
    events = await route(ticket, deps, now, "declined by the previous technician")
    await _save(ticket, deps, before, events)
    return ticket


async def expire_offer(ticket_id: str, offer_id: str, deps: Deps) -> bool:
    """An offer lapsed without an answer: route to the next technician. False if moot."""
    ticket = await deps.store.get_ticket(ticket_id)
    offer = ticket.offer if ticket else None
    now = deps.now()
    if (
        ticket is None
        or offer is None
        or offer.offer_id != offer_id
        or offer.accepted
        or offer.expires_at is None
        or offer.expires_at > now
    ):
        return False
    before = _timer_key(ticket)
    ticket.excluded.append(offer.technician_id)
    waited = int(deps.policy.offer_seconds)
    ticket.note(
        now, None, "assignment", f"no answer within {waited} s", technician_id=offer.technician_id
    )
    events = await route(ticket, deps, now, f"no answer within {waited} s")
    await _save(ticket, deps, before, events)
    return True


async def assign_by_agent(
    ticket_id: str, technician_id: str, principal: Principal, deps: Deps
) -> Ticket:
    ticket = await _load(deps, ticket_id)
    if not ticket.is_open:
        raise Conflict("a resolved or closed ticket is not assigned")
    if await deps.store.user_role(technician_id) is not Role.TECHNICIAN:
        raise Invalid("no technician has this id")
    now = deps.now()
    before = _timer_key(ticket)
    ticket.assignee = technician_id
    ticket.offer = Offer(offer_id=uuid.uuid4().hex, technician_id=technician_id, accepted=True)
    if ticket.status is S.NEW:
        ticket.status = S.ASSIGNED
    reason = "assigned by an agent (override)"
    ticket.note(now, principal.user_id, "routing", reason, technician_id=technician_id)
    await _save(ticket, deps, before, [_assigned(ticket, technician_id, reason)])
    return ticket


# --- fault tickets --------------------------------------------------------------------------


def fault_key(device_id: str, error_codes: list[str]) -> str:
    return device_id + ":" + ",".join(sorted({c.strip() for c in error_codes if c.strip()}))


async def open_fault_ticket(
    device: DeviceInfo, error_codes: list[str], deps: Deps
) -> Ticket | None:
    """One open fault ticket per device and error set: the key is claimed by a unique insert.

    The claim names the ticket id first, so a crash between claim and ticket is repaired by the
    redelivered event (it finds the claim and creates the very ticket it names).
    """
    codes = sorted({c.strip() for c in error_codes if c.strip()})
    if not codes:
        return None
    key = fault_key(device.device_id, codes)
    owner = await deps.store.claim_fault(key, uuid.uuid4().hex)
    if await deps.store.get_ticket(owner) is not None:
        return None
    cmd = CreateTicket(
        device_id=device.device_id,
        category=TicketCategory.FAULT,
        description="eMaintenance reported error codes: " + ", ".join(codes),
        ticket_id=owner,
        fault_key=key,
        error_codes=tuple(codes),
    )
    return await create_ticket(cmd, deps, device)


# --- calendars, technicians, articles -------------------------------------------------------


async def put_technician(profile: TechnicianProfile, deps: Deps) -> None:
    if await deps.store.user_role(profile.user_id) is not Role.TECHNICIAN:
        raise Invalid("no technician has this id (staff users with the technician role)")
    await deps.store.put_technician(profile)


async def add_article(
    title: str, body: str, families: list[str], tags: list[str], by: str, deps: Deps
) -> Article:
    article = Article(
        article_id=uuid.uuid4().hex,
        title=title,
        body=body,
        model_families=sorted({f.strip() for f in families if f.strip()}),
        tags=sorted({t.strip() for t in tags if t.strip()}),
        created_by=by,
        created_at=deps.now(),
    )
    await deps.store.insert_article(article, kb.index(title, tags, body))
    return article


async def search_articles(
    q: str, model_family: str | None, deps: Deps, limit: int = 20
) -> list[tuple[Article, float]]:
    words = kb.tokens(q)[: kb.MAX_QUERY_TOKENS]
    found = await deps.store.find_articles(words, model_family or None, 500)
    scored = [(a, kb.score(words, t) if words else 0.0) for a, t in found]
    if words:
        scored = [(a, s) for a, s in scored if s > 0]
    scored.sort(key=lambda pair: (-pair[1], -pair[0].created_at.timestamp(), pair[0].article_id))
    return scored[:limit]
