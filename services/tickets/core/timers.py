"""The in-memory timer heap of one instance: deadlines of the tickets in the partitions it owns.

The heap holds ``(when, ticket_id, kind, version)``; the current timers of a ticket are kept
beside it by version, so a newer setting (paused, answered, re-routed) makes older heap
entries stale without searching the heap: they are dropped when they reach the top.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class TimerKind(StrEnum):
    WARNING = "warning"
    BREACH = "breach"
    OFFER = "offer"  # a technician's time to accept or decline ran out


@dataclass(frozen=True)
class TicketTimers:
    """Everything a ticket asks the timer owner to watch (version = the ticket's revision)."""

    ticket_id: str
    partition: int
    version: int
    org_id: str = ""
    device_id: str | None = None
    warn_at: datetime | None = None
    due_at: datetime | None = None
    offer_id: str | None = None
    offer_expires_at: datetime | None = None

    def entries(self) -> list[tuple[datetime, TimerKind]]:
        out: list[tuple[datetime, TimerKind]] = []
        if self.warn_at is not None:
            out.append((self.warn_at, TimerKind.WARNING))
        if self.due_at is not None:
            out.append((self.due_at, TimerKind.BREACH))
        if self.offer_expires_at is not None:
            out.append((self.offer_expires_at, TimerKind.OFFER))
        return out


@dataclass(frozen=True)
class Due:
    when: datetime
    kind: TimerKind
    timers: TicketTimers


class TimerHeap:
    def __init__(self) -> None:
        self._heap: list[tuple[datetime, str, TimerKind, int]] = []
        self._current: dict[str, TicketTimers] = {}

    def __len__(self) -> int:
        return len(self._current)

    def put(self, timers: TicketTimers) -> bool:
        """Adopt ``timers`` unless a newer version is already known; True when adopted."""
        known = self._current.get(timers.ticket_id)
        if known is not None and known.version >= timers.version:
            return False
        self._current[timers.ticket_id] = timers
        for when, kind in timers.entries():
            heapq.heappush(self._heap, (when, timers.ticket_id, kind, timers.version))
        return True

    def load(self, many: list[TicketTimers]) -> None:
        """Bulk adoption (a rebuild): one heapify instead of a push per entry."""
        for timers in many:
            known = self._current.get(timers.ticket_id)
            if known is None or known.version < timers.version:
                self._current[timers.ticket_id] = timers
        self._heap.extend(
            (when, t.ticket_id, kind, t.version)
            for t in many
            if self._current[t.ticket_id] is t
            for when, kind in t.entries()
        )
        heapq.heapify(self._heap)

    def drop_partitions(self, partitions: set[int]) -> None:
        """Forget the tickets of revoked partitions (their heap entries go stale)."""
        for ticket_id in [t for t, v in self._current.items() if v.partition in partitions]:
            del self._current[ticket_id]

    def _live(self, entry: tuple[datetime, str, TimerKind, int]) -> TicketTimers | None:
        _, ticket_id, _, version = entry
        timers = self._current.get(ticket_id)
        return timers if timers is not None and timers.version == version else None

    def next_at(self) -> datetime | None:
        while self._heap and self._live(self._heap[0]) is None:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: datetime, limit: int) -> list[Due]:
        out: list[Due] = []
        while self._heap and len(out) < limit and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            timers = self._live(entry)
            if timers is not None:
                out.append(Due(entry[0], entry[2], timers))
        return out

    def push_back(self, due: Due, when: datetime) -> None:
        """Try an entry again later (its handling failed)."""
        heapq.heappush(self._heap, (when, due.timers.ticket_id, due.kind, due.timers.version))
