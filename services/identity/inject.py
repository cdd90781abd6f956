"""Builds the identity service inside async context managers: nothing connects at import."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.identity.adapters import events, http
from services.identity.adapters.keys import Signer
from services.identity.adapters.passwords import Passwords
from services.identity.adapters.store import INDEXES as IDENTITY_INDEXES
from services.identity.adapters.store import ORGS, USERS_COLL, IdentityStore
from services.identity.adapters.throttle import SigninAttempts
from services.identity.config import IdentitySettings
from services.identity.core.model import normalise_email
from services.identity.service_layer import Identity, sealer_for
from shared import contracts, projections
from shared.auth import Principal, PrincipalResolver, unauthenticated
from shared.bus import Publisher, Subscription
from shared.contracts import Role, SigningKey, UserStatus
from shared.events import utcnow
from shared.service import Runtime, build_service_app
from shared.store import Document, insert_once

NAME = "identity"


def subscriptions(db: AsyncDatabase[Document], _publisher: Publisher) -> Iterable[Subscription]:
    yield projections.subscription(NAME, db, contracts.DEVICES)
    yield Subscription(
        group=f"{NAME}.billing",
        handlers={contracts.BILLING_ACCOUNT_EVENTS.name: events.account_events(db)},
    )


def resolver(runtime: Runtime) -> PrincipalResolver:
    """Identity knows its users first-hand: the current role comes from its own collection."""
    store = IdentityStore(runtime.db)

    async def resolve(claims: dict[str, Any]) -> Principal:
        doc = await store.user(str(claims["sub"]))
        if doc is None or doc["status"] != UserStatus.ACTIVE.value:
            raise unauthenticated("the account is not active")
        role = Role(doc["role"]) if doc.get("role") else None
        return Principal(doc["_id"], doc.get("org_id"), role, frozenset(doc.get("device_ids", [])))

    return resolve


RETIRED_KEYS = "retired_signing_keys"


class RetiredSigningKey(RuntimeError):
    """This instance was started with a key that has been retired: it must not sign."""


async def publish_signing_keys(runtime: Runtime, signer: Signer, retire: set[str]) -> None:
    """Publish the current public key and every retirement identity knows of.

    Retirement is final: retired key ids are kept in identity's own database (one insert
    each), so an instance restarted or rolled back with an old key refuses to start instead
    of publishing that key as valid again, and a retirement undone on the topic by an older
    version is published again. Kafka first (the other services verify with what is there),
    then identity's own copy.
    """
    db = runtime.db
    for kid in retire - {signer.kid}:
        await insert_once(db[RETIRED_KEYS], {"_id": kid, "retired_at": utcnow()})
    retired = {d["_id"] async for d in db[RETIRED_KEYS].find({}, {"_id": 1})}
    if signer.kid in retired:
        raise RetiredSigningKey(
            f"signing key {signer.kid} was retired; start identity with a new "
            "FLEETDESK_IDENTITY_SIGNING_KEY_PEM"
        )
    keys = [signer.public_key()]
    for kid in sorted(retired):
        doc = await db[projections.SIGNING_KEYS].find_one({"_id": kid}, {"_id": 0})
        if doc is not None:
            keys.append(SigningKey.model_validate({**doc, "retired": True}))
    for key in keys:
        await runtime.publisher.publish(contracts.SIGNING_KEYS, key.kid, key)
        await projections.record_signing_key(db[projections.SIGNING_KEYS], key)


async def ensure_bootstrap_agent(
    store: IdentityStore, passwords: Passwords, settings: IdentitySettings
) -> None:
    """The first service-centre agent, so that a fresh platform can be administered."""
    email = normalise_email(settings.identity_bootstrap_agent_email)
    if await store.user_by_email(email) is not None:
        return
    doc: Document = {
        "_id": uuid.uuid4().hex,
        "org_id": None,
        "email": email,
        "name": "Service centre",
        "language": "en",
        "role": Role.AGENT.value,
        "device_ids": [],
        "status": UserStatus.ACTIVE.value,
        "password_hash": await passwords.hash(
            settings.identity_bootstrap_agent_password.get_secret_value()
        ),
    }
    try:
        await store.insert_user(doc)
    except DuplicateKeyError:
        pass  # another identity instance created it first


def build_app(settings: IdentitySettings | None = None) -> FastAPI:
    settings = settings or IdentitySettings()
    signer = Signer.from_pem(
        settings.identity_signing_key_pem.get_secret_value(),
        settings.environment,
        settings.auth,
        settings.identity_token_ttl_seconds,
    )

    passwords = Passwords(
        settings.identity_password_hash_concurrency, settings.identity_password_hash_queue
    )
    seal = sealer_for(settings.notify_sealing_public_key())

    async def setup(app: FastAPI, runtime: Runtime) -> None:
        store = IdentityStore(runtime.db)
        attempts = SigninAttempts(runtime.db)
        app.state.identity = Identity(store, signer, settings, passwords, attempts, seal)
        await publish_signing_keys(runtime, signer, settings.retired_key_ids())
        await ensure_bootstrap_agent(store, passwords, settings)
        await store.backfill_balance_fields()

    app = build_service_app(
        name=NAME,
        prefix="/identity",
        settings=settings,
        routers=[http.router],
        indexes=IDENTITY_INDEXES,
        outbox_collections=(ORGS, USERS_COLL),
        subscriptions=subscriptions,
        setup=setup,
        resolver=resolver,
    )
    return app
