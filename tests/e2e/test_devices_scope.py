"""Who may call which devices endpoint, on which device: every role against the running platform.

Organisation A has two devices: ``assigned`` (every manager of A manages it) and ``unassigned``
(nobody does); organisation B has ``foreign``. Each cell of the table is a real request and its
expected status; refusals are problem details. Then the flows the scope protects: a manager of
another device cannot move this one, removal reaches the state topic, the history says who did
what, and stock and supply orders follow their own rules.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from shared.contracts import DEVICES
from tests.e2e.flows import Fleet, Org, Platform, User, auth, unique
from tests.support import eventually, header, read_topic

pytestmark = pytest.mark.e2e

CUSTOMER_ROLES = ("admin", "device_manager", "stock_manager", "device_stock_manager", "kb_viewer")
PRINCIPALS = (*CUSTOMER_ROLES, "agent", "technician", "anonymous")
TARGETS = ("assigned", "unassigned", "foreign")


@dataclass
class World:
    fleet: Fleet
    own: Org
    foreign: Org
    admin: User
    devices: dict[str, str]  # target -> device id
    tokens: dict[str, str | None]
    users: dict[str, User]


async def add_device(fleet: Fleet, org: Org, **extra: Any) -> str:
    """A device with automatic replenishment (so that stock applies), once the org is known."""
    body = {
        "org_id": org.org_id,
        "serial": unique("SN"),
        "model": "bizhub C300i",
        "model_family": "bizhub",
        "auto_replenishment": True,
        **extra,
    }

    async def created() -> httpx.Response | None:
        r = await fleet.http.post(
            fleet.url("devices", "/devices"), json=body, headers=auth(await fleet.agent())
        )
        assert r.status_code in (201, 422), r.text
        return r if r.status_code == 201 else None

    response = await eventually(created, what="device registered")
    org.device_ids.append(response.json()["device_id"])
    org.serials.append(body["serial"])
    return str(response.json()["device_id"])


async def technician(fleet: Fleet) -> str:
    response = await fleet.http.post(
        fleet.url("identity", "/identity/staff"),
        json={"email": f"{unique('tech')}@service-centre.example.com", "role": "technician"},
        headers=auth(await fleet.agent()),
    )
    assert response.status_code == 201, response.text
    event = await fleet.notification(response.json()["user_id"], "identity.invitation-issued")
    accepted = await fleet.http.post(
        fleet.url("identity", "/identity/invitations/accept"),
        json={"token": fleet.p.open_token(event), "password": "Tech-password-77"},
    )
    assert accepted.status_code == 200, accepted.text
    return await fleet.token(event["email"], "Tech-password-77")


@pytest.fixture(scope="module")
async def world(platform: Platform) -> AsyncIterator[World]:
    async with httpx.AsyncClient(timeout=30) as client:
        fleet = Fleet(platform, client)
        own, foreign = await fleet.create_org(), await fleet.create_org()
        devices = {
            "assigned": await add_device(fleet, own),
            "unassigned": await add_device(fleet, own),
            "foreign": await add_device(fleet, foreign),
        }
        admin = await fleet.admin(own)
        await fleet.admin(foreign)
        tokens: dict[str, str | None] = {"admin": admin.token, "anonymous": None}
        users = {"admin": admin}
        for role in CUSTOMER_ROLES[1:]:
            assigned = [devices["assigned"]] if role != "kb_viewer" else []
            users[role] = await fleet.invite(own, admin, role, assigned)
            tokens[role] = users[role].token
        tokens["agent"] = await fleet.agent()
        tokens["technician"] = await technician(fleet)

        # The devices service knows the managers' assignments once it has their user state.
        for role in ("device_manager", "stock_manager", "device_stock_manager"):

            async def sees(token: str | None = tokens[role]) -> bool:
                r = await client.get(
                    fleet.url("devices", f"/devices/{devices['assigned']}"),
                    headers=auth(token or ""),
                )
                return r.status_code == 200

            await eventually(sees, what=f"{role} sees the assigned device")
        yield World(fleet, own, foreign, admin, devices, tokens, users)


Call = Callable[[World, str, dict[str, str], str], Awaitable[httpx.Response]]


def _u(w: World, path: str) -> str:
    return w.fleet.url("devices", path)


async def get_device(w: World, d: str, h: dict[str, str], _p: str) -> httpx.Response:
    return await w.fleet.http.get(_u(w, f"/devices/{d}"), headers=h)


async def put_location(w: World, d: str, h: dict[str, str], p: str) -> httpx.Response:
    body = {"site": f"Site of {p}", "address": "Mannerheimintie 1", "postal_code": "00100"}
    return await w.fleet.http.put(_u(w, f"/devices/{d}/location"), json=body, headers=h)


async def put_contract(w: World, d: str, h: dict[str, str], _p: str) -> httpx.Response:
    body = {"sla_response_hours": 8, "auto_replenishment": True, "emaintenance": True}
    return await w.fleet.http.put(_u(w, f"/devices/{d}/contract"), json=body, headers=h)


async def get_stock(w: World, d: str, h: dict[str, str], _p: str) -> httpx.Response:
    return await w.fleet.http.get(_u(w, f"/devices/{d}/stock"), headers=h)


async def put_stock(w: World, d: str, h: dict[str, str], _p: str) -> httpx.Response:
    body = {"delivery_instructions": "Loading bay 2", "on_hand": {"black": 2, "cyan": 1}}
    return await w.fleet.http.put(_u(w, f"/devices/{d}/stock"), json=body, headers=h)


async def supply_orders(w: World, d: str, h: dict[str, str], _p: str) -> httpx.Response:
    return await w.fleet.http.get(_u(w, f"/devices/{d}/supply-orders"), headers=h)


async def history(w: World, d: str, h: dict[str, str], _p: str) -> httpx.Response:
    return await w.fleet.http.get(_u(w, f"/devices/{d}/history"), headers=h)


async def delete(w: World, d: str, h: dict[str, str], p: str) -> httpx.Response:
    if p == "agent":  # an agent really removes: a device of the same organisation made for it
        org = w.foreign if d == w.devices["foreign"] else w.own
        d = await add_device(w.fleet, org)
    return await w.fleet.http.delete(_u(w, f"/devices/{d}"), headers=h)


def _row(
    admin: tuple[int, int, int],
    device_manager: tuple[int, int, int],
    stock_manager: tuple[int, int, int],
    agent: int,
    kb_viewer: tuple[int, int, int] = (404, 404, 404),
    technician: tuple[int, int, int] = (404, 404, 404),
    device_stock_manager: tuple[int, int, int] | None = None,
) -> dict[tuple[str, str], int]:
    by_role = {
        "admin": admin,
        "device_manager": device_manager,
        "stock_manager": stock_manager,
        "device_stock_manager": device_stock_manager or device_manager,
        "kb_viewer": kb_viewer,
        "agent": (agent, agent, agent),
        "technician": technician,
        "anonymous": (401, 401, 401),
    }
    return {(p, t): by_role[p][i] for p in PRINCIPALS for i, t in enumerate(TARGETS)}


SEEN = (200, 200, 404)  # admin: the organisation's devices, not another's
MINE = (200, 404, 404)  # a manager: the assigned device only
REFUSED = (403, 404, 404)  # a manager who sees the device but may not do this
ALL_403 = (403, 403, 403)

TABLE: dict[str, tuple[Call, dict[tuple[str, str], int]]] = {
    "GET /devices/{id}": (get_device, _row(SEEN, MINE, MINE, 200)),
    "PUT /devices/{id}/location": (
        put_location,
        _row(SEEN, MINE, REFUSED, 200, device_stock_manager=MINE),
    ),
    "PUT /devices/{id}/contract": (
        put_contract,
        _row((403, 403, 404), REFUSED, REFUSED, 200),
    ),
    "GET /devices/{id}/stock": (
        get_stock,
        _row(SEEN, REFUSED, MINE, 200, device_stock_manager=MINE),
    ),
    "PUT /devices/{id}/stock": (
        put_stock,
        _row((403, 403, 404), REFUSED, MINE, 403, device_stock_manager=MINE),
    ),
    "GET /devices/{id}/supply-orders": (
        supply_orders,
        _row(SEEN, REFUSED, MINE, 200, device_stock_manager=MINE),
    ),
    "GET /devices/{id}/history": (history, _row(SEEN, REFUSED, REFUSED, 200)),
    "DELETE /devices/{id}": (
        delete,
        _row(ALL_403, ALL_403, ALL_403, 204, kb_viewer=ALL_403, technician=ALL_403),
    ),
}

CELLS = [
    pytest.param(endpoint, principal, target, id=f"{endpoint}|{principal}|{target}")
    for endpoint in TABLE
    for principal in PRINCIPALS
    for target in TARGETS
]


@pytest.mark.parametrize(("endpoint", "principal", "target"), CELLS)
async def test_scope_cell(world: World, endpoint: str, principal: str, target: str) -> None:
    call, expected = TABLE[endpoint]
    token = world.tokens[principal]
    headers = auth(token) if token else {}
    response = await call(world, world.devices[target], headers, principal)
    assert response.status_code == expected[(principal, target)], response.text
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json"


LISTED = {
    "admin": {"assigned", "unassigned"},
    "device_manager": {"assigned"},
    "stock_manager": {"assigned"},
    "device_stock_manager": {"assigned"},
}


@pytest.mark.parametrize("principal", PRINCIPALS)
async def test_list_shows_exactly_what_the_role_may_see(world: World, principal: str) -> None:
    token = world.tokens[principal]
    params = {"org_id": world.own.org_id} if principal == "agent" else {}
    response = await world.fleet.http.get(
        _u(world, "/devices"), params=params, headers=auth(token) if token else {}
    )
    if principal == "anonymous":
        assert response.status_code == 401
    elif principal in ("kb_viewer", "technician"):
        assert response.status_code == 403
    else:
        assert response.status_code == 200, response.text
        ids = {d["device_id"] for d in response.json()}
        names = {t for t, d in world.devices.items() if d in ids}
        expected = LISTED.get(principal, {"assigned", "unassigned"})
        assert names == expected
        assert world.devices["foreign"] not in ids


@pytest.mark.parametrize("principal", [p for p in PRINCIPALS if p not in ("agent", "anonymous")])
async def test_only_agents_register_and_import(world: World, principal: str) -> None:
    headers = auth(world.tokens[principal] or "")
    body = {"org_id": world.own.org_id, "serial": unique("SN"), "model": "x"}
    created = await world.fleet.http.post(_u(world, "/devices"), json=body, headers=headers)
    assert created.status_code == 403
    imported = await world.fleet.http.post(
        _u(world, "/devices/import"),
        content=b"org_id,serial,model\n",
        headers={**headers, "content-type": "text/csv"},
    )
    assert imported.status_code == 403


async def test_a_manager_of_another_device_cannot_move_this_one(world: World) -> None:
    w = world
    other = await add_device(w.fleet, w.own)
    manager = await w.fleet.invite(w.own, w.admin, "device_manager", [other])

    async def sees_own() -> bool:
        r = await w.fleet.http.get(_u(w, f"/devices/{other}"), headers=auth(manager.token))
        return r.status_code == 200

    await eventually(sees_own)
    target = w.devices["unassigned"]
    before = await w.fleet.http.get(_u(w, f"/devices/{target}"), headers=auth(w.admin.token))
    moved = await w.fleet.http.put(
        _u(w, f"/devices/{target}/location"),
        json={"site": "Elsewhere"},
        headers=auth(manager.token),
    )
    assert moved.status_code == 404
    assert moved.json()["type"].endswith("/device-not-found")
    after = await w.fleet.http.get(_u(w, f"/devices/{target}"), headers=auth(w.admin.token))
    assert after.json()["location"] == before.json()["location"]
    assert after.json()["revision"] == before.json()["revision"]


async def test_removal_by_an_agent_reaches_the_state_topic(world: World) -> None:
    w = world
    device = await add_device(w.fleet, w.own)
    agent = await w.fleet.agent()
    removed = await w.fleet.http.delete(_u(w, f"/devices/{device}"), headers=auth(agent))
    assert removed.status_code == 204

    async def removed_state() -> list[dict[str, Any]]:
        records = await read_topic(w.fleet.p.kafka_bootstrap, DEVICES.name)
        states = [json.loads(r.value) for r in records if r.key == device.encode()]
        assert all(header(r, "producer") == "devices" for r in records if r.key == device.encode())
        return [s for s in states if s["removed"]]

    (state,) = await eventually(removed_state, what="removed state published")
    assert state["status"] == "removed" and state["org_id"] == w.own.org_id
    assert state["revision"] == 2 and state["model_family"] == "bizhub"
    gone = await w.fleet.http.get(_u(w, f"/devices/{device}"), headers=auth(w.admin.token))
    assert gone.status_code == 404
    trail = await w.fleet.http.get(_u(w, f"/devices/{device}/history"), headers=auth(agent))
    assert [e["action"] for e in trail.json()] == ["created", "removed"]


async def test_history_says_who_changed_what_including_assignments(world: World) -> None:
    w = world
    device = await add_device(w.fleet, w.own)
    moved = await w.fleet.http.put(
        _u(w, f"/devices/{device}/location"),
        json={"site": "HQ", "floor": "3", "region": "Uusimaa"},
        headers=auth(w.admin.token),
    )
    assert moved.status_code == 200, moved.text
    manager = w.users["device_manager"]
    assigned = await w.fleet.http.put(
        w.fleet.url("identity", f"/identity/users/{manager.user_id}/devices"),
        json={"device_ids": [w.devices["assigned"], device]},
        headers=auth(w.admin.token),
    )
    assert assigned.status_code == 200, assigned.text

    async def trail() -> list[dict[str, Any]]:
        r = await w.fleet.http.get(_u(w, f"/devices/{device}/history"), headers=auth(w.admin.token))
        entries: list[dict[str, Any]] = r.json()
        return entries if len(entries) >= 3 else []

    entries = await eventually(trail, what="assignment on the history")
    agent_id = entries[0]["by"]
    assert [(e["action"], e["by"]) for e in entries] == [
        ("created", agent_id),
        ("location", w.admin.user_id),
        ("assignment", None),
    ]
    assert entries[1]["changes"]["after"]["region"] == "Uusimaa"
    assert entries[2]["changes"] == {
        "user_id": manager.user_id,
        "assigned": True,
        "role": "device_manager",
    }
    shown = await w.fleet.http.get(_u(w, f"/devices/{device}"), headers=auth(manager.token))
    assert shown.status_code == 200 and shown.json()["manager_ids"] == [manager.user_id]


async def test_stock_set_by_its_stock_manager_is_read_by_the_admin(world: World) -> None:
    w = world
    d = w.devices["assigned"]
    body = {"delivery_instructions": "Reception, ask for Maija", "on_hand": {"black": 3}}
    put = await w.fleet.http.put(
        _u(w, f"/devices/{d}/stock"), json=body, headers=auth(w.tokens["stock_manager"] or "")
    )
    assert put.status_code == 200, put.text
    got = await w.fleet.http.get(_u(w, f"/devices/{d}/stock"), headers=auth(w.admin.token))
    assert got.json()["on_hand"] == {"black": 3}
    assert got.json()["delivery_instructions"] == body["delivery_instructions"]
    bad = await w.fleet.http.put(
        _u(w, f"/devices/{d}/stock"),
        json={"on_hand": {"glitter": 1}},
        headers=auth(w.tokens["stock_manager"] or ""),
    )
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
