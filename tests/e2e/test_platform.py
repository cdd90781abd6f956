"""The foundation end to end: five services ready on real Kafka and MongoDB-wire servers, their
operational endpoints, problem details, and one cross-service flow through a state topic."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from pymongo import AsyncMongoClient

from services.identity.adapters.keys import Signer, generate_private_pem
from shared.bus import Publisher
from shared.config import AuthSettings, Environment, KafkaSettings
from shared.contracts import ORGANISATIONS, SIGNING_KEYS, SigningKey
from tests.e2e.conftest import SERVICES
from tests.e2e.flows import Fleet, Platform, auth, unique
from tests.support import eventually, header, read_topic

pytestmark = pytest.mark.e2e


@pytest.fixture
async def fleet(platform: Platform) -> AsyncIterator[Fleet]:
    async with httpx.AsyncClient(timeout=20) as client:
        yield Fleet(platform, client)


@pytest.mark.parametrize("service", SERVICES)
async def test_service_is_live_ready_measured_and_documented(fleet: Fleet, service: str) -> None:
    base = fleet.p.urls[service]
    assert (await fleet.http.get(f"{base}/health")).json()["status"] == "ok"
    ready = await fleet.http.get(f"{base}/ready")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    # Every service checks these three; a service may add its own (meters: its faust worker).
    assert {"kafka", "mongodb", "consumers"} <= set(checks) and all(checks.values()), checks
    metrics = await fleet.http.get(f"{base}/metrics")
    assert "fleetdesk_http_requests_total" in metrics.text
    assert (await fleet.http.get(f"{base}/{service}/docs")).status_code == 200
    spec = (await fleet.http.get(f"{base}/{service}/openapi.json")).json()
    assert spec["info"]["title"] == f"Fleetdesk {service}"


@pytest.mark.parametrize("service", SERVICES)
async def test_errors_are_problem_details_without_internals(fleet: Fleet, service: str) -> None:
    base = fleet.p.urls[service]
    missing = await fleet.http.get(f"{base}/{service}/no/such/thing/here")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["type"].endswith("/not-found")
    unauthenticated = await fleet.http.get(
        f"{base}/devices" if service == "devices" else f"{base}/identity/me"
    )
    if service in ("devices", "identity"):
        assert unauthenticated.status_code == 401
        assert unauthenticated.json()["type"].endswith("/unauthenticated")


async def test_malformed_json_is_a_problem_not_a_crash(fleet: Fleet) -> None:
    response = await fleet.http.post(
        fleet.url("devices", "/devices"),
        content=b'{"org_id": ',
        headers={"content-type": "application/json", **auth(await fleet.agent())},
    )
    assert response.status_code == 422
    body = response.json()
    assert body["type"].endswith("/validation-error")
    assert "Traceback" not in response.text and "pymongo" not in response.text


async def test_organisation_reaches_devices_through_the_state_topic_with_its_correlation_id(
    fleet: Fleet,
) -> None:
    correlation_id = unique("corr")
    body = {"customer_number": unique("C"), "system_id": unique("S"), "name": "Flow Oy"}
    created = await fleet.http.post(
        fleet.url("identity", "/identity/organisations"),
        json=body,
        headers={**auth(await fleet.agent()), "X-Correlation-ID": correlation_id},
    )
    assert created.status_code == 201
    assert created.headers["X-Correlation-ID"] == correlation_id
    org_id = created.json()["org_id"]

    # The outbox relay published the organisation's state, carrying the request's correlation id.
    async def published() -> list[object]:
        records = await read_topic(fleet.p.kafka_bootstrap, ORGANISATIONS.name)
        return [r for r in records if r.key == org_id.encode()]

    (record,) = await eventually(published)
    assert header(record, "correlation_id") == correlation_id
    assert header(record, "event_type") == "identity.organisation.state"
    assert header(record, "producer") == "identity"

    # The devices service knows the organisation only from its own projection of that topic.
    device = {"org_id": org_id, "serial": unique("SN"), "model": "MX-4071"}

    async def accepted() -> httpx.Response | None:
        r = await fleet.http.post(
            fleet.url("devices", "/devices"), json=device, headers=auth(await fleet.agent())
        )
        assert r.status_code in (201, 422), r.text
        return r if r.status_code == 201 else None

    response = await eventually(accepted)
    assert response.json()["org_id"] == org_id
    unknown = await fleet.http.post(
        fleet.url("devices", "/devices"),
        json={**device, "org_id": "no-such-org", "serial": unique("SN")},
        headers=auth(await fleet.agent()),
    )
    assert unknown.status_code == 422
    assert unknown.json()["type"].endswith("/unknown-organisation")


async def test_a_crashed_service_restarts_on_its_data_and_catches_up(fleet: Fleet) -> None:
    """devices is killed (SIGKILL); what happened meanwhile reaches it after the restart, and
    what it had accepted before is still there."""
    org = await fleet.create_org()
    device_id = await fleet.add_device(org)
    agent = await fleet.agent()

    fleet.p.processes.kill("devices")
    later = await fleet.create_org()  # published while devices is down
    fleet.p.processes.start("devices")

    kept = await fleet.http.get(fleet.url("devices", f"/devices/{device_id}"), headers=auth(agent))
    assert kept.status_code == 200 and kept.json()["org_id"] == org.org_id
    await fleet.add_device(later)  # succeeds only once the projection caught up
    listed = await fleet.http.get(
        fleet.url("devices", "/devices"), params={"org_id": later.org_id}, headers=auth(agent)
    )
    assert [d["org_id"] for d in listed.json()] == [later.org_id]


async def test_signing_keys_rotate_and_retirement_is_final(
    fleet: Fleet, platform: Platform
) -> None:
    old_token = await fleet.agent()
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    env = platform.processes.env
    old_pem, new_pem = env["FLEETDESK_IDENTITY_SIGNING_KEY_PEM"], generate_private_pem()

    async def devices_status(token: str) -> int:
        response = await fleet.http.get(fleet.url("devices", "/devices"), headers=auth(token))
        return response.status_code

    assert await devices_status(old_token) == 200
    try:
        env["FLEETDESK_IDENTITY_SIGNING_KEY_PEM"] = new_pem
        env["FLEETDESK_IDENTITY_RETIRED_KEY_IDS"] = old_kid
        restart_identity(platform)
        new_token = await fleet.token(platform.agent_email, platform.agent_password)
        assert jwt.get_unverified_header(new_token)["kid"] != old_kid

        async def rotated() -> bool:
            return await devices_status(new_token) == 200 and await devices_status(old_token) == 401

        await eventually(rotated)

        # A rollback to the old key (the retirement setting gone with it): identity refuses
        # to start rather than publish the retired key as valid again.
        env["FLEETDESK_IDENTITY_SIGNING_KEY_PEM"] = old_pem
        env.pop("FLEETDESK_IDENTITY_RETIRED_KEY_IDS")
        with pytest.raises(RuntimeError, match="was retired"):
            restart_identity(platform)

        # An older identity that knows no better publishes the key as not retired: every
        # service keeps it retired. A fresh key published after it, on the same partition,
        # shows when the services have read that far.
        marker_pem = generate_private_pem()
        marker = Signer.from_pem(marker_pem, Environment.TEST, AuthSettings(), 900)
        settings = KafkaSettings(bootstrap_servers=platform.kafka_bootstrap)
        async with Publisher(settings, "identity") as publisher:
            public = jwt.get_unverified_header(old_token)  # kid only; the PEM from the copy
            old_key = await old_signing_key(platform, public["kid"])
            await publisher.publish(
                SIGNING_KEYS, old_kid, old_key.model_copy(update={"retired": False})
            )
            await publisher.publish(SIGNING_KEYS, old_kid, marker.public_key())
        claims = jwt.decode(new_token, options={"verify_signature": False})
        marker_token = marker.issue(claims["sub"], claims.get("org"), claims.get("role"))

        async def marker_seen() -> bool:
            return await devices_status(marker_token) == 200

        await eventually(marker_seen)
        assert await devices_status(old_token) == 401
    finally:
        # The session goes on with the new key (platform.signing_key_pem follows the env).
        env["FLEETDESK_IDENTITY_SIGNING_KEY_PEM"] = new_pem
        env.pop("FLEETDESK_IDENTITY_RETIRED_KEY_IDS", None)
        restart_identity(platform)


def restart_identity(platform: Platform) -> None:
    proc = platform.processes.procs.get("identity")
    if proc is not None and proc.poll() is None:
        platform.processes.kill("identity")
    platform.processes.start("identity")


async def old_signing_key(platform: Platform, kid: str) -> SigningKey:
    """The key as the services hold it (from devices' copy of the signing-keys topic)."""
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(platform.mongo_url)
    try:
        doc = await client[f"{platform.database_prefix}_devices"]["signing_keys"].find_one(
            {"_id": kid}, {"_id": 0}
        )
    finally:
        await client.close()
    assert doc is not None and doc["retired"] is True
    return SigningKey.model_validate(doc)
