"""MongoDB access (PyMongo's async API), indexes at start-up, and the outbox on the document.

Without multi-document transactions (FerretDB has none), the only write that is atomic with
"and tell the others" is a single-document update. So an event that must be published is
written into the document's own ``outbox`` field (a map keyed by event id) in the same update
that changes the document. The :class:`OutboxRelay` publishes pending entries in order and then
unsets them; a crash between the publish and the unset publishes again, which consumers absorb
by event id. Nothing written is lost, and nothing is published that was not written.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pymongo import AsyncMongoClient, IndexModel
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
PENDING = {OUTBOX: {"$exists": True, "$ne": {}}}


class DocumentLocks:
    """Serialises this process's updates of one document (writers and the outbox relay).

    MongoDB applies each single-document update atomically, but FerretDB (1.x, SQLite) reads,
    modifies and writes a document in separate steps: two concurrent updates of one document
    can lose one of them (an outbox entry set by a writer while the relay unsets another).
    Within one process these locks rule that out; across instances, run on MongoDB.
    """

    def __init__(self) -> None:
        self._locks: dict[tuple[str, Any], asyncio.Lock] = {}
        self._users: dict[tuple[str, Any], int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, collection: str, doc_id: Any) -> AsyncIterator[None]:
        key = (collection, doc_id)
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]


class Mongo:
    """One client and the service's own database; closed on exit."""

    def __init__(self, settings: MongoSettings, service: str) -> None:
        self._settings = settings
        self.name = f"{settings.database_prefix}_{service}"
        self._client: AsyncMongoClient[Document] | None = None
        self.doc_locks = DocumentLocks()

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
        for collection, models in indexes.items():
            existing = {ix["name"] async for ix in await self.db[collection].list_indexes()}
            for model in models:
                # One at a time, and only missing ones: FerretDB 1.24 panics on a
                # createIndexes that names several indexes of which some already exist.
                if model.document["name"] not in existing:
                    await self.db[collection].create_indexes([model])


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
    return {**update, "$set": sets}


def new_with_outbox(doc: Document, *events: tuple[Topic, str, Event]) -> Document:
    """A document to insert, carrying outbox entries for ``events``."""
    return {**doc, OUTBOX: outbox_entries(*events)}


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

    Why not a conditional update: FerretDB (1.x, SQLite) evaluates an update's filter and writes
    the result in separate steps, so two concurrent ``update_one({..., cond}, ...)`` can both
    "match" and the last writer wins. A duplicate ``_id`` is refused atomically by every
    MongoDB-wire server, so that is the primitive everything that must happen once rests on.
    A holder that crashed is taken over after its lease.
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


@dataclass
class OutboxRelay:
    """Publishes what documents hold in their outbox, then removes it from them."""

    db: AsyncDatabase[Document]
    collections: tuple[str, ...]
    publisher: Publisher
    doc_locks: DocumentLocks
    poll_seconds: float = 0.5

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
            async for doc in collection.find(PENDING, {OUTBOX: 1}):
                published += await self._publish_document(collection, doc)
        return published

    async def _publish_document(self, collection: AsyncCollection[Document], doc: Document) -> int:
        entries = sorted(doc.get(OUTBOX, {}).items(), key=lambda item: item[1]["seq"])
        for event_id, entry in entries:
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
            await self.publisher.publish(topic, entry["key"], event, envelope=envelope)
            async with self.doc_locks.hold(collection.name, doc["_id"]):
                await collection.update_one(
                    {"_id": doc["_id"]}, {"$unset": {f"{OUTBOX}.{event_id}": ""}}
                )
        return len(entries)
