"""Identity's rules that hinge on atomic single-document writes, against a real MongoDB-wire
server: sign-in limits per account and per client address, single-use tokens under
concurrency, and the last admin under concurrent demotions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from argon2 import PasswordHasher

from services.identity.adapters.keys import Signer
from services.identity.adapters.passwords import Passwords
from services.identity.adapters.store import INDEXES, IdentityStore
from services.identity.adapters.throttle import SigninAttempts
from services.identity.config import IdentitySettings
from services.identity.core.signin import window
from services.identity.service_layer import Identity, sealer_for
from services.identity.use_cases.sign_in import SignIn, sign_in
from shared.auth import Principal
from shared.config import AuthSettings, Environment, MongoSettings
from shared.contracts import Role
from shared.events import utcnow
from shared.http import Problem
from shared.sealing import development_public_key
from shared.store import Mongo
from tests.support import eventually

pytestmark = pytest.mark.integration

PASSWORD = "Correct-horse-42"


@pytest.fixture
async def store(mongo_settings: MongoSettings) -> AsyncIterator[IdentityStore]:
    async with Mongo(mongo_settings, "identity") as mongo:
        await mongo.ensure_indexes(INDEXES)
        yield IdentityStore(mongo.db)


# Cheap Argon2 costs: these tests are about the rules around the hash, not its price (the
# production costs take over a second per hash on a busy 2-core machine).
PASSWORDS = Passwords(
    concurrency=4, queue=1000, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
)


async def hash_password(password: str) -> str:
    return await PASSWORDS.hash(password)


def identity(
    store: IdentityStore, passwords: Passwords = PASSWORDS, **settings: object
) -> Identity:
    config = IdentitySettings(**settings)  # type: ignore[arg-type]
    signer = Signer.from_pem("", Environment.DEVELOPMENT, AuthSettings(), 900)
    seal = sealer_for(development_public_key())
    return Identity(store, signer, config, passwords, SigninAttempts(store.db), seal)


async def signed_in(service: Identity, email: str, password: str, client: str) -> str:
    token, _ = await sign_in(SignIn(email, password, client), service)
    return token


async def new_org(store: IdentityStore) -> dict[str, Any]:
    return await store.create_org(
        {
            "customer_number": uuid.uuid4().hex[:12],
            "system_id": uuid.uuid4().hex[:12],
            "name": "Test Oy",
            "country": "FI",
            "timezone": "Europe/Helsinki",
            "language": "fi",
        }
    )


async def active_user(store: IdentityStore, org_id: str | None, role: Role | None) -> str:
    user_id = uuid.uuid4().hex
    await store.insert_user(
        {
            "_id": user_id,
            "org_id": org_id,
            "email": f"{user_id}@customer.example.com",
            "name": "Test",
            "language": "fi",
            "role": role.value if role else None,
            "device_ids": [],
            "status": "active",
            "password_hash": await hash_password(PASSWORD),
        }
    )
    return user_id


async def test_failed_sign_ins_are_limited_per_client_address(store: IdentityStore) -> None:
    service = identity(store, identity_signin_client_limit=3, identity_signin_account_limit=100)
    client = f"10.{uuid.uuid4().int % 250}.0.1"
    for _ in range(3):
        with pytest.raises(Problem) as failed:
            await signed_in(service, f"{uuid.uuid4().hex}@x.example.com", "Wrong-pass-1", client)
        assert failed.value.status == 401
    # A fourth guess from the same address is refused whatever account it names...
    user_id = await active_user(store, None, Role.AGENT)
    with pytest.raises(Problem) as limited:
        await signed_in(service, f"{user_id}@customer.example.com", PASSWORD, client)
    assert limited.value.status == 429
    # ...while another address signs in to that account normally.
    token = await signed_in(service, f"{user_id}@customer.example.com", PASSWORD, "10.9.9.9")
    assert token.count(".") == 2


async def test_account_limit_lifts_when_the_window_has_passed(store: IdentityStore) -> None:
    """Windows are fixed (numbered from the epoch), so a block never outlives its window,
    whatever restarts happen meanwhile: the counts live in the database under the window."""
    service = identity(store, identity_signin_account_limit=2, identity_signin_window_seconds=3)
    email = ""

    async def locked_out_within_one_window() -> bool:
        # A fresh account each try, so attempts of a try that straddled two windows do not
        # count against the next try.
        nonlocal email
        email = f"{await active_user(store, None, Role.AGENT)}@customer.example.com"
        first = window(utcnow(), 3)
        statuses = []
        for password in ("Wrong-pass-1", "Wrong-pass-1", PASSWORD):
            try:
                await signed_in(service, email, password, "10.0.0.2")
                statuses.append(200)
            except Problem as problem:
                statuses.append(problem.status)
        if window(utcnow(), 3) != first:
            return False  # the window turned meanwhile: try again in the next one
        assert statuses == [401, 401, 429]
        return True

    assert await eventually(locked_out_within_one_window, timeout=20, interval=0)

    async def lifted() -> str | None:
        try:
            return await signed_in(service, email, PASSWORD, "10.0.0.2")
        except Problem as problem:
            assert problem.status == 429
            return None

    assert await eventually(lifted, timeout=8, interval=0.2)


async def test_a_token_is_used_once_even_when_raced(store: IdentityStore) -> None:
    raw, _ = await store.issue_token("u-race", "confirm", timedelta(hours=1), email="x")
    results = await asyncio.gather(*(store.consume_token(raw, "confirm") for _ in range(8)))
    assert sum(r is not None for r in results) == 1
    assert await store.consume_token(raw, "confirm") is None
    assert await store.consume_token(raw, "invite") is None  # a purpose of its own


async def test_two_admins_demoting_each_other_at_once_leave_one_admin(
    store: IdentityStore,
) -> None:
    service = identity(store)
    org = await new_org(store)
    a = await active_user(store, org["_id"], Role.ADMIN)
    b = await active_user(store, org["_id"], Role.ADMIN)
    await store.add_admin(org["_id"], a)
    await store.add_admin(org["_id"], b)
    results = await asyncio.gather(
        service.change_role(Principal(a, org["_id"], Role.ADMIN), b, Role.KB_VIEWER),
        service.change_role(Principal(b, org["_id"], Role.ADMIN), a, Role.KB_VIEWER),
        return_exceptions=True,
    )
    # One goes first; the other is by then no admin any more and is refused.
    refused = [r for r in results if isinstance(r, Problem)]
    assert len(refused) == 1 and refused[0].slug == "forbidden"
    roles = [(await store.user(u) or {}).get("role") for u in (a, b)]
    assert sorted(roles, key=str) == ["admin", "kb_viewer"]
    assert len((await store.org(org["_id"]) or {})["admins"]) == 1


async def test_two_first_users_confirming_at_once_make_one_admin(store: IdentityStore) -> None:
    service = identity(store)
    org = await new_org(store)
    tokens = []
    for _ in range(4):
        user_id = uuid.uuid4().hex
        email = f"{user_id}@customer.example.com"
        raw, _ = await store.issue_token(user_id, "confirm", timedelta(hours=1), email=email)
        await store.insert_user(
            {
                "_id": user_id,
                "org_id": org["_id"],
                "email": email,
                "name": "Early",
                "language": "fi",
                "role": None,
                "device_ids": [],
                "status": "pending_confirmation",
                "password_hash": None,
            }
        )
        tokens.append(raw)
    confirmed = await asyncio.gather(*(service.confirm(t) for t in tokens))
    assert [u["status"] for u in confirmed] == ["active"] * 4
    assert [u["role"] for u in confirmed].count("admin") == 1
    assert len(await store.admins(org["_id"])) == 1
