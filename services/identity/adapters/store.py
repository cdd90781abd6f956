"""Identity's MongoDB collections. Every change other services must learn about is written
together with its state event in the document's outbox (one atomic single-document write)."""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from services.identity.core.model import new_secret_token, token_digest
from shared import projections
from shared.contracts import ORGANISATIONS, USERS, OrganisationState, Topic, UserState
from shared.events import Event, utcnow
from shared.store import Document, Locks, insert_once, new_with_outbox, with_outbox

ORGS = "organisations"
USERS_COLL = "users"
TOKENS = "tokens"
TOKEN_USES = "token_uses"
LOCKS = "locks"
ACCOUNT = "account_entries"
FAILURES = "signin_failures"

INDEXES = {
    ORGS: [
        IndexModel([("customer_number", ASCENDING)], unique=True, name="customer_number_unique"),
        IndexModel([("system_id", ASCENDING)], unique=True, name="system_id_unique"),
    ],
    USERS_COLL: [
        IndexModel([("email", ASCENDING)], unique=True, name="email_unique"),
        IndexModel([("org_id", ASCENDING)], name="by_org"),
    ],
    TOKENS: [IndexModel([("user_id", ASCENDING)], name="by_user")],
    ACCOUNT: [IndexModel([("customer_number", ASCENDING)], name="by_customer")],
    projections.DEVICES: [IndexModel([("serial", ASCENDING)], name="by_serial")],
}

ORG_FIELDS = ("customer_number", "system_id", "name", "country", "timezone", "language")
Extra = tuple[Topic, str, Event]


def org_state(doc: Document) -> OrganisationState:
    return OrganisationState(
        org_id=doc["_id"], revision=doc["revision"], **{f: doc[f] for f in ORG_FIELDS}
    )


def user_state(doc: Document) -> UserState:
    return UserState(
        user_id=doc["_id"],
        org_id=doc.get("org_id"),
        email=doc["email"],
        name=doc["name"],
        language=doc["language"],
        role=doc.get("role"),
        device_ids=list(doc.get("device_ids", [])),
        status=doc["status"],
        revision=doc["revision"],
    )


class IdentityStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.db = db
        self.orgs = db[ORGS]
        self.users = db[USERS_COLL]
        self.tokens = db[TOKENS]
        self.token_uses = db[TOKEN_USES]
        self.locks = Locks(db[LOCKS])

    # --- organisations ---------------------------------------------------------------------

    async def create_org(self, fields: Document) -> Document:
        """Insert an organisation; raises DuplicateKeyError on a taken number."""
        doc: Document = {"_id": uuid.uuid4().hex, **fields, "admins": [], "revision": 1}
        await self.orgs.insert_one(
            new_with_outbox(doc, (ORGANISATIONS, doc["_id"], org_state(doc)))
        )
        return doc

    async def find_orgs(self, query: Document) -> list[Document]:
        return [d async for d in self.orgs.find(query, {"outbox": 0}).limit(50)]

    async def org(self, org_id: str) -> Document | None:
        return await self.orgs.find_one({"_id": org_id}, {"outbox": 0})

    # The admin set of an organisation is read and changed only under ``admins_lock``: the
    # check ("is another admin left?") and the change must not interleave with another's.

    def admins_lock(self, org_id: str) -> AbstractAsyncContextManager[None]:
        return self.locks.hold(f"org-admins:{org_id}")

    async def admins(self, org_id: str) -> list[str]:
        org = await self.orgs.find_one({"_id": org_id}, {"admins": 1})
        return list(org.get("admins", [])) if org else []

    async def add_admin(self, org_id: str, user_id: str) -> None:
        await self.orgs.update_one({"_id": org_id}, {"$addToSet": {"admins": user_id}})

    async def remove_admin(self, org_id: str, user_id: str) -> None:
        await self.orgs.update_one({"_id": org_id}, {"$pull": {"admins": user_id}})

    # --- users -----------------------------------------------------------------------------

    async def insert_user(self, doc: Document, *extra: Extra) -> Document:
        """Insert a user; raises DuplicateKeyError when the e-mail is taken."""
        doc = {**doc, "revision": 1, "created_at": utcnow()}
        await self.users.insert_one(
            new_with_outbox(doc, (USERS, doc["_id"], user_state(doc)), *extra)
        )
        return doc

    async def user(self, user_id: str) -> Document | None:
        return await self.users.find_one({"_id": user_id}, {"outbox": 0})

    async def user_by_email(self, email: str) -> Document | None:
        return await self.users.find_one({"email": email}, {"outbox": 0})

    async def users_of_org(self, org_id: str) -> list[Document]:
        return [d async for d in self.users.find({"org_id": org_id}, {"outbox": 0}).sort("email")]

    async def update_user(self, doc: Document, changes: Document, *extra: Extra) -> Document | None:
        """Apply ``changes`` unless the user changed meanwhile; publish the new state (+extra)."""
        new = {**doc, **changes, "revision": doc["revision"] + 1}
        update = with_outbox(
            {"$set": {**changes, "revision": new["revision"]}},
            (USERS, doc["_id"], user_state(new)),
            *extra,
        )
        result = await self.users.update_one(
            {"_id": doc["_id"], "revision": doc["revision"]}, update
        )
        return new if result.modified_count == 1 else None

    # --- single-use tokens -----------------------------------------------------------------

    async def issue_token(
        self, user_id: str, purpose: str, ttl: timedelta, **extra: Any
    ) -> tuple[str, datetime]:
        raw = new_secret_token()
        expires_at = utcnow() + ttl
        await self.tokens.insert_one(
            {
                "_id": token_digest(raw),
                "user_id": user_id,
                "purpose": purpose,
                "expires_at": expires_at,
                "used_at": None,
                **extra,
            }
        )
        return raw, expires_at

    async def consume_token(self, raw: str, purpose: str) -> Document | None:
        """Use a live token once and return it; None when unknown, used or expired.

        "Once" rests on inserting the token's use under its digest: a second insert of the
        same ``_id`` is refused atomically, whoever races.
        """
        digest = token_digest(raw)
        now = utcnow()
        record = await self.tokens.find_one(
            {"_id": digest, "purpose": purpose, "used_at": None, "expires_at": {"$gt": now}}
        )
        if record is None or not await insert_once(self.token_uses, {"_id": digest, "at": now}):
            return None
        await self.tokens.update_one({"_id": digest}, {"$set": {"used_at": now}})
        return record

    async def revoke_tokens(self, user_id: str, purpose: str) -> None:
        """Supersede the user's live tokens of ``purpose`` (a newer link replaces them)."""
        now = utcnow()
        async for record in self.tokens.find(
            {"user_id": user_id, "purpose": purpose, "used_at": None}, {"_id": 1}
        ):
            await insert_once(self.token_uses, {"_id": record["_id"], "at": now})
            await self.tokens.update_one({"_id": record["_id"]}, {"$set": {"used_at": now}})

    # --- devices (projection of the devices state topic) -----------------------------------

    async def device_serial_in_org(self, serial: str, org_id: str) -> bool:
        doc = await self.db[projections.DEVICES].find_one(
            {"serial": serial, "org_id": org_id, "removed": False}, {"_id": 1}
        )
        return doc is not None

    async def devices_in_org(self, device_ids: list[str], org_id: str) -> set[str]:
        cursor = self.db[projections.DEVICES].find(
            {"_id": {"$in": device_ids}, "org_id": org_id, "removed": False}, {"_id": 1}
        )
        return {d["_id"] async for d in cursor}

    # --- billing account entries -----------------------------------------------------------

    async def record_account_entry(self, entry: Document) -> bool:
        return await insert_once(self.db[ACCOUNT], entry)

    async def account_entries(self, customer_number: str) -> list[Document]:
        cursor = self.db[ACCOUNT].find({"customer_number": customer_number}).sort("booked_at", -1)
        return [d async for d in cursor.limit(500)]

    # --- sign-in failures (rate limiting) --------------------------------------------------

    async def recent_failures(self, key: str, window: timedelta) -> int:
        doc = await self.db[FAILURES].find_one({"_id": key})
        if doc is None or doc["window_start"] < utcnow() - window:
            return 0
        return int(doc["count"])

    async def record_failure(self, key: str, window: timedelta) -> None:
        now = utcnow()
        # A stale window restarts at one; otherwise the count grows.
        stale = await self.db[FAILURES].update_one(
            {"_id": key, "window_start": {"$lt": now - window}},
            {"$set": {"count": 1, "window_start": now}},
        )
        if stale.modified_count == 0:
            await self.db[FAILURES].update_one(
                {"_id": key},
                {"$inc": {"count": 1}, "$setOnInsert": {"window_start": now}},
                upsert=True,
            )

    async def clear_failures(self, key: str) -> None:
        await self.db[FAILURES].delete_one({"_id": key})
