"""Notify's MongoDB: the delivery ledger, message sources, digests, preferences, the directory.

Every once-only fact is a unique insert: a delivery record (who sends), a take-over of a stale
one, a final outcome. Nothing rests on a conditional update (FerretDB 1.x does not apply them
atomically), and nothing is updated per message: a fan-out writes inserts only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, cast

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from services.notify.core.model import Category, DeliveryStatus, Language, Recipient
from services.notify.ports import (
    DeliveryRecord,
    DeliveryState,
    DigestBucket,
    DigestItem,
    OrgEntry,
    UserEntry,
)
from shared import projections
from shared.events import utcnow
from shared.store import Document, insert_once

DELIVERIES = "deliveries"
DELIVERY_LOG = "delivery_log"
SOURCES = "message_sources"
DIGEST_ITEMS = "digest_items"
DIGESTS_DONE = "digests_done"
PREFERENCES = "preferences"

INDEXES = {
    **projections.INDEXES,
    DELIVERIES: [
        IndexModel([("created_at", DESCENDING)], name="by_time"),
        IndexModel([("event_id", ASCENDING)], name="by_event"),
        IndexModel([("recipient.address", ASCENDING)], name="by_recipient"),
    ],
    DELIVERY_LOG: [IndexModel([("delivery_id", ASCENDING)], name="by_delivery")],
    DIGEST_ITEMS: [
        IndexModel([("bucket", ASCENDING)], name="by_bucket"),
        IndexModel([("recipient_key", ASCENDING)], name="by_recipient"),
    ],
    PREFERENCES: [IndexModel([("opted_out", ASCENDING)], name="by_category")],
}

CLAIM_BATCH = 500  # modest bulk inserts (FerretDB)
DUPLICATE_KEY = 11000


def _recipient_doc(r: Recipient) -> Document:
    return {
        "address": r.address,
        "language": r.language,
        "timezone": r.timezone,
        "name": r.name,
        "user_id": r.user_id,
    }


def _recipient(doc: Document) -> Recipient:
    return Recipient(
        address=doc["address"],
        language=cast(Language, doc["language"]),
        timezone=doc.get("timezone", "UTC"),
        name=doc.get("name", ""),
        user_id=doc.get("user_id"),
    )


def _record(doc: Document) -> DeliveryRecord:
    return DeliveryRecord(
        delivery_id=doc["_id"],
        event_id=doc["event_id"],
        event_type=doc["event_type"],
        category=Category(doc["category"]),
        recipient=_recipient(doc["recipient"]),
        created_at=doc["created_at"],
    )


def fold(doc: Document, log: list[Document]) -> DeliveryState:
    """The state of one delivery from its record and its log (claims, retries, outcome)."""
    attempts = 1
    last = doc["created_at"]
    final: Document | None = None
    answer: str | None = None
    retried_in: set[int] = set()
    for entry in sorted(log, key=lambda e: e["at"]):
        last = max(last, entry["at"])
        if entry["kind"] == "claim":
            attempts = max(attempts, entry["attempt"])
        elif entry["kind"] == "retry":
            retried_in.add(entry["attempt"])
            answer = entry.get("answer")
        elif entry["kind"] == "final":
            final = entry
    if final is not None:
        status = DeliveryStatus(final["status"])
        answer = final.get("answer") or answer
    elif attempts in retried_in:
        status = DeliveryStatus.RETRYING
    else:
        status = DeliveryStatus.PENDING
    return DeliveryState(_record(doc), status, attempts, last, answer)


class MongoLedger:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._deliveries = db[DELIVERIES]
        self._log = db[DELIVERY_LOG]
        self._sources = db[SOURCES]

    async def save_source(
        self, source_id: str, event_type: str, payload: Mapping[str, Any]
    ) -> None:
        await insert_once(
            self._sources,
            {"_id": source_id, "event_type": event_type, "payload": dict(payload), "at": utcnow()},
        )

    async def source(self, source_id: str) -> tuple[str, dict[str, Any]] | None:
        doc = await self._sources.find_one({"_id": source_id})
        return None if doc is None else (doc["event_type"], doc["payload"])

    async def claim(self, records: list[DeliveryRecord]) -> set[str]:
        new: set[str] = set()
        for start in range(0, len(records), CLAIM_BATCH):
            chunk = records[start : start + CLAIM_BATCH]
            docs = [
                {
                    "_id": r.delivery_id,
                    "event_id": r.event_id,
                    "event_type": r.event_type,
                    "category": r.category.value,
                    "recipient": _recipient_doc(r.recipient),
                    "created_at": r.created_at,
                }
                for r in chunk
            ]
            refused: set[int] = set()
            try:
                await self._deliveries.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != DUPLICATE_KEY for e in errors):
                    raise
                refused = {e["index"] for e in errors}
            new.update(r.delivery_id for i, r in enumerate(chunk) if i not in refused)
        return new

    async def _fold_many(self, docs: list[Document]) -> dict[str, DeliveryState]:
        if not docs:
            return {}
        ids = [d["_id"] for d in docs]
        logs: dict[str, list[Document]] = {i: [] for i in ids}
        async for entry in self._log.find({"delivery_id": {"$in": ids}}):
            logs[entry["delivery_id"]].append(entry)
        return {d["_id"]: fold(d, logs[d["_id"]]) for d in docs}

    async def states(self, delivery_ids: Iterable[str]) -> dict[str, DeliveryState]:
        docs = [d async for d in self._deliveries.find({"_id": {"$in": list(delivery_ids)}})]
        return await self._fold_many(docs)

    async def take_over(self, delivery_id: str, attempt: int) -> bool:
        return await insert_once(
            self._log,
            {
                "_id": f"{delivery_id}#claim{attempt}",
                "delivery_id": delivery_id,
                "kind": "claim",
                "attempt": attempt,
                "at": utcnow(),
            },
        )

    async def note_retry(self, delivery_id: str, attempt: int, try_no: int, answer: str) -> None:
        await insert_once(
            self._log,
            {
                "_id": f"{delivery_id}#retry{attempt}.{try_no}",
                "delivery_id": delivery_id,
                "kind": "retry",
                "attempt": attempt,
                "answer": answer[:1000],
                "at": utcnow(),
            },
        )

    async def finish(
        self, delivery_id: str, status: DeliveryStatus, answer: str | None = None
    ) -> bool:
        return await insert_once(
            self._log,
            {
                "_id": f"{delivery_id}#final",
                "delivery_id": delivery_id,
                "kind": "final",
                "status": status.value,
                "answer": answer[:1000] if answer else None,
                "at": utcnow(),
            },
        )

    async def stale(self, cutoff: datetime, horizon: datetime) -> list[DeliveryState]:
        # Records younger than the lease cannot be stale: not read.
        docs = [
            d async for d in self._deliveries.find({"created_at": {"$gte": horizon, "$lt": cutoff}})
        ]
        if not docs:
            return []
        logs: dict[str, list[Document]] = {d["_id"]: [] for d in docs}
        async for entry in self._log.find({"at": {"$gte": horizon}}):
            if entry["delivery_id"] in logs:
                logs[entry["delivery_id"]].append(entry)
        states = (fold(d, logs[d["_id"]]) for d in docs)
        return [
            s
            for s in states
            if s.status in (DeliveryStatus.PENDING, DeliveryStatus.RETRYING)
            and s.last_activity < cutoff
        ]

    async def search(
        self,
        *,
        recipient: str | None,
        event_type: str | None,
        status: DeliveryStatus | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        scan_cap: int = 5000,
    ) -> list[DeliveryState]:
        """Newest first; the status filter applies to the newest ``scan_cap`` matches."""
        query: Document = {}
        if recipient:
            query["recipient.address"] = recipient
        if event_type:
            query["event_type"] = event_type
        window: Document = {}
        if since:
            window["$gte"] = since
        if until:
            window["$lt"] = until
        if window:
            query["created_at"] = window
        docs = [
            d
            async for d in self._deliveries.find(query)
            .sort("created_at", DESCENDING)
            .limit(scan_cap)
        ]
        states = await self._fold_many(docs)
        found = [
            states[d["_id"]] for d in docs if status is None or states[d["_id"]].status is status
        ]
        return found[:limit]


class MongoDigests:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._items = db[DIGEST_ITEMS]
        self._done = db[DIGESTS_DONE]

    async def open_bucket(self, recipient_key: str, now: datetime) -> DigestBucket | None:
        doc = await self._items.find_one(
            {"recipient_key": recipient_key, "window_end": {"$gt": now}},
            sort=[("window_start", ASCENDING)],
        )
        if doc is None:
            return None
        return DigestBucket(doc["bucket"], doc["window_start"], doc["window_end"])

    async def add(self, item: DigestItem) -> bool:
        return await insert_once(
            self._items,
            {
                "_id": f"{item.recipient.key}|{item.event_id}",
                "recipient_key": item.recipient.key,
                "bucket": item.bucket,
                "event_id": item.event_id,
                "recipient": _recipient_doc(item.recipient),
                "payload": item.payload,
                "window_start": item.window_start,
                "window_end": item.window_end,
            },
        )

    async def due(self, now: datetime, horizon: datetime) -> list[str]:
        buckets = {
            d["bucket"]
            async for d in self._items.find(
                {"window_end": {"$lte": now, "$gte": horizon}}, {"bucket": 1}
            )
        }
        done = {d["_id"] async for d in self._done.find({"at": {"$gte": horizon}}, {"_id": 1})}
        return sorted(buckets - done)

    async def items(self, bucket: str) -> list[DigestItem]:
        return [
            DigestItem(
                d["bucket"],
                d["event_id"],
                _recipient(d["recipient"]),
                d["payload"],
                d["window_start"],
                d["window_end"],
            )
            async for d in self._items.find({"bucket": bucket}).sort("_id", ASCENDING)
        ]

    async def done(self, bucket: str) -> None:
        await insert_once(self._done, {"_id": bucket, "at": utcnow()})


class MongoPreferences:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._prefs = db[PREFERENCES]

    async def opted_out_of(self, category: Category, user_ids: Iterable[str]) -> set[str]:
        wanted = set(user_ids)
        return {
            d["_id"]
            async for d in self._prefs.find({"opted_out": category.value}, {"_id": 1})
            if d["_id"] in wanted
        }

    async def get(self, user_id: str) -> frozenset[Category]:
        doc = await self._prefs.find_one({"_id": user_id})
        return frozenset(Category(c) for c in (doc or {}).get("opted_out", []))

    async def put(self, user_id: str, opted_out: frozenset[Category]) -> None:
        # One writer per key: the user themself.
        await self._prefs.update_one(
            {"_id": user_id},
            {"$set": {"opted_out": sorted(c.value for c in opted_out), "at": utcnow()}},
            upsert=True,
        )


class ProjectionDirectory:
    """Users and organisations from notify's copies of the identity state topics."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._users = db[projections.USERS]
        self._orgs = db[projections.ORGANISATIONS]

    @staticmethod
    def _user(doc: Document) -> UserEntry:
        return UserEntry(
            user_id=doc["_id"],
            org_id=doc.get("org_id"),
            email=doc["email"],
            name=doc.get("name", ""),
            language=doc.get("language", "en"),
            role=doc.get("role"),
            device_ids=frozenset(doc.get("device_ids", [])),
            status=doc.get("status", ""),
        )

    async def user(self, user_id: str) -> UserEntry | None:
        doc = await self._users.find_one({"_id": user_id})
        return None if doc is None else self._user(doc)

    async def users_of(self, org_id: str) -> list[UserEntry]:
        return [self._user(d) async for d in self._users.find({"org_id": org_id})]

    async def organisation(self, org_id: str) -> OrgEntry | None:
        doc = await self._orgs.find_one({"_id": org_id})
        if doc is None:
            return None
        return OrgEntry(doc["_id"], doc.get("timezone", "UTC"), doc.get("language", "en"))
