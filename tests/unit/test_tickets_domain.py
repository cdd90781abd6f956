"""Tickets domain on fakes: status machine, SLA clock on the ticket, routing, faults, KB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.tickets import handlers
from services.tickets.core import routing
from services.tickets.core import status as machine
from services.tickets.core.kb import tokens
from services.tickets.core.model import CalendarSpec, DeviceInfo, TimelineEntry
from services.tickets.core.routing import Place, TechnicianProfile
from services.tickets.core.timers import TicketTimers, TimerHeap, TimerKind
from shared.auth import Principal
from shared.contracts import (
    DEVICE_COMMANDS,
    DeviceRemovalRequested,
    Role,
    SlaKind,
    TicketAssigned,
    TicketCategory,
    TicketCreated,
    TicketStatus,
    TicketStatusChanged,
    TicketTimersSet,
)
from tests.unit.tickets_fakes import Clock, FakeStore, deps

S = TicketStatus
A = machine.Actor
HEL = ZoneInfo("Europe/Helsinki")


def hel(*args: int) -> datetime:
    return datetime(*args, tzinfo=HEL).astimezone(UTC)  # type: ignore[misc]


# --- status machine -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "target", "actor", "resume", "outcome"),
    [
        (S.NEW, S.IN_PROGRESS, A.AGENT, None, None),
        (S.NEW, S.ASSIGNED, A.AGENT, None, machine.TransitionRefused),
        (S.ASSIGNED, S.IN_PROGRESS, A.ASSIGNEE, None, None),
        (S.ASSIGNED, S.CLOSED, A.ASSIGNEE, None, machine.TransitionRefused),
        (S.IN_PROGRESS, S.RESOLVED, A.ASSIGNEE, None, None),
        (S.IN_PROGRESS, S.CLOSED, A.AGENT, None, machine.TransitionRefused),
        (S.IN_PROGRESS, S.WAITING_FOR_CUSTOMER, A.CUSTOMER, None, machine.ActorRefused),
        (S.WAITING_FOR_CUSTOMER, S.IN_PROGRESS, A.CUSTOMER, S.IN_PROGRESS, None),
        (S.WAITING_FOR_CUSTOMER, S.ASSIGNED, A.CUSTOMER, S.IN_PROGRESS, machine.TransitionRefused),
        (S.WAITING_FOR_CUSTOMER, S.ASSIGNED, A.AGENT, S.ASSIGNED, None),
        (S.RESOLVED, S.CLOSED, A.CUSTOMER, None, None),
        (S.RESOLVED, S.IN_PROGRESS, A.CUSTOMER, None, None),
        (S.NEW, S.CLOSED, A.CUSTOMER, None, None),
        (S.NEW, S.RESOLVED, A.CUSTOMER, None, machine.ActorRefused),
        (S.CLOSED, S.IN_PROGRESS, A.AGENT, None, machine.TransitionRefused),
        (S.NEW, S.IN_PROGRESS, A.OTHER, None, machine.ActorRefused),
    ],
)
def test_status_machine(
    current: S, target: S, actor: machine.Actor, resume: S | None, outcome: type | None
) -> None:
    if outcome is None:
        machine.check(current, target, actor, resume)
    else:
        with pytest.raises(outcome):
            machine.check(current, target, actor, resume)


# --- routing ------------------------------------------------------------------------------

ANNA = TechnicianProfile("anna", postal_prefixes=("00",), skills=("bizhub",), capacity=2)
BERT = TechnicianProfile("bert", regions=("Uusimaa",), skills=("bizhub", "ecosys"), capacity=3)
CARL = TechnicianProfile("carl", postal_prefixes=("33",), skills=("bizhub",), capacity=5)
HELSINKI = Place(postal_code="00100", region="Uusimaa", model_family="bizhub")


def test_routing_least_load_among_matching() -> None:
    d = routing.choose(HELSINKI, [ANNA, BERT, CARL], {"anna": 1, "bert": 0})
    assert d.technician_id == "bert" and "least open load 0" in d.reason
    assert set(d.considered) == {"anna", "bert"}  # carl's area does not cover 00100


def test_routing_capacity_skill_and_exclusions() -> None:
    assert routing.choose(HELSINKI, [ANNA, BERT], {"anna": 0, "bert": 3}).technician_id == "anna"
    assert routing.choose(HELSINKI, [ANNA], {"anna": 2}).technician_id is None
    ecosys = Place(postal_code="00100", model_family="ecosys")
    assert routing.choose(ecosys, [ANNA, BERT], {}).technician_id is None  # bert: region missing
    assert routing.choose(HELSINKI, [ANNA, BERT], {}, excluded=["bert"]).technician_id == "anna"
    none = routing.choose(HELSINKI, [ANNA], {}, excluded=["anna"])
    assert none.technician_id is None and "excluded" in none.reason


# --- handlers on fakes --------------------------------------------------------------------

ADMIN = Principal("adm", "org1", Role.ADMIN)
AGENT = Principal("agt", None, Role.AGENT)
DEVICE = DeviceInfo(
    device_id="dev1",
    org_id="org1",
    model_family="bizhub",
    postal_code="00100",
    region="Uusimaa",
    sla_response_hours=4,
)


def _world(now: datetime, **policy: object) -> tuple[FakeStore, Clock, handlers.Deps]:
    store = FakeStore()
    store.devices["dev1"] = DEVICE
    clock = Clock(now)
    return store, clock, deps(store, clock, **policy)


async def _create(d: handlers.Deps) -> str:
    cmd = handlers.CreateTicket("dev1", TicketCategory.FAULT, "paper jam", created_by="adm")
    ticket = await handlers.create_ticket(cmd, d, DEVICE)
    assert ticket is not None
    return ticket.ticket_id


async def test_out_of_hours_ticket_says_when_it_will_be_handled() -> None:
    store, _, d = _world(hel(2026, 11, 27, 18))  # Friday evening
    tid = await _create(d)
    created = next(e for _, _, e in store.events if isinstance(e, TicketCreated))
    assert created.out_of_hours and created.clock_starts_at == hel(2026, 11, 30, 8)
    assert created.due_at == hel(2026, 11, 30, 12)
    assert store.tickets[tid].sla.warn_at == hel(2026, 11, 30, 11, 12)  # 80 % of 4 h


async def test_org_calendar_overrides_the_default() -> None:
    store, _, d = _world(hel(2026, 11, 28, 10))  # Saturday
    store.calendars["org1"] = CalendarSpec.model_validate(
        {"weekly": {"sat": [{"start": "09:00", "end": "12:00"}]}}
    )
    tid = await _create(d)
    t = store.tickets[tid]
    assert not t.sla.out_of_hours
    assert t.sla.due_at == hel(2026, 12, 5, 11)  # 2 h left on Saturday, 2 h on the next


async def test_waiting_pauses_and_resuming_moves_the_due() -> None:
    store, clock, d = _world(hel(2026, 11, 26, 8))  # Thursday 08:00, 4 h budget
    tid = await _create(d)
    assert store.tickets[tid].sla.due_at == hel(2026, 11, 26, 12)
    clock.now = hel(2026, 11, 26, 10)
    await handlers.change_status(
        handlers.ChangeStatus(tid, S.WAITING_FOR_CUSTOMER, "model?"), AGENT, d
    )
    t = store.tickets[tid]
    assert t.sla.due_at is None and t.sla.warn_at is None and t.resume_to is S.NEW
    timers = [e for _, _, e in store.events if isinstance(e, TicketTimersSet)]
    assert timers[-1].due_at is None
    clock.now = hel(2026, 11, 30, 9)  # Monday: the customer answers
    with pytest.raises(handlers.Conflict):  # resumes where it was, not elsewhere
        await handlers.change_status(handlers.ChangeStatus(tid, S.ASSIGNED), ADMIN, d)
    await handlers.change_status(handlers.ChangeStatus(tid, S.NEW), ADMIN, d)
    t = store.tickets[tid]
    assert t.sla.due_at == hel(2026, 11, 30, 11)  # 2 h used, 2 h left from Monday 09:00
    kinds = [(e.kind, e.data.get("new")) for e in t.timeline]
    assert kinds[-2:] == [("status", "waiting_for_customer"), ("status", "new")]


async def test_a_customer_comment_on_a_waiting_ticket_resumes_it() -> None:
    store, clock, d = _world(hel(2026, 11, 26, 8))  # Thursday 08:00, 4 h budget
    tid = await _create(d)
    clock.now = hel(2026, 11, 26, 9)
    await handlers.change_status(handlers.ChangeStatus(tid, S.IN_PROGRESS), AGENT, d)
    clock.now = hel(2026, 11, 26, 10)
    await handlers.change_status(handlers.ChangeStatus(tid, S.WAITING_FOR_CUSTOMER), AGENT, d)
    # The agent's own comment changes nothing; a stock manager is no customer actor.
    await handlers.add_comment(tid, "Any news?", AGENT, d)
    stock = Principal("s", "org1", Role.STOCK_MANAGER, frozenset({"dev1"}))
    await handlers.add_comment(tid, "Not mine to answer", stock, d)
    assert store.tickets[tid].status is S.WAITING_FOR_CUSTOMER
    clock.now = hel(2026, 11, 30, 9)  # Monday: the admin answers with a comment
    t = await handlers.add_comment(tid, "It is the C300i on floor 2", ADMIN, d)
    assert t.status is S.IN_PROGRESS and t.resume_to is None
    assert t.sla.pauses[-1].start == hel(2026, 11, 26, 10)
    assert t.sla.pauses[-1].end == clock.now  # the clock runs again
    assert t.sla.responded_at == hel(2026, 11, 26, 9)  # the agent's response stands
    assert [(e.kind, e.by) for e in t.timeline][-2:] == [("comment", "adm"), ("status", "adm")]
    changed = [e for _, _, e in store.events if isinstance(e, TicketStatusChanged)]
    assert (changed[-1].old_status, changed[-1].new_status) == (
        S.WAITING_FOR_CUSTOMER,
        S.IN_PROGRESS,
    )
    assert changed[-1].changed_by == "adm"
    # Waiting again from new (nobody had answered): the comment resumes it as new, the clock
    # runs again but the customer's comment is no response.
    other = await _create(d)
    await handlers.change_status(handlers.ChangeStatus(other, S.WAITING_FOR_CUSTOMER), AGENT, d)
    clock.now = hel(2026, 11, 30, 10)
    resumed = await handlers.add_comment(other, "Here you are", ADMIN, d)
    assert resumed.status is S.NEW and resumed.sla.responded_at is None
    assert resumed.sla.due_at is not None


async def test_escalations_are_shown_on_the_timeline_by_the_system() -> None:
    store, clock, d = _world(hel(2026, 11, 26, 8))
    tid = await _create(d)
    clock.now = hel(2026, 11, 26, 9)
    await handlers.add_comment(tid, "Later", ADMIN, d)
    warning = TimelineEntry(at=hel(2026, 11, 26, 8, 30), by=None, kind="sla", text="SLA warning")
    store.fired[tid] = [warning]
    (shown,) = await handlers.with_escalations([store.tickets[tid]], d)
    assert [e.kind for e in shown.timeline] == ["created", "routing", "sla", "comment"]
    assert shown.timeline[2].by is None
    assert "sla" not in [e.kind for e in store.tickets[tid].timeline]  # not stored


async def test_answer_stops_the_clock_and_resolving_frees_the_fault_key() -> None:
    store, clock, d = _world(hel(2026, 11, 26, 8))
    store.roles["anna"] = Role.TECHNICIAN
    store.techs["anna"] = ANNA
    ticket = await handlers.open_fault_ticket(DEVICE, ["E200", "C-1"], d)
    assert ticket is not None and ticket.assignee == "anna"
    assert await handlers.open_fault_ticket(DEVICE, ["C-1", "E200"], d) is None  # deduplicated
    anna = Principal("anna", None, Role.TECHNICIAN)
    await handlers.accept_offer(ticket.ticket_id, anna, d)
    clock.now = hel(2026, 11, 26, 9)
    await handlers.change_status(handlers.ChangeStatus(ticket.ticket_id, S.IN_PROGRESS), anna, d)
    t = store.tickets[ticket.ticket_id]
    assert t.sla.responded_at == clock.now and t.sla.due_at is None
    await handlers.change_status(handlers.ChangeStatus(ticket.ticket_id, S.RESOLVED), anna, d)
    assert store.faults == {}
    again = await handlers.open_fault_ticket(DEVICE, ["E200", "C-1"], d)
    assert again is not None and again.ticket_id != ticket.ticket_id


async def test_decline_and_lapse_route_to_the_next_with_reasons() -> None:
    store, clock, d = _world(hel(2026, 11, 26, 8), offer_seconds=600)
    for tech in (ANNA, BERT):
        store.roles[tech.user_id] = Role.TECHNICIAN
        store.techs[tech.user_id] = tech
    tid = await _create(d)
    first = store.tickets[tid].assignee
    assert first == "anna"  # both load 0: lowest id
    await handlers.decline_offer(tid, "on holiday", Principal("anna", None, Role.TECHNICIAN), d)
    t = store.tickets[tid]
    assert t.assignee == "bert" and t.offer is not None
    offer_id = t.offer.offer_id
    assert not await handlers.expire_offer(tid, offer_id, d)  # not yet due
    clock.now += timedelta(seconds=601)
    assert await handlers.expire_offer(tid, offer_id, d)
    t = store.tickets[tid]
    assert t.assignee is None and t.status is S.NEW
    reasons = [e.text for e in t.timeline if e.kind in ("routing", "assignment")]
    assert any("declined: on holiday" in r for r in reasons)
    assert any("no answer within 600 s" in r for r in reasons)
    assigned = [e for _, _, e in store.events if isinstance(e, TicketAssigned)]
    assert [a.technician_id for a in assigned] == ["anna", "bert"]
    await handlers.assign_by_agent(tid, "anna", AGENT, d)
    assert store.tickets[tid].assignee == "anna" and store.tickets[tid].status is S.ASSIGNED


async def test_working_on_an_offered_ticket_accepts_the_offer() -> None:
    store, clock, d = _world(hel(2026, 11, 26, 8), offer_seconds=60)
    store.roles["anna"], store.techs["anna"] = Role.TECHNICIAN, ANNA
    tid = await _create(d)
    anna = Principal("anna", None, Role.TECHNICIAN)
    await handlers.change_status(handlers.ChangeStatus(tid, S.IN_PROGRESS), anna, d)
    offer = store.tickets[tid].offer
    assert offer is not None and offer.accepted and offer.expires_at is None
    clock.now += timedelta(seconds=61)
    assert not await handlers.expire_offer(tid, offer.offer_id, d)
    assert store.tickets[tid].assignee == "anna"


async def test_only_an_agent_resolving_a_removal_ticket_asks_devices_to_remove() -> None:
    store, _, d = _world(hel(2026, 11, 26, 9))
    store.roles["anna"], store.techs["anna"] = Role.TECHNICIAN, ANNA
    cmd = handlers.CreateTicket("dev1", TicketCategory.DEVICE_REMOVAL, "take it", created_by="adm")
    ticket = await handlers.create_ticket(cmd, d, DEVICE)
    assert ticket is not None and ticket.assignee == "anna"
    tid = ticket.ticket_id
    anna = Principal("anna", None, Role.TECHNICIAN)
    await handlers.change_status(handlers.ChangeStatus(tid, S.IN_PROGRESS), anna, d)
    for who in (anna, ADMIN):  # the assignee may resolve other tickets; a customer none
        with pytest.raises(handlers.Refused):
            await handlers.change_status(handlers.ChangeStatus(tid, S.RESOLVED), who, d)
    assert not [e for _, _, e in store.events if isinstance(e, DeviceRemovalRequested)]
    done = await handlers.change_status(
        handlers.ChangeStatus(tid, S.RESOLVED, "picked up"), AGENT, d
    )
    commands = [(t, k, e) for t, k, e in store.events if isinstance(e, DeviceRemovalRequested)]
    assert commands == [
        (
            DEVICE_COMMANDS,
            "dev1",
            DeviceRemovalRequested(
                device_id="dev1",
                org_id="org1",
                ticket_id=tid,
                requested_by=AGENT.user_id,
                reason=f"device-removal ticket {tid} resolved: picked up",
            ),
        )
    ]
    assert [e.kind for e in done.timeline][-2:] == ["status", "removal"]
    # Another category resolved by an agent sends nothing.
    other = await _create(d)
    await handlers.change_status(handlers.ChangeStatus(other, S.RESOLVED), AGENT, d)
    assert len([e for _, _, e in store.events if isinstance(e, DeviceRemovalRequested)]) == 1


async def test_who_sees_a_ticket() -> None:
    store, _, d = _world(hel(2026, 11, 26, 8))
    tid = await _create(d)
    t = store.tickets[tid]
    assert handlers.can_view(ADMIN, t) and handlers.can_view(AGENT, t)
    manager = Principal("m", "org1", Role.DEVICE_MANAGER, frozenset({"dev1"}))
    other = Principal("m2", "org1", Role.DEVICE_MANAGER, frozenset({"dev2"}))
    foreign = Principal("a2", "org2", Role.ADMIN)
    kb = Principal("k", "org1", Role.KB_VIEWER)
    assert handlers.can_view(manager, t)
    assert not any(handlers.can_view(p, t) for p in (other, foreign, kb))
    with pytest.raises(handlers.NotFound):
        await handlers.change_status(handlers.ChangeStatus(tid, S.CLOSED), foreign, d)


async def test_kb_search_orders_by_relevance() -> None:
    _store, _, d = _world(hel(2026, 11, 26, 8))
    await handlers.add_article("Paper jam in tray 2", "Open the side door.", ["bizhub"], [], "a", d)
    await handlers.add_article(
        "Toner", "Replace toner; paper quality matters.", ["ecosys"], ["paper"], "a", d
    )
    found = await handlers.search_articles("paper jam", None, d)
    assert [a.title for a, _ in found] == ["Paper jam in tray 2", "Toner"]
    only = await handlers.search_articles("paper", "ecosys", d)
    assert [a.title for a, _ in only] == ["Toner"]
    assert tokens("Paperi-jumi: Lokero 2!") == ["paperi-jumi", "paperi", "jumi", "lokero"]


def test_timer_heap_versions_and_partitions() -> None:
    heap = TimerHeap()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    heap.put(TicketTimers("a", 0, 1, warn_at=t0, due_at=t0 + timedelta(seconds=10)))
    heap.put(TicketTimers("b", 1, 1, due_at=t0 + timedelta(seconds=5)))
    assert not heap.put(TicketTimers("a", 0, 1))  # same version: ignored
    heap.put(TicketTimers("a", 0, 2, due_at=t0 + timedelta(seconds=20)))  # paused and resumed
    due = heap.pop_due(t0 + timedelta(seconds=15), 100)
    assert [(d.timers.ticket_id, d.kind) for d in due] == [("b", TimerKind.BREACH)]
    heap.drop_partitions({0})
    assert heap.next_at() is None and heap.pop_due(t0 + timedelta(days=1), 100) == []
    assert SlaKind.WARNING == "warning"
