"""SLA and offer timers: one owner per partition of ``tickets.timers``, an in-memory heap each.

- Ownership: tickets are keyed by ticket id on ``tickets.timers`` (each ticket write puts its
  current timers there through the outbox). The consumer group ``tickets.timers`` hands each
  partition to one instance; on assignment the instance rebuilds that partition's heap from its
  store (one indexed query per partition, never the whole collection), on revocation it drops it.
- Firing: a due warning or breach is first recorded by a unique insert of
  ``(ticket, kind, deadline)`` carrying the event; only the instance whose insert succeeded
  publishes it, then records that it did (one insert per published batch). A crash between the
  two is repaired when the partition is next assigned: recorded but unpublished firings are
  published then, with their original event id. So each escalation reaches ``tickets.events``
  once.
- Offers: a lapsed offer is handed to the ``expire_offer`` handler (route to the next).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiokafka import TopicPartition
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from services.tickets import handlers
from services.tickets.adapters.store import FIRINGS, PUBLISHED, TICKETS
from services.tickets.core.timers import Due, TicketTimers, TimerHeap, TimerKind
from shared.bus import Message, Publisher, Subscription
from shared.contracts import TICKET_EVENTS, TICKET_TIMERS, SlaEscalation, SlaKind, TicketTimersSet
from shared.events import Envelope, new_event_id, utcnow
from shared.logging import get_logger

log = get_logger(__name__)

GROUP = "tickets.timers"
DUPLICATE_KEY = 11000


def firing_id(ticket_id: str, kind: str, when: datetime) -> str:
    # Milliseconds since the epoch: what BSON keeps of a datetime, so a deadline read back from
    # the store and one taken from a timers event name the same firing.
    return f"{ticket_id}:{kind}:{int(when.timestamp() * 1000)}"


@dataclass
class RebuildStats:
    partitions: list[int]
    tickets: int
    republished: int
    seconds: float


@dataclass
class TimerService:
    db: AsyncDatabase[Document]
    publisher: Publisher
    deps: handlers.Deps
    batch: int = 500
    clock: Callable[[], datetime] = utcnow
    heap: TimerHeap = field(default_factory=TimerHeap)
    owned: set[int] = field(default_factory=set)
    rebuilds: list[RebuildStats] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)  # seconds, deadline -> published
    keep_lateness: bool = False

    def __post_init__(self) -> None:
        self._wake = asyncio.Event()
        self._busy = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._unpublished: list[Document] = []  # recorded, publishing failed: retried
        self._rebuilding: set[asyncio.Task[RebuildStats]] = set()

    # --- the consumer group ---------------------------------------------------------------

    def subscription(self, group: str = GROUP) -> Subscription:
        return Subscription(
            group=group,
            handlers={TICKET_TIMERS.name: self.on_message},
            on_assigned=self.on_assigned,
            on_revoked=self.on_revoked,
        )

    async def on_message(self, msg: Message) -> None:
        event = msg.parse(TicketTimersSet)
        if msg.partition not in self.owned:
            return  # not ours (any more): the owner rebuilt from the store
        if await self.db[TICKETS].find_one({"_id": event.ticket_id}, {"_id": 1}) is None:
            return  # another deployment's ticket on a shared broker: not in our store
        adopted = self.heap.put(
            TicketTimers(
                ticket_id=event.ticket_id,
                partition=msg.partition,
                version=event.version,
                org_id=event.org_id,
                device_id=event.device_id,
                warn_at=event.warn_at,
                due_at=event.due_at,
                offer_id=event.offer_id,
                offer_expires_at=event.offer_expires_at,
            )
        )
        if adopted:
            self._wake.set()

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Own the partitions at once (their timer messages count from now) and rebuild their
        heap from the store in the background: a long rebuild inside the rebalance callback
        would stall the member's heartbeats and make the group rebalance again and again."""
        parts = {tp.partition for tp in assigned if tp.topic == TICKET_TIMERS.name}
        if parts:
            self.owned |= parts
            self._rebuilding.add(asyncio.create_task(self.rebuild(parts)))

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in revoked if tp.topic == TICKET_TIMERS.name}
        for task in list(self._rebuilding):
            task.cancel()
        await asyncio.gather(*self._rebuilding, return_exceptions=True)
        self._rebuilding.clear()
        # A firing in flight finishes (recorded and published) before the partition moves on.
        async with self._busy:
            self.owned -= parts
            self.heap.drop_partitions(parts)

    async def rebuild(self, parts: set[int]) -> RebuildStats:
        """Load the running timers of ``parts`` from the store: one query per collection.

        Timer messages adopted meanwhile are not lost: the heap keeps the newest version of
        each ticket, whichever way it came.
        """
        started = time.perf_counter()
        wanted = {"$in": sorted(parts)}
        fired: set[str] = set()
        pending: list[Document] = []
        published: set[str] = set()
        async for d in self.db[PUBLISHED].find({"partitions": wanted}, {"ids": 1}):
            published.update(d["ids"])
        async for d in self.db[FIRINGS].find({"partition": wanted}):
            fired.add(d["_id"])
            if d["_id"] not in published:
                pending.append(d)
        # No projection: FerretDB 1.24 applies it after reading, and is slower with it.
        cursor = self.db[TICKETS].find({"partition": wanted, "timers_active": True})
        loaded = [_timers_from(doc, doc["partition"], fired) async for doc in cursor]
        async with self._busy:
            if not parts <= self.owned:
                log.info("timer heap rebuild dropped: partitions revoked meanwhile")
                return RebuildStats(sorted(parts), 0, 0, time.perf_counter() - started)
            self.heap.load(loaded)
            # Recorded but never published (a crash in between): publish now, same event id.
            try:
                await self._publish(pending)
            except Exception as exc:  # kept in _unpublished, retried by the firing loop
                log.warning("republishing escalations failed", error=repr(exc))
        stats = RebuildStats(
            sorted(parts), len(loaded), len(pending), time.perf_counter() - started
        )
        self.rebuilds.append(stats)
        log.info(
            "timer heap rebuilt",
            partitions=stats.partitions,
            tickets=stats.tickets,
            republished=stats.republished,
            seconds=round(stats.seconds, 3),
        )
        self._wake.set()
        return stats

    # --- the firing loop ------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        for task in self._rebuilding:
            task.cancel()

    async def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            now = self.clock()
            next_at = self.heap.next_at()
            if self._unpublished:
                retry, self._unpublished = self._unpublished, []
                try:
                    async with self._busy:
                        await self._publish(retry)
                except Exception as exc:
                    log.error("publishing escalations failed; retrying", error=repr(exc))
                    await asyncio.sleep(0.5)
                continue
            if next_at is not None and next_at <= now:
                try:
                    async with self._busy:
                        due = self.heap.pop_due(now, self.batch)
                        await self._fire(due, now)
                except Exception as exc:
                    log.error("timer round failed", error=repr(exc))
                    await asyncio.sleep(0.5)
                continue
            wait = 1.0 if next_at is None else min(1.0, (next_at - now).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.001))

    async def _fire(self, due: list[Due], now: datetime) -> None:
        offers = [d for d in due if d.kind is TimerKind.OFFER]
        escalations = [d for d in due if d.kind is not TimerKind.OFFER]
        if escalations:
            try:
                await self._escalate(escalations, now)
            except Exception:
                for d in escalations:
                    self.heap.push_back(d, now + timedelta(seconds=1))
                raise
        for d in offers:
            try:
                if d.timers.offer_id:
                    await handlers.expire_offer(d.timers.ticket_id, d.timers.offer_id, self.deps)
            except Exception as exc:
                log.warning("offer expiry failed; retrying", error=repr(exc))
                self.heap.push_back(d, now + timedelta(seconds=2))

    async def _escalate(self, due: list[Due], now: datetime) -> None:
        docs: list[Document] = []
        for d in due:
            kind = SlaKind.WARNING if d.kind is TimerKind.WARNING else SlaKind.BREACH
            event = SlaEscalation(
                ticket_id=d.timers.ticket_id,
                org_id=d.timers.org_id,
                device_id=d.timers.device_id,
                kind=kind,
                due_at=d.timers.due_at or d.when,
                fired_at=now,
            )
            docs.append(
                {
                    "_id": firing_id(d.timers.ticket_id, str(kind), d.when),
                    "partition": d.timers.partition,
                    "ticket_id": d.timers.ticket_id,
                    "kind": str(kind),
                    "deadline": d.when,
                    "event_id": new_event_id(),
                    "payload": event.model_dump(mode="json"),
                }
            )
        inserted = await _insert_new(self.db[FIRINGS], docs)
        await self._publish(inserted)

    async def _publish(self, docs: list[Document]) -> None:
        if not docs:
            return

        async def one(doc: Document) -> None:
            event = SlaEscalation.model_validate(doc["payload"])
            envelope = Envelope(
                event_id=doc["event_id"],
                event_type=SlaEscalation.event_type,
                producer=self.publisher.service,
            )
            await self.publisher.publish(TICKET_EVENTS, doc["ticket_id"], event, envelope=envelope)
            if self.keep_lateness:
                self.lateness.append((utcnow() - doc["deadline"]).total_seconds())

        results = await asyncio.gather(*(one(d) for d in docs), return_exceptions=True)
        done = [d for d, r in zip(docs, results, strict=True) if r is None]
        self._unpublished.extend(d for d, r in zip(docs, results, strict=True) if r is not None)
        if done:
            # One record per published batch (not per firing): half the inserts of a round.
            await self.db[PUBLISHED].insert_one(
                {
                    "_id": new_event_id(),
                    "partitions": sorted({d["partition"] for d in done}),
                    "ids": [d["_id"] for d in done],
                }
            )
        if len(done) < len(docs):
            raise RuntimeError(f"{len(docs) - len(done)} escalations not published yet")


async def _insert_new(collection: Any, docs: list[Document]) -> list[Document]:
    """Insert what is not there yet; return the documents this call inserted."""
    if not docs:
        return []
    try:
        await collection.insert_many(docs, ordered=False)
        return docs
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        duplicate = {e["index"] for e in errors}
        return [d for i, d in enumerate(docs) if i not in duplicate]


def _timers_from(doc: Document, partition: int, fired: set[str]) -> TicketTimers:
    timers = doc.get("timers") or {}
    warn_at, due_at = timers.get("warn_at"), timers.get("due_at")
    if warn_at is not None and firing_id(doc["_id"], "warning", warn_at) in fired:
        warn_at = None
    breach_at = due_at
    if due_at is not None and firing_id(doc["_id"], "breach", due_at) in fired:
        breach_at = None
    return TicketTimers(
        ticket_id=doc["_id"],
        partition=partition,
        version=doc["revision"],
        org_id=doc.get("org_id", ""),
        device_id=doc.get("device_id"),
        warn_at=warn_at,
        due_at=breach_at,
        offer_id=timers.get("offer_id"),
        offer_expires_at=timers.get("offer_expires_at"),
    )


Document = dict[str, Any]
