"""Meters through the public API of the running platform: manual and phoned-in submissions,
the 422 reasons, removed devices, telemetry reaching the history, and who may do what."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from tests.e2e.flows import Fleet, Org, Platform, auth, unique
from tests.support import client_options, eventually

pytestmark = pytest.mark.e2e

CUSTOMER_ROLES = ("admin", "device_manager", "stock_manager", "device_stock_manager", "kb_viewer")


@dataclass
class World:
    fleet: Fleet
    own: Org
    foreign: Org
    tokens: dict[str, str | None]


async def _known_to_meters(fleet: Fleet, device_id: str) -> None:
    async def known() -> bool:
        response = await fleet.http.get(
            fleet.url("meters", f"/meters/devices/{device_id}/readings"),
            headers=auth(await fleet.agent()),
        )
        return response.status_code == 200

    await eventually(known, timeout=30, what="meters knows the device")


@pytest.fixture(scope="module")
async def world(platform: Platform) -> AsyncIterator[World]:
    async with httpx.AsyncClient(timeout=20) as client:
        fleet = Fleet(platform, client)
        own, foreign = await fleet.create_org(), await fleet.create_org()
        for org in (own, foreign):
            for _ in range(3):
                await fleet.add_device(org)
        admin = await fleet.admin(own)
        tokens: dict[str, str | None] = {"admin": admin.token, "anonymous": None}
        for role in CUSTOMER_ROLES[1:]:
            devices = own.device_ids[:1] if role != "kb_viewer" else []
            tokens[role] = (await fleet.invite(own, admin, role, devices)).token
        tokens["unassigned_manager"] = (
            await fleet.invite(own, admin, "device_manager", own.device_ids[1:2])
        ).token
        tokens["agent"] = await fleet.agent()
        for device_id in own.device_ids + foreign.device_ids:
            await _known_to_meters(fleet, device_id)
        yield World(fleet, own, foreign, tokens)


def readings_url(w: World, device_id: str) -> str:
    return w.fleet.url("meters", f"/meters/devices/{device_id}/readings")


async def test_manual_submission_once_a_day_and_lower_counters_refused_per_counter(
    world: World,
) -> None:
    device_id = world.own.device_ids[1]
    admin = auth(world.tokens["admin"] or "")
    url = readings_url(world, device_id)
    first = await world.fleet.http.post(
        url, json={"counters": {"total": 100, "black": 40}}, headers=admin
    )
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["source"] == "manual" and body["counters"] == {"total": 100, "black": 40}

    again = await world.fleet.http.post(
        url, json={"counters": {"total": 90, "black": 41}}, headers=admin
    )
    assert again.status_code == 422, again.text
    problem = again.json()
    assert problem["type"].endswith("/reading-refused")
    rules = {(r["rule"], r.get("counter")) for r in problem["refusals"]}
    assert rules == {("lower_than_previous", "total"), ("already_submitted_today", None)}
    lower = next(r for r in problem["refusals"] if r["rule"] == "lower_than_previous")
    assert (lower["previous"], lower["submitted"]) == (100, 90)
    today = next(r for r in problem["refusals"] if r["rule"] == "already_submitted_today")
    assert today["submitted_at"].startswith(body["read_at"][:16])


async def test_agents_enter_phoned_in_readings_with_a_reason(world: World) -> None:
    device_id = world.own.device_ids[2]
    agent = auth(world.tokens["agent"] or "")
    admin = auth(world.tokens["admin"] or "")
    url = readings_url(world, device_id)
    assert (
        await world.fleet.http.post(url, json={"counters": {"total": 5}}, headers=admin)
    ).status_code == 201
    no_reason = await world.fleet.http.post(url, json={"counters": {"total": 6}}, headers=agent)
    assert no_reason.status_code == 422 and no_reason.json()["type"].endswith("/reason-required")
    phoned = await world.fleet.http.post(
        url, json={"counters": {"total": 7}, "reason": "customer called"}, headers=agent
    )
    assert phoned.status_code == 201, phoned.text
    assert phoned.json()["source"] == "phoned_in" and phoned.json()["reason"] == "customer called"
    lower = await world.fleet.http.post(
        url, json={"counters": {"total": 6}, "reason": "customer called"}, headers=agent
    )
    assert lower.status_code == 422
    assert [r["rule"] for r in lower.json()["refusals"]] == ["lower_than_previous"]

    history = await world.fleet.http.get(url, headers=admin)
    assert [r["counters"]["total"] for r in history.json()["items"]] == [7, 5]  # newest first
    only_manual = await world.fleet.http.get(url, params={"source": "manual"}, headers=admin)
    assert [r["counters"]["total"] for r in only_manual.json()["items"]] == [5]
    billing = await world.fleet.http.get(
        world.fleet.url("meters", f"/meters/devices/{device_id}/billing"), headers=admin
    )
    assert billing.status_code == 200
    assert billing.json()["months"][0]["counters"]["total"]["value"] == 7


async def test_two_submissions_at_once_exactly_one_accepted(world: World) -> None:
    device_id = world.foreign.device_ids[0]
    agent = auth(world.tokens["agent"] or "")
    fleet = world.fleet
    # Customers of the other organisation would race; the agent's own submissions bypass the
    # day rule, so the race is between the organisation's admin-level manual submissions.
    foreign_admin = await fleet.admin(world.foreign)
    headers = auth(foreign_admin.token)
    responses = await asyncio.gather(
        *(
            fleet.http.post(
                readings_url(world, device_id),
                json={"counters": {"total": 10 + i}},
                headers=headers,
            )
            for i in range(2)
        )
    )
    assert sorted(r.status_code for r in responses) == [201, 422], [r.text for r in responses]
    history = await fleet.http.get(readings_url(world, device_id), headers=agent)
    assert len(history.json()["items"]) == 1


async def test_telemetry_reaches_the_history(world: World, platform: Platform) -> None:
    device_id, serial = world.own.device_ids[0], world.own.serials[0]
    producer = AIOKafkaProducer(**client_options(platform.kafka_bootstrap), acks="all")
    await producer.start()
    try:
        for total in (1000, 1000, 1010):
            report = {
                "serial": serial,
                "sent_at": datetime.now(UTC).isoformat(),
                "counters": {"total": total},
            }
            await producer.send_and_wait(
                "emaintenance.telemetry", json.dumps(report).encode(), key=serial.encode()
            )
    finally:
        await producer.stop()
    admin = auth(world.tokens["admin"] or "")

    async def automatic() -> list[int]:
        response = await world.fleet.http.get(
            readings_url(world, device_id), params={"source": "emaintenance"}, headers=admin
        )
        items = response.json()["items"]
        return [r["counters"]["total"] for r in items] if len(items) == 2 else []

    assert await eventually(automatic, timeout=30) == [1010, 1000]


async def test_readings_of_a_removed_device_are_refused(world: World) -> None:
    fleet = world.fleet
    device_id = world.foreign.device_ids[2]
    agent = auth(world.tokens["agent"] or "")
    removed = await fleet.http.delete(fleet.url("devices", f"/devices/{device_id}"), headers=agent)
    assert removed.status_code == 204, removed.text

    accepted: list[int] = []

    async def refused() -> bool:
        response = await fleet.http.post(
            readings_url(world, device_id),
            json={"counters": {"total": 1 + len(accepted)}, "reason": "customer called"},
            headers=agent,
        )
        if response.status_code == 201:
            # Meters learns of the removal from devices' state topic: until it has, a submission
            # can still be accepted. Once one has been refused, none may be accepted again.
            accepted.append(response.status_code)
            return False
        assert response.status_code == 422, response.text
        rules = [refusal["rule"] for refusal in response.json()["refusals"]]
        return "device_removed" in rules

    await eventually(refused, timeout=30)
    for total in (100, 200):
        again = await fleet.http.post(
            readings_url(world, device_id),
            json={"counters": {"total": total}, "reason": "customer called"},
            headers=agent,
        )
        assert again.status_code == 422, again.text
        assert "device_removed" in [r["rule"] for r in again.json()["refusals"]]


# --- who may do what ---------------------------------------------------------------------------

# (role) -> expected status on (own organisation's device assigned to managers, foreign device)
READ = {
    "admin": (200, 404),
    "device_manager": (200, 404),
    "device_stock_manager": (200, 404),
    "unassigned_manager": (404, 404),
    "stock_manager": (403, 404),
    "kb_viewer": (404, 404),
    "agent": (200, 200),
    "anonymous": (401, 401),
}


@pytest.mark.parametrize("role", sorted(READ))
async def test_authorization_table(world: World, role: str) -> None:
    token = world.tokens[role]
    headers = auth(token) if token else {}
    fleet = world.fleet
    for column, device_id in enumerate((world.own.device_ids[0], world.foreign.device_ids[1])):
        expected = READ[role][column]
        for path in ("readings", "billing"):
            response = await fleet.http.get(
                fleet.url("meters", f"/meters/devices/{device_id}/{path}"), headers=headers
            )
            assert response.status_code == expected, (role, column, path, response.text)
        body = {"counters": {"total": 1}, "reason": "customer called"}
        posted = await fleet.http.post(readings_url(world, device_id), json=body, headers=headers)
        if expected == 200:
            # Allowed: decided on the rules (accepted, or refused as lower / already today).
            assert posted.status_code in (201, 422), (role, column, posted.text)
            if posted.status_code == 422:
                assert posted.json()["type"].endswith("/reading-refused")
        else:
            assert posted.status_code == expected, (role, column, posted.text)


async def test_unknown_device_is_not_found(world: World) -> None:
    response = await world.fleet.http.get(
        readings_url(world, unique("nodevice")), headers=auth(world.tokens["agent"] or "")
    )
    assert response.status_code == 404
