"""The reading history and the decisions on submissions, in the service's MongoDB database.

Readings are append-only: the ingestion worker inserts them in batches with ids derived from
the input's position (telemetry) or the command id (submissions), so a re-delivered input
inserts nothing new. Decisions on submissions are written the same way; the HTTP side waits
for them (at once when its own worker decided, else by looking in the collection).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from services.meters.core.model import Reading
from services.meters.core.ports import Outcome
from shared import projections
from shared.contracts import ReadingSource
from shared.events import utcnow
from shared.store import Document

READINGS = "readings"
# The history reads a device's readings in windows going back in time (ReadingStore.page).
HISTORY_WINDOW = timedelta(days=31)  # the first, and the least
HISTORY_WINDOW_GROWTH = 3  # a window covers at most this times the time covered before it
HISTORY_WINDOWS = 6  # then one window takes all that is older
DECISIONS = "decisions"
DUPLICATE_KEY = 11000

INDEXES = {
    **projections.INDEXES,
    READINGS: [
        IndexModel([("device_id", ASCENDING), ("read_at", DESCENDING)], name="by_device_time")
    ],
    DECISIONS: [IndexModel([("decided_at", ASCENDING)], name="by_decided_at")],
}


def decision_doc(doc: Document) -> Document:
    return {**doc, "decided_at": utcnow()}


async def delete_decisions_before(db: AsyncDatabase[Document], before: datetime) -> int:
    """Drop the decisions made before ``before``: a decision is read only by the request that
    waits for it (a few seconds; then the history answers), so they need not pile up (FerretDB
    1.x has no TTL indexes)."""
    result = await db[DECISIONS].delete_many({"decided_at": {"$lt": before}})
    return result.deleted_count


async def insert_ignoring_duplicates(
    collection: AsyncCollection[Document], docs: list[Document]
) -> int:
    """Insert what is new; documents whose id exists already are re-deliveries."""
    if not docs:
        return 0
    try:
        result = await collection.insert_many(docs, ordered=False)
        return len(result.inserted_ids)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        return int(exc.details.get("nInserted", 0))


def to_reading(doc: Document) -> Reading:
    return Reading(
        reading_id=doc["_id"],
        device_id=doc["device_id"],
        org_id=doc["org_id"],
        serial=doc["serial"],
        source=ReadingSource(doc["source"]),
        counters=dict(doc["counters"]),
        read_at=doc["read_at"],
        submitted_by=doc.get("submitted_by"),
        reason=doc.get("reason"),
    )


class ReadingStore:
    """The history (implements the core's ``ReadingHistory`` port)."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._readings = db[READINGS]

    async def page(
        self,
        device_id: str,
        *,
        source: ReadingSource | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        offset: int,
    ) -> list[Reading]:
        """Newest first, read in windows of time going back from ``until`` (or from now, the
        first window then without an upper bound: a device's clock may be ahead) until the page
        is full.

        The server sorts by ``read_at`` only after reading every document the filter selects
        (FerretDB 1.x pushes no sort down to PostgreSQL), so one query over the device's whole
        history costs in proportion to that history: about 0.5 s for a device with 5,000
        readings. A window's date range is served by the index, so a page costs in proportion
        to the readings of the windows it needed (``tests/perf/bench_meters_history.py``). The
        first window is 31 days; each next one is sized from the readings found so far to hold
        what the page still needs (a quarter more), at least 31 days and at most three times
        the time already covered; after six, one query takes all that is older. The windows are
        disjoint and ordered, so their pages in turn are the one sorted list."""
        query: Document = {"device_id": device_id}
        if source is not None:
            query["source"] = source.value
        wanted = offset + limit
        found: list[Document] = []
        start = utcnow() if until is None else until
        upper, lower = until, start - HISTORY_WINDOW
        for n in range(HISTORY_WINDOWS + 1):
            # The last window reaches down to ``since``, or without a lower bound.
            last = n == HISTORY_WINDOWS or (since is not None and lower <= since)
            bound = since if last else lower
            window: Document = {}
            if bound is not None:
                window["$gte"] = bound
            if upper is not None:
                window["$lt"] = upper
            cursor = self._readings.find({**query, "read_at": window} if window else query)
            cursor = cursor.sort([("read_at", DESCENDING), ("_id", DESCENDING)])
            found += [d async for d in cursor.limit(wanted - len(found))]
            if len(found) >= wanted or last:
                break
            covered = start - lower
            if found:
                span = covered * ((wanted - len(found)) / len(found)) * 1.25
            else:
                span = covered * HISTORY_WINDOW_GROWTH
            span = min(max(span, HISTORY_WINDOW), covered * HISTORY_WINDOW_GROWTH)
            upper, lower = lower, lower - span
        return [to_reading(d) for d in found[offset:wanted]]

    async def since(self, device_id: str, since: datetime | None) -> list[Reading]:
        query: Document = {"device_id": device_id}
        if since is not None:
            query["read_at"] = {"$gte": since}
        projection = {"device_id": 1, "org_id": 1, "serial": 1, "source": 1}
        cursor = self._readings.find(query, {**projection, "counters": 1, "read_at": 1})
        return [to_reading(d) async for d in cursor]


class LocalDecisions:
    """Decisions this process made, handed to waiting requests at once; for decisions made
    by another instance (the device's partition is theirs) the collection is polled."""

    def __init__(self, db: AsyncDatabase[Document], poll_seconds: float = 0.1) -> None:
        self._decisions = db[DECISIONS]
        self._waiting: dict[str, asyncio.Future[Outcome]] = {}
        self._poll = poll_seconds

    def resolve(self, outcome: Outcome) -> None:
        future = self._waiting.get(outcome.command_id)
        if future is not None and not future.done():
            future.set_result(outcome)

    async def wait(self, command_id: str, timeout: float) -> Outcome | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._waiting[command_id] = future
        deadline = loop.time() + timeout
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(
                        asyncio.shield(future), min(self._poll, remaining)
                    )
                doc = await self._decisions.find_one({"_id": command_id})
                if doc is not None:
                    return outcome_from(doc)
        finally:
            self._waiting.pop(command_id, None)


def outcome_from(doc: Document) -> Outcome:
    reading: Any = doc.get("reading")
    return Outcome(doc["_id"], bool(doc["accepted"]), reading, list(doc.get("refusals", [])))
