"""Sign-in attempt slots and known client addresses in identity's database.

A bucket (see ``core.signin``) holds at most ``limit`` slots per window; each attempt takes a
free slot with a unique insert of ``<bucket>|<n>`` before its password is checked. A duplicate
``_id`` is refused atomically by every MongoDB-wire server (FerretDB included, whose
conditional updates are not atomic), so concurrent attempts never share a slot. Slots of past
windows are deleted in small batches (no TTL indexes on FerretDB).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from services.identity.core.signin import KNOWN_CLIENT_DAYS, Bucket
from shared.store import Document, insert_once

ATTEMPTS = "signin_attempts"
KNOWN_CLIENTS = "signin_known_clients"
PRUNE_EVERY_SECONDS = 60.0
PRUNE_BATCH = 50  # FerretDB: keep every write command small

INDEXES = {
    ATTEMPTS: [
        IndexModel([("bucket", ASCENDING)], name="by_bucket"),
        IndexModel([("expires_at", ASCENDING)], name="by_expiry"),
    ],
}


class SigninAttempts:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.attempts = db[ATTEMPTS]
        self.known = db[KNOWN_CLIENTS]
        self._pruned_at = 0.0

    async def reserve(self, bucket: Bucket) -> str | None:
        """Take a free slot of ``bucket``; its id, or None when every slot is taken."""
        taken = {d["n"] async for d in self.attempts.find({"bucket": bucket.id}, {"n": 1})}
        for n in range(bucket.limit):
            if n in taken:
                continue
            slot = {"_id": f"{bucket.id}|{n}", "bucket": bucket.id, "n": n}
            if await insert_once(self.attempts, {**slot, "expires_at": bucket.window_end}):
                return str(slot["_id"])
        return None

    async def release(self, slot_id: str) -> None:
        """Give a slot back: the attempt it counted was not a failure."""
        await self.attempts.delete_one({"_id": slot_id})

    async def clear(self, bucket: Bucket) -> None:
        """Forget the bucket's failures (at most ``limit`` documents)."""
        await self.attempts.delete_many({"bucket": bucket.id})

    async def is_known(self, key: str, now: datetime) -> bool:
        doc = await self.known.find_one({"_id": key})
        return doc is not None and doc["seen_at"] > now - timedelta(days=KNOWN_CLIENT_DAYS)

    async def remember(self, key: str, now: datetime) -> None:
        await self.known.replace_one({"_id": key}, {"_id": key, "seen_at": now}, upsert=True)

    async def prune(self, now: datetime) -> int:
        """Delete slots of past windows, one small batch at most once a minute."""
        if time.monotonic() - self._pruned_at < PRUNE_EVERY_SECONDS:
            return 0
        self._pruned_at = time.monotonic()
        cursor = self.attempts.find({"expires_at": {"$lte": now}}, {"_id": 1}).limit(PRUNE_BATCH)
        ids = [d["_id"] async for d in cursor]
        if ids:
            await self.attempts.delete_many({"_id": {"$in": ids}})
        return len(ids)
