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
from services.identity.adapters.store import INDEXES as IDENTITY_INDEXES
from services.identity.adapters.store import ORGS, USERS_COLL, IdentityStore
from services.identity.config import IdentitySettings
from services.identity.core.model import normalise_email
from services.identity.service_layer import Identity, hash_password
from shared import contracts, projections
from shared.auth import Principal, PrincipalResolver, unauthenticated
from shared.bus import Publisher, Subscription
from shared.contracts import Role, SigningKey, UserStatus
from shared.service import Runtime, build_service_app
from shared.store import Document

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


async def publish_signing_keys(runtime: Runtime, signer: Signer, retired: set[str]) -> None:
    """The current public key, and the retirement of earlier ones: Kafka first (the other
    services verify with what is there), then identity's own copy."""
    keys = [signer.public_key()]
    for kid in sorted(retired - {signer.kid}):
        doc = await runtime.db[projections.SIGNING_KEYS].find_one({"_id": kid}, {"_id": 0})
        if doc is not None and not doc.get("retired"):
            keys.append(SigningKey.model_validate({**doc, "retired": True}))
    for key in keys:
        await runtime.publisher.publish(contracts.SIGNING_KEYS, key.kid, key)
        await runtime.db[projections.SIGNING_KEYS].update_one(
            {"_id": key.kid}, {"$set": key.model_dump(mode="json")}, upsert=True
        )


async def ensure_bootstrap_agent(store: IdentityStore, settings: IdentitySettings) -> None:
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
        "password_hash": await hash_password(
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

    async def setup(app: FastAPI, runtime: Runtime) -> None:
        store = IdentityStore(runtime.db)
        app.state.identity = Identity(store, signer, settings)
        await publish_signing_keys(runtime, signer, settings.retired_key_ids())
        await ensure_bootstrap_agent(store, settings)

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
