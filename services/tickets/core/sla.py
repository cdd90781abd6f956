"""The SLA clock: a response budget counted in business hours, paused while the ticket waits.

Everything here is derived from the ticket's facts (when the clock started, its budget, the
pauses read off its timeline, whether it has been answered), so the SLA shown on a ticket is
always the one its timeline implies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from services.tickets.core.calendar import Calendar


@dataclass(frozen=True)
class Pause:
    start: datetime
    end: datetime | None = None  # None while the ticket still waits


def deadline(
    calendar: Calendar, clock_start: datetime, budget: timedelta, pauses: list[Pause]
) -> datetime | None:
    """When ``budget`` business time has run, not counting the pauses; None while paused.

    A pause that begins after the deadline does not move it.
    """
    remaining = budget
    cursor = clock_start
    for pause in sorted(pauses, key=lambda p: p.start):
        if pause.start <= cursor:
            # Paused before the clock started (or overlapping): just skip ahead.
            if pause.end is None:
                return None
            cursor = max(cursor, pause.end)
            continue
        used = calendar.between(cursor, pause.start)
        if used >= remaining:
            return calendar.add(cursor, remaining)
        remaining -= used
        if pause.end is None:
            return None
        cursor = pause.end
    return calendar.add(cursor, remaining)


def paused_total(pauses: list[Pause], now: datetime) -> timedelta:
    """Wall-clock time spent waiting for the customer so far."""
    return sum(((p.end or now) - p.start for p in pauses), timedelta(0))


def paused_business(calendar: Calendar, pauses: list[Pause], now: datetime) -> timedelta:
    """Business time spent waiting for the customer so far (what the pauses added to the due)."""
    return sum((calendar.between(p.start, p.end or now) for p in pauses), timedelta(0))


@dataclass(frozen=True)
class SlaTimes:
    """The instants the timers care about; None when that timer is not running."""

    warn_at: datetime | None
    due_at: datetime | None


def timers(
    calendar: Calendar,
    clock_start: datetime,
    budget: timedelta,
    pauses: list[Pause],
    *,
    warning_share: float,
    answered: bool,
) -> SlaTimes:
    """Warning at ``warning_share`` of the budget and breach at the deadline, unless answered."""
    if answered:
        return SlaTimes(None, None)
    return SlaTimes(
        deadline(calendar, clock_start, budget * warning_share, pauses),
        deadline(calendar, clock_start, budget, pauses),
    )
