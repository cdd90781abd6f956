"""Tickets end to end: who may do what (every cell asserted), the out-of-hours answer, routing
with accept, decline and no answer, automatic fault tickets without duplicates, a resolved
device-removal ticket removing its device, the knowledge base and what a ``kb_viewer`` may not do.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

from services.tickets.core.model import CalendarSpec
from shared.bus import Publisher
from shared.config import KafkaSettings
from shared.contracts import (
    DEVICE_COMMANDS,
    DEVICES,
    METER_EVENTS,
    TICKET_EVENTS,
    DeviceFaultReported,
    DeviceLocation,
    DeviceState,
)
from tests.e2e.flows import Fleet, Org, Platform, User, auth, records_with_key, unique
from tests.support import eventually, header, read_topic

pytestmark = pytest.mark.e2e

CUSTOMER_ROLES = ("admin", "device_manager", "stock_manager", "device_stock_manager", "kb_viewer")
PRINCIPALS = (*CUSTOMER_ROLES, "agent", "technician", "anonymous")


def _t(fleet: Fleet, path: str) -> str:
    return fleet.url("tickets", path)


async def technician(fleet: Fleet) -> User:
    email = f"{unique('tech')}@service-centre.example.com"
    response = await fleet.http.post(
        fleet.url("identity", "/identity/staff"),
        json={"email": email, "role": "technician"},
        headers=auth(await fleet.agent()),
    )
    assert response.status_code == 201, response.text
    user_id = response.json()["user_id"]
    event = await fleet.notification(user_id, "identity.invitation-issued")
    accepted = await fleet.http.post(
        fleet.url("identity", "/identity/invitations/accept"),
        json={"token": fleet.p.open_token(event), "password": "Tech-password-77"},
    )
    assert accepted.status_code == 200, accepted.text
    return User(user_id, email, await fleet.token(email, "Tech-password-77"))


async def until(
    call: Callable[[], Awaitable[httpx.Response]], ok: int, retry_on: tuple[int, ...]
) -> httpx.Response:
    """Repeat ``call`` while it answers ``retry_on`` (a projection still catching up), bounded."""
    deadline = time.monotonic() + 20
    while True:
        response = await call()
        if response.status_code not in retry_on or time.monotonic() > deadline:
            assert response.status_code == ok, response.text
            return response
        await asyncio.sleep(0.2)


async def file_ticket(fleet: Fleet, token: str, device_id: str, **extra: str) -> httpx.Response:
    body = {"device_id": device_id, "category": "fault", "description": "Paper jam", **extra}
    return await until(
        lambda: fleet.http.post(_t(fleet, "/tickets"), json=body, headers=auth(token)),
        201,
        (404,),
    )


async def set_technician(fleet: Fleet, tech: User, **profile: object) -> None:
    await until(
        lambda: fleet.http.put(
            _t(fleet, f"/tickets/technicians/{tech.user_id}"),
            json=profile,
            headers=auth(fleet._agent or ""),
        ),
        200,
        (422,),
    )


# --- the authorization table ----------------------------------------------------------------


@dataclass
class Side:
    org: Org
    admin: User
    ticket_id: str


@dataclass
class World:
    fleet: Fleet
    own: Side
    foreign: Side
    tokens: dict[str, str | None]
    technician: User


async def _side(fleet: Fleet) -> Side:
    org = await fleet.create_org()
    device = await fleet.add_device(org)
    admin = await fleet.admin(org)
    ticket = await file_ticket(fleet, admin.token, device)
    return Side(org, admin, ticket.json()["ticket_id"])


@pytest.fixture(scope="module")
async def world(platform: Platform) -> AsyncIterator[World]:
    async with httpx.AsyncClient(timeout=20) as client:
        fleet = Fleet(platform, client)
        own, foreign = await _side(fleet), await _side(fleet)
        tokens: dict[str, str | None] = {"admin": own.admin.token, "anonymous": None}
        for role in CUSTOMER_ROLES[1:]:
            devices = own.org.device_ids if role != "kb_viewer" else []
            tokens[role] = (await fleet.invite(own.org, own.admin, role, devices)).token
        tokens["agent"] = await fleet.agent()
        tech = await technician(fleet)
        tokens["technician"] = tech.token
        yield World(fleet, own, foreign, tokens, tech)


Call = Callable[[World, Side, dict[str, str]], Awaitable[httpx.Response]]


async def create(w: World, s: Side, h: dict[str, str]) -> httpx.Response:
    body = {"device_id": s.org.device_ids[0], "category": "supplies", "description": "Toner"}
    return await w.fleet.http.post(_t(w.fleet, "/tickets"), json=body, headers=h)


async def list_org(w: World, s: Side, h: dict[str, str]) -> httpx.Response:
    return await w.fleet.http.get(
        _t(w.fleet, "/tickets"), params={"org_id": s.org.org_id}, headers=h
    )


async def read(w: World, s: Side, h: dict[str, str]) -> httpx.Response:
    return await w.fleet.http.get(_t(w.fleet, f"/tickets/{s.ticket_id}"), headers=h)


async def comment(w: World, s: Side, h: dict[str, str]) -> httpx.Response:
    return await w.fleet.http.post(
        _t(w.fleet, f"/tickets/{s.ticket_id}/comments"), json={"text": "Any news?"}, headers=h
    )


async def close_new(w: World, s: Side, h: dict[str, str]) -> httpx.Response:
    # A fresh ticket per cell: closing changes it.
    fresh = await file_ticket(w.fleet, s.admin.token, s.org.device_ids[0])
    return await w.fleet.http.post(
        _t(w.fleet, f"/tickets/{fresh.json()['ticket_id']}/status"),
        json={"status": "closed", "note": "withdrawn"},
        headers=h,
    )


async def accept(w: World, s: Side, h: dict[str, str]) -> httpx.Response:
    return await w.fleet.http.post(_t(w.fleet, f"/tickets/{s.ticket_id}/accept"), headers=h)


async def put_tech(w: World, _s: Side, h: dict[str, str]) -> httpx.Response:
    return await w.fleet.http.put(
        _t(w.fleet, f"/tickets/technicians/{w.technician.user_id}"),
        json={"postal_prefixes": [], "skills": [], "capacity": 1},
        headers=h,
    )


async def get_calendar(w: World, s: Side, h: dict[str, str]) -> httpx.Response:
    return await w.fleet.http.get(_t(w.fleet, f"/tickets/calendars/{s.org.org_id}"), headers=h)


async def put_calendar(w: World, s: Side, h: dict[str, str]) -> httpx.Response:
    return await w.fleet.http.put(
        _t(w.fleet, f"/tickets/calendars/{s.org.org_id}"),
        json=CalendarSpec().model_dump(mode="json"),
        headers=h,
    )


async def search_kb(w: World, _s: Side, h: dict[str, str]) -> httpx.Response:
    return await w.fleet.http.get(_t(w.fleet, "/tickets/kb/articles"), params={"q": "x"}, headers=h)


async def write_kb(w: World, _s: Side, h: dict[str, str]) -> httpx.Response:
    return await w.fleet.http.post(
        _t(w.fleet, "/tickets/kb/articles"), json={"title": "T", "body": "B"}, headers=h
    )


def _row(
    *,
    agent: int,
    customer_own: int,
    customer_foreign: int = 404,
    stock: tuple[int, int] = (403, 403),
    kb: int = 403,
    technician: tuple[int, int] = (403, 403),
) -> dict[tuple[str, str], int]:
    """Customers who may act on tickets (admin, device managers) share ``customer_*``."""
    row: dict[tuple[str, str], int] = {}
    for i, side in enumerate(("own", "foreign")):
        row[("agent", side)] = agent
        row[("anonymous", side)] = 401
        row[("kb_viewer", side)] = kb
        row[("technician", side)] = technician[i]
        row[("stock_manager", side)] = stock[i]
        for role in ("admin", "device_manager", "device_stock_manager"):
            row[(role, side)] = customer_own if side == "own" else customer_foreign
    return row


STAFF_ONLY = _row(agent=200, customer_own=403, customer_foreign=403)
TABLE: dict[str, tuple[Call, dict[tuple[str, str], int]]] = {
    "POST /tickets": (create, _row(agent=201, customer_own=201)),
    # Technicians list only their own tickets; another organisation's list is refused.
    "GET /tickets?org_id": (
        list_org,
        _row(
            agent=200,
            customer_own=200,
            customer_foreign=403,
            stock=(200, 403),
            technician=(200, 200),
        ),
    ),
    "GET /tickets/{id}": (
        read,
        _row(agent=200, customer_own=200, stock=(200, 404), technician=(404, 404)),
    ),
    "POST /tickets/{id}/comments": (
        comment,
        _row(agent=201, customer_own=201, stock=(201, 404), technician=(404, 404)),
    ),
    "POST /tickets/{id}/status closed": (
        close_new,
        _row(agent=200, customer_own=200, stock=(403, 404), technician=(404, 404)),
    ),
    "POST /tickets/{id}/accept": (
        accept,
        _row(agent=403, customer_own=403, customer_foreign=403, technician=(404, 404)),
    ),
    "PUT /tickets/technicians/{id}": (put_tech, STAFF_ONLY),
    "GET /tickets/calendars/{org}": (get_calendar, STAFF_ONLY),
    "PUT /tickets/calendars/{org}": (put_calendar, STAFF_ONLY),
    "GET /tickets/kb/articles": (
        search_kb,
        _row(
            agent=200,
            customer_own=200,
            customer_foreign=200,
            stock=(200, 200),
            kb=200,
            technician=(200, 200),
        ),
    ),
    "POST /tickets/kb/articles": (
        write_kb,
        _row(agent=201, customer_own=403, customer_foreign=403),
    ),
}

CELLS = [
    pytest.param(endpoint, principal, side, id=f"{endpoint}|{principal}|{side}")
    for endpoint in TABLE
    for principal in PRINCIPALS
    for side in ("own", "foreign")
]


@pytest.mark.parametrize(("endpoint", "principal", "side"), CELLS)
async def test_tickets_authorization_cell(
    world: World, endpoint: str, principal: str, side: str
) -> None:
    call, expected = TABLE[endpoint]
    token = world.tokens[principal]
    headers = auth(token) if token else {}
    response = await call(world, world.own if side == "own" else world.foreign, headers)
    assert response.status_code == expected[(principal, side)], response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_scoped_listings_and_refused_transitions(world: World) -> None:
    fleet = world.fleet
    agent = auth(world.tokens["agent"] or "")
    mine = await fleet.http.get(_t(fleet, "/tickets"), headers=auth(world.own.admin.token))
    assert {t["org_id"] for t in mine.json()} == {world.own.org.org_id}
    both = await fleet.http.get(_t(fleet, "/tickets"), params={"limit": 500}, headers=agent)
    ids = {t["ticket_id"] for t in both.json()}
    assert {world.own.ticket_id, world.foreign.ticket_id} <= ids
    by_org = await fleet.http.get(
        _t(fleet, "/tickets"), params={"org_id": world.foreign.org.org_id}, headers=agent
    )
    assert {t["org_id"] for t in by_org.json()} == {world.foreign.org.org_id}
    fresh = (await file_ticket(fleet, world.own.admin.token, world.own.org.device_ids[0])).json()
    url = _t(fleet, f"/tickets/{fresh['ticket_id']}/status")
    bad = await fleet.http.post(url, json={"status": "sleeping"}, headers=agent)
    assert bad.status_code == 422 and bad.json()["type"].endswith("/validation-error")
    moved = await fleet.http.post(url, json={"status": "resolved"}, headers=agent)
    assert moved.status_code == 200 and moved.json()["sla"]["responded_at"]
    again = await fleet.http.post(url, json={"status": "waiting_for_customer"}, headers=agent)
    assert again.status_code == 409 and again.json()["type"].endswith("/ticket-conflict")
    timeline = moved.json()["timeline"]
    assert [e["kind"] for e in timeline][:1] == ["created"]
    assert timeline[-1]["by"] and timeline[-1]["data"] == {"old": "new", "new": "resolved"}


# --- flows ----------------------------------------------------------------------------------


@pytest.fixture
async def fleet(platform: Platform) -> AsyncIterator[Fleet]:
    async with httpx.AsyncClient(timeout=20) as client:
        yield Fleet(platform, client)


async def test_out_of_hours_ticket_is_told_the_next_opening(fleet: Fleet) -> None:
    org = await fleet.create_org()
    device = await fleet.add_device(org)
    admin = await fleet.admin(org)
    zone = ZoneInfo("Europe/Helsinki")
    tomorrow = (datetime.now(zone) + timedelta(days=1)).strftime("%a").lower()
    calendar = {
        "timezone": "Europe/Helsinki",
        "country": "",
        "weekly": {tomorrow: [{"start": "09:00", "end": "11:00"}]},
    }
    put = await fleet.http.put(
        _t(fleet, f"/tickets/calendars/{org.org_id}"),
        json=calendar,
        headers=auth(await fleet.agent()),
    )
    assert put.status_code == 200, put.text
    filed_at = datetime.now(UTC)
    body = (await file_ticket(fleet, admin.token, device)).json()
    expected = CalendarSpec.model_validate(calendar).to_calendar().next_opening(filed_at)
    assert body["sla"]["out_of_hours"] is True
    assert datetime.fromisoformat(body["handled_from"]) == expected
    assert datetime.fromisoformat(body["sla"]["clock_starts_at"]) == expected
    created = await records_with_key(
        fleet.p.kafka_bootstrap, TICKET_EVENTS.name, body["ticket_id"], "tickets.ticket-created"
    )
    assert created[0]["out_of_hours"] is True
    assert datetime.fromisoformat(created[0]["clock_starts_at"]) == expected
    # 8 contract hours in 2-hour days: the due date is four opening days later.
    assert datetime.fromisoformat(created[0]["due_at"]) == expected + timedelta(days=21, hours=2)


async def test_a_customer_comment_resumes_a_waiting_ticket(fleet: Fleet) -> None:
    org = await fleet.create_org()
    device = await fleet.add_device(org)
    admin = await fleet.admin(org)
    agent = auth(await fleet.agent())
    ticket = (await file_ticket(fleet, admin.token, device)).json()
    url = _t(fleet, f"/tickets/{ticket['ticket_id']}")
    for target in ("in_progress", "waiting_for_customer"):
        moved = await fleet.http.post(url + "/status", json={"status": target}, headers=agent)
        assert moved.status_code == 200, moved.text
    assert moved.json()["sla"]["paused"] is True
    # The agent's comment leaves it waiting; the customer's answer resumes it.
    asked = await fleet.http.post(url + "/comments", json={"text": "Which tray?"}, headers=agent)
    assert asked.status_code == 201 and asked.json()["status"] == "waiting_for_customer"
    answered = await fleet.http.post(
        url + "/comments", json={"text": "Tray 2"}, headers=auth(admin.token)
    )
    assert answered.status_code == 201, answered.text
    body = answered.json()
    assert body["status"] == "in_progress" and body["sla"]["paused"] is False
    assert body["sla"]["paused_seconds"] > 0
    last = body["timeline"][-1]
    assert last["kind"] == "status" and last["by"] == admin.user_id
    assert last["data"] == {"old": "waiting_for_customer", "new": "in_progress"}

    async def resumed() -> list[dict[str, object]]:
        changes = await records_with_key(
            fleet.p.kafka_bootstrap,
            TICKET_EVENTS.name,
            ticket["ticket_id"],
            "tickets.ticket-status-changed",
        )
        return [c for c in changes if c["old_status"] == "waiting_for_customer"]

    (change,) = await eventually(resumed, timeout=20, what="the resumption published")
    assert change["new_status"] == "in_progress" and change["changed_by"] == admin.user_id


async def _fabricated_device(fleet: Fleet, org: Org, postal: str, family: str) -> str:
    """A device with a location and model family, as the devices service would publish it."""
    device_id = unique("dev")
    state = DeviceState(
        device_id=device_id,
        org_id=org.org_id,
        serial=unique("SN"),
        model="X 1",
        model_family=family,
        location=DeviceLocation(postal_code=postal),
        revision=1,
    )
    async with Publisher(KafkaSettings(bootstrap_servers=fleet.p.kafka_bootstrap), "devices") as p:
        await p.publish(DEVICES, device_id, state)
    return device_id


async def test_routing_accept_decline_and_no_answer(fleet: Fleet) -> None:
    org = await fleet.create_org()
    await fleet.add_device(org)
    admin = await fleet.admin(org)
    postal, family = f"9{secrets.randbelow(10**6):06d}", unique("fam")
    device = await _fabricated_device(fleet, org, postal + "0", family)
    await fleet.agent()
    techs = [await technician(fleet) for _ in range(2)]
    for tech in techs:
        await set_technician(fleet, tech, postal_prefixes=[postal], skills=[family], capacity=3)
    ticket = (await file_ticket(fleet, admin.token, device)).json()
    first = ticket["assignee"]
    assert first in {t.user_id for t in techs} and ticket["status"] == "assigned"
    by_id = {t.user_id: t for t in techs}
    url = _t(fleet, f"/tickets/{ticket['ticket_id']}")
    declined = await fleet.http.post(
        url + "/decline", json={"reason": "too far"}, headers=auth(by_id[first].token)
    )
    assert declined.status_code == 200, declined.text
    second = declined.json()["assignee"]
    assert second not in (None, first)
    # The second says nothing: after the offer time (4 s here) nobody is left to ask.

    async def unrouted() -> dict[str, object] | None:
        body = (await fleet.http.get(url, headers=auth(admin.token))).json()
        return body if body["assignee"] is None else None

    body = await eventually(unrouted, timeout=20)
    assert body["status"] == "new"
    reasons = [e["text"] for e in body["timeline"] if e["kind"] in ("routing", "assignment")]
    assert any("declined: too far" in r for r in reasons), reasons
    assert any("no answer within 4 s" in r for r in reasons), reasons
    assert any("least open load" in r for r in reasons), reasons
    # An agent overrides; the technician accepts and the offer no longer lapses.
    override = await fleet.http.post(
        url + "/assign", json={"technician_id": first}, headers=auth(await fleet.agent())
    )
    assert override.status_code == 200 and override.json()["assignee"] == first
    other = (await file_ticket(fleet, admin.token, device)).json()
    taker = by_id[other["assignee"]]
    accepted = await fleet.http.post(
        _t(fleet, f"/tickets/{other['ticket_id']}/accept"), headers=auth(taker.token)
    )
    assert accepted.status_code == 200 and not accepted.json()["offer_pending"]
    listed = await fleet.http.get(_t(fleet, "/tickets"), headers=auth(taker.token))
    assert other["ticket_id"] in {t["ticket_id"] for t in listed.json()}
    assigned = await records_with_key(
        fleet.p.kafka_bootstrap, TICKET_EVENTS.name, ticket["ticket_id"], "tickets.ticket-assigned"
    )
    assert [a["technician_id"] for a in assigned][:2] == [first, second]


async def test_fault_tickets_opened_once_per_device_and_error(fleet: Fleet) -> None:
    org = await fleet.create_org()
    device = await fleet.add_device(org)
    agent = auth(await fleet.agent())
    kafka = KafkaSettings(bootstrap_servers=fleet.p.kafka_bootstrap)
    async with Publisher(kafka, "meters") as meters:
        for codes in (["E-101", "C-2"], ["C-2", "E-101"], ["J-9"]):
            fault = DeviceFaultReported(
                device_id=device,
                org_id=org.org_id,
                serial=org.serials[0],
                error_codes=codes,
                reported_at=datetime.now(UTC),
            )
            await meters.publish(METER_EVENTS, device, fault)

    async def two() -> list[dict[str, object]] | None:
        r = await fleet.http.get(_t(fleet, "/tickets"), params={"device_id": device}, headers=agent)
        return r.json() if len(r.json()) >= 2 else None

    # The third event (another error) opened the second ticket, so the duplicate was handled.
    tickets = await eventually(two, timeout=30)
    assert sorted(tuple(t["error_codes"]) for t in tickets) == [("C-2", "E-101"), ("J-9",)]
    assert all(t["category"] == "fault" and t["created_by"] is None for t in tickets)


async def _removal_ticket(fleet: Fleet, admin: User, device: str) -> str:
    body = {"category": "device_removal", "description": "We no longer need this printer"}
    return str((await file_ticket(fleet, admin.token, device, **body)).json()["ticket_id"])


async def _removal_commands(fleet: Fleet, device: str) -> list[dict[str, object]]:
    records = await read_topic(fleet.p.kafka_bootstrap, DEVICE_COMMANDS.name)
    mine = [r for r in records if r.key == device.encode()]
    assert all(header(r, "producer") == "tickets" for r in mine)
    assert all(header(r, "event_type") == "devices.device-removal-requested" for r in mine)
    return [json.loads(r.value) for r in mine]


async def test_an_agent_resolving_a_removal_ticket_removes_the_device(fleet: Fleet) -> None:
    org = await fleet.create_org()
    device = await fleet.add_device(org)
    admin = await fleet.admin(org)
    agent = auth(await fleet.agent())
    ticket_id = await _removal_ticket(fleet, admin, device)
    url = _t(fleet, f"/tickets/{ticket_id}/status")
    resolved = await fleet.http.post(
        url, json={"status": "resolved", "note": "collected on site"}, headers=agent
    )
    assert resolved.status_code == 200, resolved.text
    timeline = resolved.json()["timeline"]
    agent_id = timeline[-2]["by"]
    assert timeline[-2]["kind"] == "status" and agent_id
    assert timeline[-1]["kind"] == "removal" and timeline[-1]["by"] == agent_id

    async def removed() -> list[dict[str, object]] | None:
        trail = await fleet.http.get(
            fleet.url("devices", f"/devices/{device}/history"), headers=agent
        )
        assert trail.status_code == 200, trail.text
        entries = trail.json()
        return entries if entries[-1]["action"] == "removed" else None

    entries = await eventually(removed, timeout=30, what="device removed by the ticket")
    assert [e["action"] for e in entries] == ["created", "removed"]
    assert entries[-1]["by"] == agent_id
    assert entries[-1]["changes"]["ticket_id"] == ticket_id
    assert "collected on site" in entries[-1]["changes"]["reason"]
    gone = await fleet.http.get(
        fleet.url("devices", f"/devices/{device}"), headers=auth(admin.token)
    )
    assert gone.status_code == 404
    (command,) = await _removal_commands(fleet, device)
    assert command["org_id"] == org.org_id and command["requested_by"] == agent_id
    # Meters hears of the removal from the devices state topic and refuses readings from then.
    readings = fleet.url("meters", f"/meters/devices/{device}/readings")
    accepted: list[int] = []

    async def refused() -> bool:
        response = await fleet.http.post(
            readings,
            json={"counters": {"total": 1 + len(accepted)}, "reason": "customer called"},
            headers=agent,
        )
        if response.status_code == 201:  # meters has not read the removal yet
            accepted.append(1)
            return False
        assert response.status_code == 422, response.text
        return "device_removed" in [r["rule"] for r in response.json()["refusals"]]

    await eventually(refused, timeout=30, what="meters refuses the removed device's readings")


async def test_only_an_agent_resolution_asks_for_the_removal(fleet: Fleet) -> None:
    org = await fleet.create_org()
    kept, withdrawn = await fleet.add_device(org), await fleet.add_device(org)
    admin = await fleet.admin(org)
    agent = auth(await fleet.agent())
    tech = await technician(fleet)
    ticket_id = await _removal_ticket(fleet, admin, kept)
    url = _t(fleet, f"/tickets/{ticket_id}")
    # Customers never resolve a ticket (the status rules); they may close a new one.
    by_admin = await fleet.http.post(
        url + "/status", json={"status": "resolved"}, headers=auth(admin.token)
    )
    assert by_admin.status_code == 403, by_admin.text
    # The assigned technician works on it but may not resolve it: that removes a device.
    await until(
        lambda: fleet.http.post(
            url + "/assign", json={"technician_id": tech.user_id}, headers=agent
        ),
        200,
        (422,),
    )
    working = await fleet.http.post(
        url + "/status", json={"status": "in_progress"}, headers=auth(tech.token)
    )
    assert working.status_code == 200, working.text
    by_tech = await fleet.http.post(
        url + "/status", json={"status": "resolved"}, headers=auth(tech.token)
    )
    assert by_tech.status_code == 403, by_tech.text
    assert by_tech.headers["content-type"].startswith("application/problem+json")
    # A removal ticket the customer withdraws (closes while new) removes nothing.
    other = await _removal_ticket(fleet, admin, withdrawn)
    closed = await fleet.http.post(
        _t(fleet, f"/tickets/{other}/status"),
        json={"status": "closed", "note": "filed by mistake"},
        headers=auth(admin.token),
    )
    assert closed.status_code == 200, closed.text
    # Whatever was written for these tickets is on Kafka once their status events are.
    for tid in (ticket_id, other):
        await records_with_key(
            fleet.p.kafka_bootstrap, TICKET_EVENTS.name, tid, "tickets.ticket-status-changed"
        )
    current = await fleet.http.get(url, headers=agent)
    assert current.json()["status"] == "in_progress"
    for device in (kept, withdrawn):
        assert await _removal_commands(fleet, device) == []
        still = await fleet.http.get(fleet.url("devices", f"/devices/{device}"), headers=agent)
        assert still.status_code == 200 and still.json()["status"] == "active"


async def test_knowledge_base_search_and_kb_viewer_limits(fleet: Fleet) -> None:
    org = await fleet.create_org()
    device = await fleet.add_device(org)
    admin = await fleet.admin(org)
    viewer = await fleet.invite(org, admin, "kb_viewer")
    agent = auth(await fleet.agent())
    word, family = unique("fuser"), unique("fam")
    for title, body, families in (
        (f"{word} error after a paper jam", "Let the unit cool down.", [family]),
        ("Streaks on prints", f"Clean the {word} roller.", []),
        ("Unrelated", "Nothing here.", [family]),
    ):
        r = await fleet.http.post(
            _t(fleet, "/tickets/kb/articles"),
            json={"title": title, "body": body, "model_families": families, "tags": []},
            headers=agent,
        )
        assert r.status_code == 201, r.text
    found = await fleet.http.get(
        _t(fleet, "/tickets/kb/articles"), params={"q": word}, headers=auth(viewer.token)
    )
    assert found.status_code == 200
    assert [a["title"] for a in found.json()] == [
        f"{word} error after a paper jam",
        "Streaks on prints",
    ]
    by_model = await fleet.http.get(
        _t(fleet, "/tickets/kb/articles"),
        params={"q": word, "model": family},
        headers=auth(viewer.token),
    )
    assert [a["title"] for a in by_model.json()] == [f"{word} error after a paper jam"]
    for call in (
        fleet.http.get(_t(fleet, "/tickets"), headers=auth(viewer.token)),
        fleet.http.post(
            _t(fleet, "/tickets"),
            json={"device_id": device, "category": "other", "description": "x"},
            headers=auth(viewer.token),
        ),
        fleet.http.get(fleet.url("devices", "/devices"), headers=auth(viewer.token)),
    ):
        assert (await call).status_code == 403
