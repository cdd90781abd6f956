"""MongoDB access (PyMongo's async API), indexes at start-up, and the outbox on the document.

Without multi-document transactions (FerretDB has none), the only write that is atomic with
"and tell the others" is a single-document update. So an event that must be published is
written into the document's own ``outbox`` field (a map keyed by event id) in the same update
that changes the document, which also sets ``outbox_at`` (indexed: the relay's query). The
:class:`OutboxRelay` claims a document (a lease taken with an atomic conditional update, so two
replicas of a service do not publish the same entries), publishes its pending entries in order
and then unsets them; a crash between the publish and the unset publishes again after the lease,
which consumers absorb by event id. Nothing written is lost, and nothing is published that was
not written. An entry that can never be published (unknown topic or event type, invalid payload)
is moved to ``outbox_rejected`` on its document, logged and counted, while the others flow.

The server must apply single-document updates atomically (MongoDB does; the embedded FerretDB is
patched to: ``tests/integration/test_store_promises.py`` checks it on the server in use).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter
from pydantic import ValidationError
from pymongo import ASCENDING, AsyncMongoClient, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.bus import Publisher
from shared.config import MongoSettings
from shared.contracts import Topic, topic_named
from shared.events import Envelope, Event, new_event_id, utcnow
from shared.logging import current_correlation_id, get_logger

log = get_logger(__name__)

Document = dict[str, Any]
OUTBOX = "outbox"
# When the document's outbox last received entries; present while entries are pending.
OUTBOX_AT = "outbox_at"
# The relay holding the document: {"by": relay id, "until": lease end}.
OUTBOX_CLAIM = "outbox_claim"
# Entries that can never be published, set aside for an operator: event id -> entry + error.
OUTBOX_REJECTED = "outbox_rejected"
# Every outbox collection carries this index: the relay's query uses it.
OUTBOX_INDEX = IndexModel([(OUTBOX_AT, ASCENDING)], name=OUTBOX_AT)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A range on a date (served by the index), true for every document with pending entries.
PENDING = {OUTBOX_AT: {"$gte": _EPOCH}}

OUTBOX_EVENTS = Counter(
    "fleetdesk_outbox_events_total",
    "Outbox entries handled by the relay, by outcome (published, rejected).",
    ["collection", "outcome"],
)


class Mongo:
    """One client and the service's own database; closed on exit."""

    def __init__(self, settings: MongoSettings, service: str) -> None:
        self._settings = settings
        self.name = f"{settings.database_prefix}_{service}"
        self._client: AsyncMongoClient[Document] | None = None

    async def __aenter__(self) -> Mongo:
        self._client = AsyncMongoClient(
            self._settings.url.get_secret_value(), serverSelectionTimeoutMS=5000, tz_aware=True
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def db(self) -> AsyncDatabase[Document]:
        if self._client is None:
            raise RuntimeError("mongo is not started")
        return self._client[self.name]

    async def ping(self) -> bool:
        try:
            await self.db.command("ping")
            return True
        except Exception:
            return False

    async def ensure_indexes(self, indexes: Mapping[str, Iterable[IndexModel]]) -> None:
        """Create the indexes; those that exist with the same keys and name are left alone."""
        for collection, models in indexes.items():
            if models := list(models):
                await self.db[collection].create_indexes(models)


def outbox_entries(*events: tuple[Topic, str, Event]) -> dict[str, Document]:
    """Outbox entries (event id -> entry) for ``(topic, key, event)`` triples."""
    entries: dict[str, Document] = {}
    for seq, (topic, key, event) in enumerate(events):
        if type(event) not in topic.events:
            raise ValueError(f"{event.event_type} does not belong on {topic.name}")
        entries[new_event_id()] = {
            # Publication order within one document: time of the write, then position.
            "seq": time.time_ns() + seq,
            "topic": topic.name,
            "key": key,
            "event_type": event.event_type,
            "event_version": event.event_version,
            "payload": event.model_dump(mode="json"),
            "correlation_id": current_correlation_id(),
            "occurred_at": utcnow(),
        }
    return entries


def with_outbox(update: Document, *events: tuple[Topic, str, Event]) -> Document:
    """Add outbox entries for ``events`` to a MongoDB update document (same atomic write)."""
    sets = dict(update.get("$set", {}))
    for event_id, entry in outbox_entries(*events).items():
        sets[f"{OUTBOX}.{event_id}"] = entry
    if events:
        sets[OUTBOX_AT] = utcnow()
    return {**update, "$set": sets}


def new_with_outbox(doc: Document, *events: tuple[Topic, str, Event]) -> Document:
    """A document to insert, carrying outbox entries for ``events``."""
    if not events:
        return {**doc, OUTBOX: {}}
    return {**doc, OUTBOX: outbox_entries(*events), OUTBOX_AT: utcnow()}


async def insert_once(collection: AsyncCollection[Document], doc: Document) -> bool:
    """Insert unless a document with the same unique key exists; True when inserted."""
    try:
        await collection.insert_one(doc)
        return True
    except DuplicateKeyError:
        return False


class LockBusy(Exception):
    """Another holder kept the lock for longer than we were willing to wait."""


class Locks:
    """Short mutual exclusion between processes, built on a unique ``_id`` insert.

    A duplicate ``_id`` is refused atomically by every MongoDB-wire server (stock FerretDB
    included, whose conditional updates were not atomic), so that is the primitive everything
    that must happen once rests on. A holder that crashed is taken over after its lease.
    """

    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self._locks = collection

    @contextlib.asynccontextmanager
    async def hold(
        self, name: str, *, lease_seconds: float = 10.0, wait_seconds: float = 5.0
    ) -> AsyncIterator[None]:
        owner = new_event_id()
        give_up = time.monotonic() + wait_seconds
        while True:
            now = utcnow()
            if await insert_once(
                self._locks,
                {"_id": name, "owner": owner, "expires_at": now + timedelta(seconds=lease_seconds)},
            ):
                break
            await self._locks.delete_one({"_id": name, "expires_at": {"$lt": now}})
            if time.monotonic() > give_up:
                raise LockBusy(name)
            await asyncio.sleep(0.02)
        try:
            yield
        finally:
            await self._locks.delete_one({"_id": name, "owner": owner})


async def upsert_if_newer(
    collection: AsyncCollection[Document], doc_id: str, revision: int, fields: Document
) -> bool:
    """Keep the projection of ``doc_id`` at the highest revision seen; True when applied.

    A redelivered or out-of-date state event matches no document with a lower revision, so
    the upsert tries to insert a duplicate ``_id`` and is refused: it changes nothing.
    """
    try:
        await collection.update_one(
            {"_id": doc_id, "revision": {"$lt": revision}},
            {"$set": {**fields, "revision": revision}},
            upsert=True,
        )
        return True
    except DuplicateKeyError:
        return False


class Unpublishable(Exception):
    """An outbox entry that can never be published (unknown topic or type, invalid payload)."""


@dataclass
class OutboxRelay:
    """Publishes what documents hold in their outbox, then removes it from them.

    Several relays (replicas of one service) may run on one database: each document is claimed
    for ``lease_seconds`` with an atomic conditional update before its entries are published, so
    only one relay publishes them; a relay that dies holding a claim is replaced after the lease
    (its last entries may then be published twice: consumers drop a repeated event id).
    """

    db: AsyncDatabase[Document]
    collections: tuple[str, ...]
    publisher: Publisher
    poll_seconds: float = 0.5
    lease_seconds: float = 30.0
    batch: int = 100
    concurrency: int = 16  # documents claimed and published at once (each document's in order)
    relay_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def nudge(self) -> None:
        """Publish soon (called after a write that added to an outbox)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # a nudge from here on wakes the next round
            try:
                await self.publish_pending()
            except Exception as exc:
                log.error("outbox relay round failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def publish_pending(self) -> int:
        """Publish every pending entry of every collection; return how many were published."""
        published = 0
        for name in self.collections:
            collection = self.db[name]
            while True:
                ids = [
                    d["_id"]
                    async for d in collection.find(PENDING, {"_id": 1})
                    .sort(OUTBOX_AT, ASCENDING)
                    .limit(self.batch)
                ]
                outcomes = await self._publish_documents(collection, ids)
                claimed = sum(1 for n in outcomes if n is not None)
                published += sum(n or 0 for n in outcomes)
                if len(ids) < self.batch or not claimed:
                    break
        return published

    async def _publish_documents(
        self, collection: AsyncCollection[Document], ids: list[Any]
    ) -> list[int | None]:
        """Claim and publish up to ``concurrency`` documents at once: a document's entries go
        out in order, one after another; different documents (different keys) overlap, so the
        database and broker round trips of one do not wait for another's. Returns, per id, the
        count published or None (claimed by another relay). Raises the first failure once
        every document of the round is done (none is left running)."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(doc_id: Any) -> int | None:
            async with gate:
                doc = await self._claim(collection, doc_id)
                if doc is None:
                    return None
                return await self._publish_document(collection, doc)

        results = await asyncio.gather(*(one(doc_id) for doc_id in ids), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if not isinstance(r, BaseException)]

    async def _claim(self, collection: AsyncCollection[Document], doc_id: Any) -> Document | None:
        """The document with its outbox, if this relay could claim it (no live claim of another)."""
        now = utcnow()
        return await collection.find_one_and_update(
            {
                "_id": doc_id,
                **PENDING,
                "$or": [
                    {OUTBOX_CLAIM: {"$exists": False}},
                    {f"{OUTBOX_CLAIM}.until": {"$lt": now}},
                    {f"{OUTBOX_CLAIM}.by": self.relay_id},
                ],
            },
            {
                "$set": {
                    OUTBOX_CLAIM: {
                        "by": self.relay_id,
                        "until": now + timedelta(seconds=self.lease_seconds),
                    }
                }
            },
            # No projection: FerretDB 1.24's findAndModify does not support one.
            return_document=ReturnDocument.AFTER,
        )

    def _envelope_and_event(self, event_id: str, entry: Document) -> tuple[Topic, Envelope, Event]:
        try:
            topic = topic_named(entry["topic"])
            event_cls = next(e for e in topic.events if e.event_type == entry["event_type"])
            event = event_cls.model_validate(entry["payload"])
            envelope = Envelope(
                event_id=event_id,
                event_type=entry["event_type"],
                event_version=entry["event_version"],
                correlation_id=entry.get("correlation_id"),
                occurred_at=entry["occurred_at"],
                producer=self.publisher.service,
            )
        except (KeyError, StopIteration, TypeError, ValueError, ValidationError) as exc:
            raise Unpublishable(repr(exc)) from exc
        return topic, envelope, event

    async def _publish_document(self, collection: AsyncCollection[Document], doc: Document) -> int:
        entries = sorted((doc.get(OUTBOX) or {}).items(), key=lambda item: item[1].get("seq") or 0)
        published: list[str] = []
        rejected: dict[str, Document] = {}
        try:
            for event_id, entry in entries:
                try:
                    topic, envelope, event = self._envelope_and_event(event_id, entry)
                except Unpublishable as exc:
                    log.error(
                        "outbox entry set aside: it cannot be published",
                        collection=collection.name,
                        document_id=str(doc["_id"]),
                        event_id=event_id,
                        event_type=entry.get("event_type"),
                        error=str(exc),
                    )
                    OUTBOX_EVENTS.labels(collection.name, "rejected").inc()
                    rejected[event_id] = {**entry, "error": str(exc), "rejected_at": utcnow()}
                    continue
                await self.publisher.publish(topic, entry["key"], event, envelope=envelope)
                OUTBOX_EVENTS.labels(collection.name, "published").inc()
                published.append(event_id)
        finally:
            await self._release(collection, doc, published, rejected)
        return len(published)

    async def _release(
        self,
        collection: AsyncCollection[Document],
        doc: Document,
        published: list[str],
        rejected: dict[str, Document],
    ) -> None:
        """Remove the handled entries and the claim; ``outbox_at`` too when the outbox is empty."""
        unset: Document = {f"{OUTBOX}.{event_id}": "" for event_id in [*published, *rejected]}
        unset[OUTBOX_CLAIM] = ""
        update: Document = {"$unset": unset}
        if rejected:
            update["$set"] = {f"{OUTBOX_REJECTED}.{k}": v for k, v in rejected.items()}
        mine = {"_id": doc["_id"], f"{OUTBOX_CLAIM}.by": self.relay_id}
        if len(published) + len(rejected) == len(doc.get(OUTBOX) or {}):
            # Unless a writer added entries since the claim (it sets outbox_at anew).
            emptied = await collection.update_one(
                {**mine, OUTBOX_AT: doc[OUTBOX_AT]},
                {**update, "$unset": {**unset, OUTBOX_AT: ""}},
            )
            if emptied.matched_count:
                return
        await collection.update_one(mine, update)
