"""Who may call which identity endpoint: every role, on its own organisation and a foreign one.

Each cell of the table is a real request against the running platform and its expected status.
Customers act on organisation A (theirs) and B (foreign); staff have no organisation, so both
columns say the same for them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.flows import Fleet, Org, Platform, User, auth, unique

pytestmark = pytest.mark.e2e

CUSTOMER_ROLES = ("admin", "device_manager", "stock_manager", "device_stock_manager", "kb_viewer")
PRINCIPALS = (*CUSTOMER_ROLES, "agent", "technician", "anonymous")


@dataclass
class Side:
    org: Org
    admin: User
    manager: User  # a device manager: target of role and device changes
    pending_user_id: str  # registered, not confirmed: target of e-mail and confirmation tools


@dataclass
class World:
    fleet: Fleet
    own: Side
    foreign: Side
    tokens: dict[str, str | None]


async def _side(fleet: Fleet) -> Side:
    org = await fleet.create_org()
    device = await fleet.add_device(org)
    admin = await fleet.admin(org)
    manager = await fleet.invite(org, admin, "device_manager", [device])
    pending_user_id, _ = await fleet.register(org)
    return Side(org, admin, manager, pending_user_id)


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
        response = await client.post(
            fleet.url("identity", "/identity/staff"),
            json={"email": f"{unique('tech')}@service-centre.example.com", "role": "technician"},
            headers=auth(tokens["agent"]),
        )
        assert response.status_code == 201, response.text
        event = await fleet.notification(response.json()["user_id"], "identity.invitation-issued")
        accepted = await client.post(
            fleet.url("identity", "/identity/invitations/accept"),
            json={"token": platform.open_token(event), "password": "Tech-password-77"},
        )
        assert accepted.status_code == 200, accepted.text
        tokens["technician"] = await fleet.token(event["email"], "Tech-password-77")
        yield World(fleet, own, foreign, tokens)


Call = Callable[[World, Side, dict[str, str]], Awaitable[httpx.Response]]


def _u(world: World, path: str) -> str:
    return world.fleet.url("identity", path)


async def create_org(w: World, _s: Side, h: dict[str, str]) -> httpx.Response:
    body = {"customer_number": unique("C"), "system_id": unique("S"), "name": "Authz Oy"}
    return await w.fleet.http.post(_u(w, "/identity/organisations"), json=body, headers=h)


async def find_org(w: World, s: Side, h: dict[str, str]) -> httpx.Response:
    return await w.fleet.http.get(
        _u(w, "/identity/organisations"),
        params={"customer_number": s.org.customer_number},
        headers=h,
    )


async def list_users(w: World, s: Side, h: dict[str, str]) -> httpx.Response:
    return await w.fleet.http.get(_u(w, f"/identity/organisations/{s.org.org_id}/users"), headers=h)


async def account(w: World, s: Side, h: dict[str, str]) -> httpx.Response:
    return await w.fleet.http.get(
        _u(w, f"/identity/organisations/{s.org.org_id}/account"), headers=h
    )


async def invite(w: World, s: Side, h: dict[str, str]) -> httpx.Response:
    body = {"email": f"{unique('inv')}@customer.example.com", "role": "kb_viewer"}
    return await w.fleet.http.post(
        _u(w, f"/identity/organisations/{s.org.org_id}/invitations"), json=body, headers=h
    )


async def change_role(w: World, s: Side, h: dict[str, str]) -> httpx.Response:
    return await w.fleet.http.put(
        _u(w, f"/identity/users/{s.manager.user_id}/role"),
        json={"role": "device_manager"},
        headers=h,
    )


async def assign_devices(w: World, s: Side, h: dict[str, str]) -> httpx.Response:
    return await w.fleet.http.put(
        _u(w, f"/identity/users/{s.manager.user_id}/devices"),
        json={"device_ids": s.org.device_ids},
        headers=h,
    )


async def change_email(w: World, s: Side, h: dict[str, str]) -> httpx.Response:
    return await w.fleet.http.put(
        _u(w, f"/identity/users/{s.pending_user_id}/email"),
        json={"email": f"{unique('mail')}@customer.example.com"},
        headers=h,
    )


async def resend(w: World, s: Side, h: dict[str, str]) -> httpx.Response:
    return await w.fleet.http.post(
        _u(w, f"/identity/users/{s.pending_user_id}/confirmation"), headers=h
    )


async def me(w: World, _s: Side, h: dict[str, str]) -> httpx.Response:
    return await w.fleet.http.get(_u(w, "/identity/me"), headers=h)


async def invite_staff(w: World, _s: Side, h: dict[str, str]) -> httpx.Response:
    body = {"email": f"{unique('staff')}@service-centre.example.com", "role": "technician"}
    return await w.fleet.http.post(_u(w, "/identity/staff"), json=body, headers=h)


def _row(
    agent: int, admin_own: int, admin_foreign: int = 403, others: int = 403, technician: int = 403
) -> dict[tuple[str, str], int]:
    """Expected status per (principal, side); customers other than admin share ``others``."""
    row: dict[tuple[str, str], int] = {}
    for side in ("own", "foreign"):
        row[("agent", side)] = agent
        row[("technician", side)] = technician
        row[("anonymous", side)] = 401
        row[("admin", side)] = admin_own if side == "own" else admin_foreign
        for role in CUSTOMER_ROLES[1:]:
            row[(role, side)] = others
    return row


TABLE: dict[str, tuple[Call, dict[tuple[str, str], int]]] = {
    "POST /identity/organisations": (create_org, _row(agent=201, admin_own=403)),
    "GET /identity/organisations": (find_org, _row(agent=200, admin_own=403)),
    "GET /identity/organisations/{id}/users": (list_users, _row(agent=200, admin_own=200)),
    "GET /identity/organisations/{id}/account": (account, _row(agent=200, admin_own=403)),
    "POST /identity/organisations/{id}/invitations": (invite, _row(agent=403, admin_own=201)),
    # A foreign organisation's user is not visible to an admin at all: 404, not 403.
    "PUT /identity/users/{id}/role": (
        change_role,
        _row(agent=403, admin_own=200, admin_foreign=404),
    ),
    "PUT /identity/users/{id}/devices": (
        assign_devices,
        _row(agent=403, admin_own=200, admin_foreign=404),
    ),
    "PUT /identity/users/{id}/email": (change_email, _row(agent=200, admin_own=403)),
    "POST /identity/users/{id}/confirmation": (resend, _row(agent=202, admin_own=403)),
    "GET /identity/me": (
        me,
        _row(agent=200, admin_own=200, admin_foreign=200, others=200, technician=200),
    ),
    "POST /identity/staff": (invite_staff, _row(agent=201, admin_own=403)),
}

CELLS = [
    pytest.param(endpoint, principal, side, id=f"{endpoint}|{principal}|{side}")
    for endpoint in TABLE
    for principal in PRINCIPALS
    for side in ("own", "foreign")
]


@pytest.mark.parametrize(("endpoint", "principal", "side"), CELLS)
async def test_authorization_cell(world: World, endpoint: str, principal: str, side: str) -> None:
    call, expected = TABLE[endpoint]
    token = world.tokens[principal]
    headers = auth(token) if token else {}
    response = await call(world, world.own if side == "own" else world.foreign, headers)
    assert response.status_code == expected[(principal, side)], response.text
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json"
