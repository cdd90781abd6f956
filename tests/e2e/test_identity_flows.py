"""Identity end to end: registration, confirmation, sign-in, roles and agent tools, over HTTP and
Kafka against the real platform."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from pymongo import AsyncMongoClient

from tests.e2e.flows import PASSWORD, Fleet, Platform, auth, unique
from tests.support import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
async def fleet(platform: Platform) -> AsyncIterator[Fleet]:
    async with httpx.AsyncClient(timeout=20) as client:
        yield Fleet(platform, client)


async def test_register_confirm_sign_in_and_another_service_accepts_the_token(fleet: Fleet) -> None:
    org = await fleet.create_org()
    device_id = await fleet.add_device(org)
    user_id, email = await fleet.register(org)

    # Unconfirmed: cannot sign in.
    refused = await fleet.sign_in(email, PASSWORD)
    assert refused.status_code == 403
    assert refused.json()["type"].endswith("/account-not-confirmed")

    event = await fleet.notification(user_id, "identity.confirmation-requested")
    assert event["email"] == email and event["language"] == "fi"
    confirmed = await fleet.confirm(user_id)
    assert confirmed.status_code == 200
    assert confirmed.json()["status"] == "active"
    assert confirmed.json()["role"] == "admin"  # the organisation's first confirmed user

    token = await fleet.token(email)
    me = await fleet.http.get(fleet.url("identity", "/identity/me"), headers=auth(token))
    assert me.json()["user_id"] == user_id and me.json()["org_id"] == org.org_id

    # The devices service verifies the token offline and scopes the answer to the organisation.
    async def sees_device() -> bool:
        r = await fleet.http.get(fleet.url("devices", "/devices"), headers=auth(token))
        return r.status_code == 200 and [d["device_id"] for d in r.json()] == [device_id]

    await eventually(sees_device)


async def test_second_user_has_no_role_until_an_admin_gives_one_and_devices(fleet: Fleet) -> None:
    org = await fleet.create_org()
    device_a = await fleet.add_device(org)
    device_b = await fleet.add_device(org)
    admin = await fleet.admin(org)

    user_id, email = await fleet.register(org)
    assert (await fleet.confirm(user_id)).json()["role"] is None
    token = await fleet.token(email)
    me = await fleet.http.get(fleet.url("identity", "/identity/me"), headers=auth(token))
    assert me.json()["role"] is None
    refused = await fleet.http.get(fleet.url("devices", "/devices"), headers=auth(token))
    assert refused.status_code == 403

    role = await fleet.http.put(
        fleet.url("identity", f"/identity/users/{user_id}/role"),
        json={"role": "device_manager"},
        headers=auth(admin.token),
    )
    assert role.status_code == 200 and role.json()["role"] == "device_manager"
    assigned = await fleet.http.put(
        fleet.url("identity", f"/identity/users/{user_id}/devices"),
        json={"device_ids": [device_b]},
        headers=auth(admin.token),
    )
    assert assigned.status_code == 200 and assigned.json()["device_ids"] == [device_b]

    # The devices service learns the assignment from the users state topic: only device B.
    async def sees_only_b() -> bool:
        r = await fleet.http.get(fleet.url("devices", "/devices"), headers=auth(token))
        return r.status_code == 200 and [d["device_id"] for d in r.json()] == [device_b]

    await eventually(sees_only_b)
    hidden = await fleet.http.get(fleet.url("devices", f"/devices/{device_a}"), headers=auth(token))
    assert hidden.status_code == 404

    # The device manager may not give roles, to others or to themself.
    for target in (admin.user_id, user_id):
        denied = await fleet.http.put(
            fleet.url("identity", f"/identity/users/{target}/role"),
            json={"role": "admin"},
            headers=auth(token),
        )
        assert denied.status_code == 403
        assert denied.headers["content-type"] == "application/problem+json"
    denied = await fleet.http.put(
        fleet.url("identity", f"/identity/users/{user_id}/devices"),
        json={"device_ids": [device_a, device_b]},
        headers=auth(token),
    )
    assert denied.status_code == 403

    # The admin makes the user an admin too; now the first admin may step down.
    promoted = await fleet.http.put(
        fleet.url("identity", f"/identity/users/{user_id}/role"),
        json={"role": "admin"},
        headers=auth(admin.token),
    )
    assert promoted.status_code == 200 and promoted.json()["role"] == "admin"
    step_down = await fleet.http.put(
        fleet.url("identity", f"/identity/users/{admin.user_id}/role"),
        json={"role": "kb_viewer"},
        headers=auth(admin.token),
    )
    assert step_down.status_code == 200 and step_down.json()["role"] == "kb_viewer"


async def test_the_last_admin_cannot_be_demoted(fleet: Fleet) -> None:
    org = await fleet.create_org()
    await fleet.add_device(org)
    admin = await fleet.admin(org)
    response = await fleet.http.put(
        fleet.url("identity", f"/identity/users/{admin.user_id}/role"),
        json={"role": "device_manager"},
        headers=auth(admin.token),
    )
    assert response.status_code == 409
    assert response.json()["type"].endswith("/last-admin")
    me = await fleet.http.get(fleet.url("identity", "/identity/me"), headers=auth(admin.token))
    assert me.json()["role"] == "admin"


async def test_agent_corrects_email_and_resends_confirmation(fleet: Fleet) -> None:
    org = await fleet.create_org()
    await fleet.add_device(org)
    user_id, wrong_email = await fleet.register(org)
    first = await fleet.notification(user_id, "identity.confirmation-requested")
    agent = await fleet.agent()

    right_email = f"{unique('fixed')}@customer.example.com"
    corrected = await fleet.http.put(
        fleet.url("identity", f"/identity/users/{user_id}/email"),
        json={"email": right_email},
        headers=auth(agent),
    )
    assert corrected.status_code == 200 and corrected.json()["email"] == right_email

    async def confirmation_to_new_address() -> dict[str, str] | None:
        event = await fleet.notification(user_id, "identity.confirmation-requested")
        return event if event["email"] == right_email else None

    second = await eventually(confirmation_to_new_address)
    resent = await fleet.http.post(
        fleet.url("identity", f"/identity/users/{user_id}/confirmation"), headers=auth(agent)
    )
    assert resent.status_code == 202

    async def third_confirmation() -> dict[str, str] | None:
        event = await fleet.notification(user_id, "identity.confirmation-requested")
        fresh = event["sealed_token"] not in (first["sealed_token"], second["sealed_token"])
        return event if fresh else None

    third = await eventually(third_confirmation)
    confirm_url = fleet.url("identity", "/identity/registrations/confirm")
    # Superseded links no longer work; the latest one does, once.
    for stale in (first, second):
        response = await fleet.http.post(confirm_url, json={"token": fleet.p.open_token(stale)})
        assert response.status_code == 400
        assert response.json()["type"].endswith("/token-invalid")
    latest = {"token": fleet.p.open_token(third)}
    assert (await fleet.http.post(confirm_url, json=latest)).status_code == 200
    reused = await fleet.http.post(confirm_url, json=latest)
    assert reused.status_code == 400
    assert (await fleet.sign_in(wrong_email, PASSWORD)).status_code == 401
    assert (await fleet.sign_in(right_email, PASSWORD)).status_code == 200


async def test_expired_confirmation_and_expired_access_tokens_are_refused(
    fleet: Fleet, platform: Platform
) -> None:
    org = await fleet.create_org()
    await fleet.add_device(org)
    user_id, _email = await fleet.register(org)
    event = await fleet.notification(user_id, "identity.confirmation-requested")
    # Let the link's lifetime pass: move its expiry into the past in identity's own database.
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(platform.mongo_url)
    try:
        tokens = client[f"{platform.database_prefix}_identity"]["tokens"]
        result = await tokens.update_many(
            {"user_id": user_id}, {"$set": {"expires_at": datetime.now(UTC) - timedelta(minutes=1)}}
        )
        assert result.modified_count >= 1
    finally:
        await client.close()
    expired = await fleet.http.post(
        fleet.url("identity", "/identity/registrations/confirm"),
        json={"token": platform.open_token(event)},
    )
    assert expired.status_code == 400

    # An access token past its expiry, signed with the real key, is refused by every service.
    agent_token = await fleet.agent()
    kid = jwt.get_unverified_header(agent_token)["kid"]
    claims = jwt.decode(agent_token, options={"verify_signature": False})
    now = int(time.time())
    stale = jwt.encode(
        {**claims, "iat": now - 3600, "nbf": now - 3600, "exp": now - 1800},
        platform.signing_key_pem,
        algorithm="EdDSA",
        headers={"kid": kid},
    )
    for service, path in (("identity", "/identity/me"), ("devices", "/devices")):
        response = await fleet.http.get(fleet.url(service, path), headers=auth(stale))
        assert response.status_code == 401
        assert response.json()["detail"] == "the token has expired"
    forged = jwt.encode(claims, generate_other_key(), algorithm="EdDSA", headers={"kid": kid})
    response = await fleet.http.get(fleet.url("devices", "/devices"), headers=auth(forged))
    assert response.status_code == 401


def generate_other_key() -> str:
    from services.identity.adapters.keys import generate_private_pem

    return generate_private_pem()


@pytest.mark.parametrize(
    ("change", "slug"),
    [
        ({"email": None}, "validation-error"),
        ({"email": "not-an-address"}, "validation-error"),
        ({"customer_number": "NO-SUCH-CUSTOMER"}, "registration-proof-invalid"),
        ({"serial": "WRONG-SERIAL-1"}, "registration-proof-invalid"),
        ({"password": "short1"}, "weak-password"),
        ({"password": "onlyletterslong"}, "weak-password"),
        ({"name": "x" * 500}, "validation-error"),
        ({"customer_number": "C" * 100}, "validation-error"),
        ({"language": "de"}, "validation-error"),
    ],
)
async def test_bad_registrations_get_problem_details_and_create_nothing(
    fleet: Fleet, change: dict[str, object], slug: str
) -> None:
    org = await fleet.create_org()
    await fleet.add_device(org)
    await fleet.admin(org)  # also proves the serial is known to identity by now
    email = f"{unique('bad')}@customer.example.com"
    body: dict[str, object] = {
        "email": email,
        "password": PASSWORD,
        "name": "Bad Input",
        "language": "fi",
        "customer_number": org.customer_number,
        "serial": org.serials[0],
        **change,
    }
    body = {k: v for k, v in body.items() if v is not None}
    response = await fleet.http.post(fleet.url("identity", "/identity/registrations"), json=body)
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("/" + slug)
    assert problem["status"] == response.status_code and problem["detail"]
    if change == {"email": None}:
        assert "email" in problem["detail"]
    users = await fleet.http.get(
        fleet.url("identity", f"/identity/organisations/{org.org_id}/users"),
        headers=auth(await fleet.agent()),
    )
    assert len(users.json()) == 1  # only the admin: nothing was created


async def test_oversized_body_is_refused(fleet: Fleet) -> None:
    response = await fleet.http.post(
        fleet.url("identity", "/identity/registrations"),
        content=b"{" + b" " * (100 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["type"].endswith("/payload-too-large")


async def test_sign_in_attempts_are_rate_limited_per_account(fleet: Fleet) -> None:
    org = await fleet.create_org()
    await fleet.add_device(org)
    admin = await fleet.admin(org)
    statuses = [
        (await fleet.sign_in(admin.email, "Wrong-password-1")).status_code for _ in range(6)
    ]
    assert statuses[:5] == [401] * 5
    assert statuses[5] == 429
    # Even the right password is refused while the account is locked out.
    locked = await fleet.sign_in(admin.email, PASSWORD)
    assert locked.status_code == 429 and "Retry-After" in locked.headers


async def test_agent_sees_account_history_from_billing_events(
    fleet: Fleet, platform: Platform
) -> None:
    from services.identity.billing_simulator import simulate

    org = await fleet.create_org()
    sent = await simulate(platform.kafka_bootstrap, org.customer_number, count=4, seed=7)
    agent = await fleet.agent()

    async def entries(expected: int) -> dict[str, Any] | None:
        r = await fleet.http.get(
            fleet.url("identity", f"/identity/organisations/{org.org_id}/account"),
            headers=auth(agent),
        )
        body: dict[str, Any] = r.json()
        return body if r.status_code == 200 and len(body["entries"]) == expected else None

    account = await eventually(lambda: entries(4))
    assert {e["entry_id"] for e in account["entries"]} == {e.entry_id for e in sent}
    invoiced = sum(e.amount for e in sent if e.kind == "invoice")
    paid = sum(e.amount for e in sent if e.kind != "invoice")
    assert account["balance"] == {"EUR": str(invoiced - paid)}
    # The same entries again (a redelivery), then one new one on the same partition: only the
    # new one counts.
    await simulate(platform.kafka_bootstrap, org.customer_number, count=4, seed=7)
    extra = await simulate(platform.kafka_bootstrap, org.customer_number, count=1, seed=8)
    again = await eventually(lambda: entries(5))
    assert {e["entry_id"] for e in again["entries"]} == {e.entry_id for e in sent + extra}


async def test_malformed_billing_events_are_dead_lettered_and_the_feed_goes_on(
    fleet: Fleet, platform: Platform
) -> None:
    from services.identity.billing_simulator import simulate
    from shared.bus import Publisher
    from shared.config import KafkaSettings
    from shared.contracts import BILLING_ACCOUNT_EVENTS, DEAD_LETTER
    from tests.support import read_topic

    org = await fleet.create_org()
    bad = b'{"entry_id": "x", "customer_number": "' + org.customer_number.encode() + b'"}'
    settings = KafkaSettings(bootstrap_servers=platform.kafka_bootstrap)
    async with Publisher(settings, "billing-test") as publisher:
        await publisher.send_raw(BILLING_ACCOUNT_EVENTS.name, org.customer_number, bad, [])
    sent = await simulate(platform.kafka_bootstrap, org.customer_number, count=1, seed=3)

    async def parked() -> list[dict[str, Any]]:
        return [
            letter
            for r in await read_topic(platform.kafka_bootstrap, DEAD_LETTER.name)
            # Other tests' records share the topic (the ACL tests write probes): match ours only.
            if (letter := json.loads(r.value)).get("value") == bad.decode()
        ]

    (letter,) = await eventually(parked)
    assert letter["original_topic"] == BILLING_ACCOUNT_EVENTS.name
    assert letter["consumer_group"] == "identity.billing"
    assert letter["attempts"] == 1 and "invalid AccountEvent" in letter["error"]
    assert "kind" in letter["error"] and "amount" in letter["error"]

    async def good_one_recorded() -> bool:
        r = await fleet.http.get(
            fleet.url("identity", f"/identity/organisations/{org.org_id}/account"),
            headers=auth(await fleet.agent()),
        )
        return [e["entry_id"] for e in r.json()["entries"]] == [sent[0].entry_id]

    await eventually(good_one_recorded)


async def test_personal_data_stays_out_of_the_logs(fleet: Fleet, platform: Platform) -> None:
    org = await fleet.create_org()
    await fleet.add_device(org)
    marker = unique("privacy")
    email = f"{marker}@customer.example.com"
    user_id, _ = await fleet.register(org, email=email)
    await fleet.sign_in(email, "Wrong-password-1")
    assert (await fleet.confirm(user_id)).status_code == 200
    token = await fleet.token(email)
    await fleet.http.get(fleet.url("identity", "/identity/me"), headers=auth(token))
    event = await fleet.notification(user_id, "identity.confirmation-requested")
    logs = sorted(platform.logs.glob("*.log"))
    assert {log.stem for log in logs} >= {"identity", "devices"}
    for log in logs:
        text = log.read_text(errors="replace")
        assert '"service started"' in text
        assert marker not in text, f"{log.name} mentions the user's e-mail address"
        raw = platform.open_token(event)
        assert PASSWORD not in text and raw not in text and token not in text
