"""Sign-in throttling, bounded hashing, registration and the account balance, against a real
MongoDB-wire server (identity's use cases with its real store; no HTTP)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import pytest
from argon2 import PasswordHasher

from services.identity.adapters.passwords import Passwords
from services.identity.adapters.store import INDEXES, USERS_COLL, IdentityStore
from services.identity.core.model import RegistrationCreate, balance_fields
from services.identity.use_cases.registration import register
from shared import projections
from shared.config import MongoSettings
from shared.contracts import Role
from shared.events import utcnow
from shared.http import Problem
from shared.store import Mongo
from tests.integration.test_identity_store import (
    PASSWORD,
    active_user,
    identity,
    new_org,
    signed_in,
)

pytestmark = pytest.mark.integration

WRONG = "Wrong-pass-1"
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
async def store(mongo_settings: MongoSettings) -> AsyncIterator[IdentityStore]:
    async with Mongo(mongo_settings, "identity") as mongo:
        await mongo.ensure_indexes(INDEXES)
        yield IdentityStore(mongo.db)


async def status_of(attempt: object) -> int:
    try:
        await attempt  # type: ignore[misc]
        return 200
    except Problem as problem:
        return problem.status


def address() -> str:
    n = uuid.uuid4().int
    return f"10.{n % 250}.{n // 250 % 250}.{n // 62500 % 250}"


async def test_thirty_concurrent_wrong_passwords_check_at_most_the_account_limit(
    store: IdentityStore,
) -> None:
    service = identity(store, identity_signin_account_limit=5)
    user_id = await active_user(store, None, Role.AGENT)
    email, client = f"{user_id}@customer.example.com", address()
    statuses = await asyncio.gather(
        *(status_of(signed_in(service, email, WRONG, client)) for _ in range(30))
    )
    # A slot per attempt, taken before the password is checked: five checked, the rest refused.
    assert Counter(statuses) == {401: 5, 429: 25}


async def test_an_attacker_failing_on_purpose_does_not_lock_the_owner_out_elsewhere(
    store: IdentityStore,
) -> None:
    service = identity(store, identity_signin_account_limit=5)
    user_id = await active_user(store, None, Role.AGENT)
    email, attacker, owner = f"{user_id}@customer.example.com", address(), address()
    statuses = [await status_of(signed_in(service, email, WRONG, attacker)) for _ in range(8)]
    assert statuses == [401] * 5 + [429] * 3
    assert (await signed_in(service, email, PASSWORD, owner)).count(".") == 2
    # The attacker's address stays refused for that account, even with the right password.
    assert await status_of(signed_in(service, email, PASSWORD, attacker)) == 429


async def test_spraying_from_a_shared_address_spares_accounts_known_there(
    store: IdentityStore,
) -> None:
    service = identity(store, identity_signin_client_limit=5, identity_signin_account_limit=5)
    office = address()
    agent = await active_user(store, None, Role.AGENT)
    agent_email = f"{agent}@customer.example.com"
    await signed_in(service, agent_email, PASSWORD, office)  # the agent works from there
    newcomer = await active_user(store, None, Role.AGENT)
    spray = [
        await status_of(signed_in(service, f"{uuid.uuid4().hex}@x.example.com", WRONG, office))
        for _ in range(7)
    ]
    assert spray == [401] * 5 + [429] * 2
    # The per-address limit holds for an account never used from there...
    newcomer_status = await status_of(
        signed_in(service, f"{newcomer}@customer.example.com", PASSWORD, office)
    )
    assert newcomer_status == 429
    # ...but the agent who signs in from that office is not locked out by the attacker.
    assert (await signed_in(service, agent_email, PASSWORD, office)).count(".") == 2


async def test_guessing_from_many_addresses_meets_the_account_cap_but_not_known_clients(
    store: IdentityStore,
) -> None:
    service = identity(
        store, identity_signin_account_limit=2, identity_signin_account_total_limit=6
    )
    user_id = await active_user(store, None, Role.AGENT)
    email, home = f"{user_id}@customer.example.com", address()
    await signed_in(service, email, PASSWORD, home)
    statuses = [
        await status_of(signed_in(service, email, WRONG, client))
        for client in [address() for _ in range(4)]
        for _ in range(2)
    ]
    assert statuses.count(401) == 6 and statuses[-2:] == [429, 429]
    assert await status_of(signed_in(service, email, PASSWORD, address())) == 429
    assert (await signed_in(service, email, PASSWORD, home)).count(".") == 2


async def test_password_hashes_never_run_beyond_the_bound() -> None:
    passwords = Passwords(concurrency=2, queue=100, hasher=CHEAP)
    try:
        hashes = await asyncio.gather(*(passwords.hash(f"Password-{i}") for i in range(12)))
        assert len(set(hashes)) == 12
        assert passwords.peak == 2
    finally:
        passwords.close()


async def test_a_flood_beyond_the_queue_is_answered_503_at_once() -> None:
    passwords = Passwords(concurrency=1, queue=2, hasher=CHEAP)
    try:
        results = await asyncio.gather(
            *(passwords.verify(None, "x") for _ in range(10)), return_exceptions=True
        )
        refused = [r for r in results if isinstance(r, Problem)]
        assert len(refused) == 7 and {r.status for r in refused} == {503}
        assert refused[0].headers == {"Retry-After": "1"}
        assert passwords.peak == 1
    finally:
        passwords.close()


async def registered_org(store: IdentityStore) -> tuple[dict[str, object], str]:
    org = await new_org(store)
    serial = f"SN{uuid.uuid4().hex[:10]}"
    await store.db[projections.DEVICES].insert_one(
        {"_id": uuid.uuid4().hex, "serial": serial, "org_id": org["_id"], "removed": False}
    )
    return org, serial


def registration(org: dict[str, object], serial: str, email: str) -> RegistrationCreate:
    return RegistrationCreate(
        email=email,
        password=PASSWORD,
        name="Maija",
        customer_number=str(org["customer_number"]),
        serial=serial,
    )


async def test_a_taken_address_answers_like_a_new_one_and_its_owner_hears_once_a_day(
    store: IdentityStore,
) -> None:
    service = identity(store)
    org, serial = await registered_org(store)
    owner = await active_user(store, org["_id"], Role.ADMIN)  # type: ignore[arg-type]
    email = f"{owner}@customer.example.com"
    answers = [await register(registration(org, serial, email), service) for _ in range(2)]
    assert len(set(answers)) == 2 and owner not in answers
    assert [u["_id"] for u in await store.users_of_org(str(org["_id"]))] == [owner]
    doc = await store.users.find_one({"_id": owner})
    assert doc is not None
    notices = [e for e in doc["outbox"].values() if "account-exists" in e["event_type"]]
    assert len(notices) == 1 and notices[0]["payload"]["user_id"] == owner


async def test_a_stale_pending_registration_frees_its_address_once_even_when_raced(
    store: IdentityStore,
) -> None:
    service = identity(store, identity_pending_registration_days=7)
    org, serial = await registered_org(store)
    email = f"{uuid.uuid4().hex}@customer.example.com"
    first = await register(registration(org, serial, email), service)
    # Younger than the limit: the address stays taken.
    assert await register(registration(org, serial, email), service) != first
    assert (await store.user_by_email(email) or {})["_id"] == first
    await store.db[USERS_COLL].update_one(
        {"_id": first}, {"$set": {"created_at": utcnow() - timedelta(days=8)}}
    )
    answers = await asyncio.gather(
        *(register(registration(org, serial, email), service) for _ in range(4))
    )
    holders = [u async for u in store.users.find({"email": email})]
    assert len(holders) == 1 and holders[0]["_id"] in answers and holders[0]["_id"] != first
    assert await store.user(first) is None


async def test_the_balance_counts_every_entry_exactly(store: IdentityStore) -> None:
    customer = uuid.uuid4().hex[:12]
    amounts = [Decimal("0.01"), Decimal("1234.50"), Decimal("7"), Decimal("0.333")]
    expected = Decimal(0)
    entries = []
    for i in range(620):
        kind = "invoice" if i % 3 else "payment"
        amount = amounts[i % len(amounts)]
        expected += amount if kind == "invoice" else -amount
        entries.append(
            {
                "_id": f"{customer}-{i}",
                "customer_number": customer,
                "kind": kind,
                "amount": str(amount),
                "currency": "EUR",
                "reference": "r",
                "booked_at": utcnow(),
                **balance_fields(kind, amount, "EUR"),
            }
        )
    for start in range(0, len(entries), 100):
        await store.db["account_entries"].insert_many(entries[start : start + 100])
    assert await store.account_balance(customer) == {"EUR": expected}
    assert len(await store.account_entries(customer)) == 500  # the view: the latest 500
