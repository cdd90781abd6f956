"""Identity's MongoDB collections. Every change other services must learn about is written
together with its state event in the document's outbox (one atomic single-document write)."""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from services.identity.adapters import throttle
from services.identity.core.model import (
    balance_fields,
    decimal_from_units,
    new_secret_token,
    token_digest,
)
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
NOTICES = "account_exists_notices"

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
    **throttle.INDEXES,
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

    async def add_events(self, doc: Document, *extra: Extra) -> None:
        """Publish ``extra`` through the user's outbox without changing the user."""
        await self.users.update_one({"_id": doc["_id"]}, with_outbox({}, *extra))

    async def delete_pending(self, doc: Document) -> bool:
        """Delete an unconfirmed user as read (same revision, still pending); True if gone.

        Other services keep its last state (pending: it never could sign in).
        """
        result = await self.users.delete_one(
            {"_id": doc["_id"], "revision": doc["revision"], "status": doc["status"]}
        )
        return result.deleted_count == 1

    async def first_notice_of_day(self, user_id: str, day: str) -> bool:
        """True once per user and day: how often an owner hears of attempts on their address."""
        return await insert_once(self.db[NOTICES], {"_id": f"{user_id}|{day}"})

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

    async def live_token(self, raw: str, purpose: str) -> Document | None:
        """The token's record while it is unused and unexpired, without using it."""
        return await self.tokens.find_one(
            {
                "_id": token_digest(raw),
                "purpose": purpose,
                "used_at": None,
                "expires_at": {"$gt": utcnow()},
            }
        )

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

    async def backfill_balance_fields(self) -> int:
        """Entries recorded before balances were summed in the database get their units."""
        done = 0
        async for e in self.db[ACCOUNT].find({"signed_units": {"$exists": False}}):
            fields = balance_fields(e["kind"], Decimal(e["amount"]), e["currency"])
            await self.db[ACCOUNT].update_one({"_id": e["_id"]}, {"$set": fields})
            done += 1
        return done

    async def account_entries(self, customer_number: str, limit: int = 500) -> list[Document]:
        """The latest ``limit`` entries, newest first (the view; the balance covers all)."""
        cursor = self.db[ACCOUNT].find({"customer_number": customer_number}).sort("booked_at", -1)
        return [d async for d in cursor.limit(limit)]

    async def account_balance(self, customer_number: str) -> dict[str, Decimal]:
        """Invoiced minus paid and credited, per currency, over every entry, exactly.

        Amounts are kept as signed integer units with their decimal exponent
        (``signed_units`` x 10^``exponent``); the server sums the integers per currency and
        exponent (``$group``/``$sum``, which MongoDB and FerretDB both have) and the decimals are
        put together here, so no float ever takes part.
        """
        pipeline: list[Document] = [
            {"$match": {"customer_number": customer_number}},
            {"$group": {"_id": "$balance_key", "units": {"$sum": "$signed_units"}}},
        ]
        balance: dict[str, Decimal] = {}
        cursor = await self.db[ACCOUNT].aggregate(pipeline)
        async for row in cursor:
            if not isinstance(row["units"], int):  # an int64 overflow turns into a double
                return await self._balance_by_reading(customer_number)
            currency, exponent = str(row["_id"]).split(":")
            amount = decimal_from_units(row["units"], int(exponent))
            balance[currency] = balance.get(currency, Decimal(0)) + amount
        return balance

    async def _balance_by_reading(self, customer_number: str) -> dict[str, Decimal]:
        balance: dict[str, Decimal] = {}
        async for e in self.db[ACCOUNT].find({"customer_number": customer_number}):
            amount = decimal_from_units(e["signed_units"], int(e["balance_key"].split(":")[1]))
            balance[e["currency"]] = balance.get(e["currency"], Decimal(0)) + amount
        return balance
