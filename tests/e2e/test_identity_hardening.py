"""Identity hardened, end to end against the running platform: sign-in limits under
concurrency and per client, trusted proxies, invitations and weak passwords, request bodies
without a length, sealed tokens, registration without enumeration, and the account balance."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from shared.contracts import DEAD_LETTER, IDENTITY_NOTIFICATIONS
from shared.sealing import SealError, SealingKey
from tests.e2e.flows import PASSWORD, Fleet, Org, Platform, auth, records_with_key, unique
from tests.support import eventually, read_topic

pytestmark = pytest.mark.e2e

WRONG = "Wrong-password-1"


@pytest.fixture
async def fleet(platform: Platform) -> AsyncIterator[Fleet]:
    async with httpx.AsyncClient(timeout=60) as client:
        yield Fleet(platform, client)


def client_address() -> str:
    """A client address of its own (documentation range), named to the trusted proxy."""
    return f"198.51.100.{secrets.randbelow(254) + 1}, 203.0.113.{secrets.randbelow(254) + 1}"


async def sign_in_from(
    fleet: Fleet, forwarded_for: str, email: str, password: str, http: httpx.AsyncClient | None
) -> httpx.Response:
    return await (http or fleet.http).post(
        fleet.url("identity", "/identity/token"),
        data={"username": email, "password": password},
        headers={"X-Forwarded-For": forwarded_for},
    )


async def identity_db(platform: Platform) -> AsyncIterator[Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(platform.mongo_url, tz_aware=True)
    try:
        yield client[f"{platform.database_prefix}_identity"]
    finally:
        await client.close()


@pytest.fixture
async def db(platform: Platform) -> AsyncIterator[Any]:
    async for database in identity_db(platform):
        yield database


async def org_with_admin(fleet: Fleet) -> tuple[Org, Any]:
    org = await fleet.create_org()
    await fleet.add_device(org)
    return org, await fleet.admin(org)


async def test_thirty_concurrent_wrong_passwords_check_at_most_five(fleet: Fleet) -> None:
    _org, admin = await org_with_admin(fleet)
    client = client_address()
    responses = await asyncio.gather(
        *(sign_in_from(fleet, client, admin.email, WRONG, None) for _ in range(30))
    )
    assert Counter(r.status_code for r in responses) == {401: 5, 429: 25}
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["type"].endswith("/too-many-attempts")
    assert 0 < int(refused.headers["Retry-After"]) <= 900


async def test_failing_from_one_address_locks_out_neither_the_owner_nor_others_there(
    fleet: Fleet, platform: Platform
) -> None:
    _org, admin = await org_with_admin(fleet)
    attacker = client_address()
    made_up = f"{unique('nobody')}@customer.example.com"
    for email in (made_up, admin.email):
        statuses = [(await sign_in_from(fleet, attacker, email, WRONG, None)).status_code]
        statuses += [
            r.status_code
            for r in await asyncio.gather(
                *(sign_in_from(fleet, attacker, email, WRONG, None) for _ in range(29))
            )
        ]
        assert statuses.count(401) <= 5 and statuses.count(429) >= 25
    # The owner signs in from elsewhere; the agent from the attacker's very address.
    owner = await sign_in_from(fleet, client_address(), admin.email, PASSWORD, None)
    assert owner.status_code == 200, owner.text
    agent = await sign_in_from(fleet, attacker, platform.agent_email, platform.agent_password, None)
    assert agent.status_code == 200, agent.text


async def test_forwarded_for_is_believed_only_from_trusted_proxies(fleet: Fleet) -> None:
    _org, admin = await org_with_admin(fleet)
    blocked = client_address()
    for _ in range(5):
        assert (await sign_in_from(fleet, blocked, admin.email, WRONG, None)).status_code == 401
    assert (await sign_in_from(fleet, blocked, admin.email, PASSWORD, None)).status_code == 429
    # Behind the trusted proxy (127.0.0.1) each forwarded client is itself...
    elsewhere = await sign_in_from(fleet, client_address(), admin.email, PASSWORD, None)
    assert elsewhere.status_code == 200
    # ...while a caller that is no trusted proxy (127.0.0.2) cannot pick its address: the
    # blocked client's name in its header means nothing, it is counted as 127.0.0.2.
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(transport=transport, timeout=60) as direct:
        spoofed = await sign_in_from(fleet, blocked, admin.email, WRONG, direct)
        assert spoofed.status_code == 401
        for _ in range(4):
            await sign_in_from(fleet, client_address(), admin.email, WRONG, direct)
        own = await sign_in_from(fleet, client_address(), admin.email, PASSWORD, direct)
        assert own.status_code == 429  # five failures of 127.0.0.2, whatever it claimed


async def test_a_weak_password_leaves_the_invitation_usable(fleet: Fleet) -> None:
    org, admin = await org_with_admin(fleet)
    email = f"{unique('inv')}@customer.example.com"
    invited = await fleet.http.post(
        fleet.url("identity", f"/identity/organisations/{org.org_id}/invitations"),
        json={"email": email, "role": "kb_viewer"},
        headers=auth(admin.token),
    )
    assert invited.status_code == 201, invited.text
    event = await fleet.notification(invited.json()["user_id"], "identity.invitation-issued")
    accept = fleet.url("identity", "/identity/invitations/accept")
    token = fleet.p.open_token(event)
    weak = await fleet.http.post(accept, json={"token": token, "password": "short1"})
    assert weak.status_code == 422 and weak.json()["type"].endswith("/weak-password")
    ok = await fleet.http.post(accept, json={"token": token, "password": PASSWORD})
    assert ok.status_code == 200, ok.text
    assert (
        await fleet.http.post(accept, json={"token": token, "password": PASSWORD})
    ).status_code == 400
    assert (await fleet.sign_in(email, PASSWORD)).status_code == 200


async def test_a_chunked_body_over_the_limit_is_refused(fleet: Fleet) -> None:
    """5 MiB without Content-Length (chunked): refused with 413 after the first 64 KiB."""
    port = int(fleet.url("identity", "").rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunk = b" " * (64 * 1024)
    writer.write(
        b"POST /identity/registrations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    async def send_body() -> int:
        sent = 0
        try:
            writer.write(b"1\r\n{\r\n")
            for _ in range(80):  # 5 MiB
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                sent += len(chunk)
            writer.write(b"1\r\n}\r\n0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the server stopped reading: what the limit is for
        return sent

    sender = asyncio.create_task(send_body())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status = int(head.split(b" ", 2)[1])
    length = int(
        next(
            line.split(b":", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
    )
    body = json.loads(await asyncio.wait_for(reader.readexactly(length), 30))
    await sender
    writer.close()
    assert status == 413
    assert body["type"].endswith("/payload-too-large")


async def test_tokens_are_sealed_to_notify_and_usable_nowhere_else(
    fleet: Fleet, platform: Platform, db: Any
) -> None:
    org = await fleet.create_org()
    await fleet.add_device(org)
    user_id, _ = await fleet.register(org)
    event = await fleet.notification(user_id, "identity.confirmation-requested")
    assert "token" not in event
    raw = platform.open_token(event)  # notify's private key opens it...
    with pytest.raises(SealError):  # ...no other key does, nor the other context
        SealingKey.generate().open(event["sealed_token"], context="confirmation")
    with pytest.raises(SealError):
        SealingKey(platform.sealing_private_key).open(event["sealed_token"], context="invitation")
    # Nothing in identity's database, nor in any record on Kafka, carries the raw token.
    for name in await db.list_collection_names():
        async for doc in db[name].find({}):
            assert raw not in json.dumps(doc, default=str), f"raw token in {name}"
    for topic in (IDENTITY_NOTIFICATIONS.name, DEAD_LETTER.name):
        for record in await read_topic(platform.kafka_bootstrap, topic):
            assert raw.encode() not in (record.value or b"")
    confirm = fleet.url("identity", "/identity/registrations/confirm")
    box = {"token": event["sealed_token"]}  # the sealed box itself is no token
    assert (await fleet.http.post(confirm, json=box)).status_code in (400, 422)
    assert (await fleet.http.post(confirm, json={"token": raw})).status_code == 200


async def test_registering_a_taken_address_answers_like_a_new_one_and_tells_the_owner(
    fleet: Fleet,
) -> None:
    org, admin = await org_with_admin(fleet)
    new_id, _ = await fleet.register(org)
    taken_id, _ = await fleet.register(org, email=admin.email)  # asserts 202, like a new one
    assert taken_id not in (admin.user_id, new_id)
    # Same answer, field for field, but the user id.
    body = {
        "email": admin.email,
        "password": PASSWORD,
        "name": "Somebody",
        "customer_number": org.customer_number,
        "serial": org.serials[0],
    }
    again = await fleet.http.post(fleet.url("identity", "/identity/registrations"), json=body)
    fresh = await fleet.http.post(
        fleet.url("identity", "/identity/registrations"),
        json={**body, "email": f"{unique('n')}@customer.example.com"},
    )
    assert again.status_code == fresh.status_code == 202
    assert {k: v for k, v in again.json().items() if k != "user_id"} == {
        k: v for k, v in fresh.json().items() if k != "user_id"
    }
    notices = await records_with_key(
        fleet.p.kafka_bootstrap,
        IDENTITY_NOTIFICATIONS.name,
        admin.user_id,
        "identity.account-exists-notice",
    )
    assert len(notices) == 1 and notices[0]["email"] == admin.email  # once a day
    # Nothing changed for the owner.
    assert (await fleet.sign_in(admin.email, PASSWORD)).status_code == 200


async def test_a_stale_pending_registration_frees_the_address(
    fleet: Fleet, platform: Platform, db: Any
) -> None:
    org = await fleet.create_org()
    await fleet.add_device(org)
    stale_id, email = await fleet.register(org)
    stale_event = await fleet.notification(stale_id, "identity.confirmation-requested")
    await db["users"].update_one(
        {"_id": stale_id}, {"$set": {"created_at": datetime.now(UTC) - timedelta(days=8)}}
    )
    new_id, _ = await fleet.register(org, email=email)
    assert new_id != stale_id
    confirm = fleet.url("identity", "/identity/registrations/confirm")
    old_link = await fleet.http.post(confirm, json={"token": platform.open_token(stale_event)})
    assert old_link.status_code == 400
    assert (await fleet.confirm(new_id)).status_code == 200
    assert (await fleet.sign_in(email, PASSWORD)).status_code == 200


async def test_the_balance_counts_every_entry_not_the_latest_500(
    fleet: Fleet, platform: Platform
) -> None:
    from services.identity.billing_simulator import simulate

    org = await fleet.create_org()
    sent = await simulate(platform.kafka_bootstrap, org.customer_number, count=540, seed=11)
    expected = sum((e.amount if e.kind == "invoice" else -e.amount for e in sent), start=Decimal(0))
    latest_500 = sorted(sent, key=lambda e: e.booked_at)[-500:]
    partial = sum(
        (e.amount if e.kind == "invoice" else -e.amount for e in latest_500), start=Decimal(0)
    )
    assert partial != expected
    agent = await fleet.agent()

    async def balance() -> dict[str, Any] | None:
        r = await fleet.http.get(
            fleet.url("identity", f"/identity/organisations/{org.org_id}/account"),
            headers=auth(agent),
        )
        body: dict[str, Any] = r.json()
        return body if body["balance"] == {"EUR": str(expected)} else None

    await eventually(balance, timeout=120, interval=1)
    # The view reads its entries before its balance, so the read that first showed the whole
    # balance may list fewer entries than there are by now (the feed was still writing between
    # its two reads: seen in CI, 387 listed). Once the balance covers all 540, every entry is
    # stored, and a new read lists exactly the latest 500.
    account = await balance()
    assert account is not None
    assert [e["entry_id"] for e in account["entries"]] == [e.entry_id for e in reversed(latest_500)]
