"""Business-hours arithmetic on a service calendar: pure functions, no I/O.

A calendar is a time zone, weekly opening hours (minutes of the local day, so DST changes are
taken care of by zoneinfo), the public holidays of a country (the ``holidays`` package) and
extra closed dates. Every instant in and out is an aware UTC ``datetime``; business time is a
``timedelta`` of open time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

DAY_MINUTES = 24 * 60
# A calendar with no opening in this many days is refused as unusable (no deadline exists).
HORIZON_DAYS = 3700


@lru_cache(maxsize=256)
def _holiday_set(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    if not country:
        return frozenset()
    table = holidays.country_holidays(country, subdiv=subdivision, years=year)
    return frozenset(table.keys())


@dataclass(frozen=True)
class Calendar:
    """Opening hours of a service desk.

    ``weekly[weekday]`` (Monday = 0) lists ``(start, end)`` minute offsets within the local day,
    ``0 <= start < end <= 1440``; ``(0, 1440)`` on every day is open round the clock.
    """

    timezone: str = "Europe/Helsinki"
    weekly: tuple[tuple[tuple[int, int], ...], ...] = field(
        default_factory=lambda: tuple(((480, 960),) if d < 5 else () for d in range(7))
    )
    country: str = "FI"
    subdivision: str | None = None
    closures: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        if len(self.weekly) != 7:
            raise ValueError("weekly hours need seven days")
        for day in self.weekly:
            last = -1
            for start, end in sorted(day):
                if not (0 <= start < end <= DAY_MINUTES) or start < last:
                    raise ValueError("opening hours must be ordered, non-overlapping minutes")
                last = end
        ZoneInfo(self.timezone)  # raises for an unknown zone
        if self.country:
            _holiday_set(self.country, self.subdivision, 2026)  # raises for an unknown country

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def is_closed_day(self, day: date) -> bool:
        return day in self.closures or day in _holiday_set(self.country, self.subdivision, day.year)

    def day_intervals(self, day: date) -> list[tuple[datetime, datetime]]:
        """The open intervals of a local calendar day, in UTC, in order."""
        if self.is_closed_day(day):
            return []
        zone = self.zone
        out: list[tuple[datetime, datetime]] = []
        for start, end in sorted(self.weekly[day.weekday()]):
            out.append((_local(day, start, zone), _local(day, end, zone)))
        return out

    def intervals_from(self, instant: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Open intervals (UTC) that end after ``instant``, clipped to start no earlier."""
        instant = _utc(instant)
        day = instant.astimezone(self.zone).date() - timedelta(days=1)
        empty_days = 0
        while True:
            intervals = self.day_intervals(day)
            empty_days = 0 if intervals else empty_days + 1
            if empty_days > HORIZON_DAYS:
                raise ValueError("the calendar has no opening hours")
            for start, end in intervals:
                if end > instant:
                    yield max(start, instant), end
            day += timedelta(days=1)

    def is_open(self, instant: datetime) -> bool:
        start, _ = next(self.intervals_from(instant))
        return start == _utc(instant)

    def next_opening(self, instant: datetime) -> datetime:
        """``instant`` itself when open, else the start of the next opening."""
        start, _ = next(self.intervals_from(instant))
        return start

    def add(self, instant: datetime, business: timedelta) -> datetime:
        """The instant at which ``business`` open time has passed since ``instant``."""
        remaining = business
        if remaining <= timedelta(0):
            return self.next_opening(instant)
        for start, end in self.intervals_from(instant):
            span = end - start
            if remaining <= span:
                return start + remaining
            remaining -= span
        raise AssertionError("unreachable")  # pragma: no cover

    def between(self, a: datetime, b: datetime) -> timedelta:
        """Open time within ``[a, b)``."""
        a, b = _utc(a), _utc(b)
        total = timedelta(0)
        if b <= a:
            return total
        for start, end in self.intervals_from(a):
            if start >= b:
                break
            total += min(end, b) - start
        return total


def _utc(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        raise ValueError("naive datetime")
    return instant.astimezone(UTC)


def _local(day: date, minute: int, zone: ZoneInfo) -> datetime:
    """Local wall-clock ``minute`` of ``day`` as UTC (1440 = the next local midnight).

    A wall time inside a spring-forward gap is taken as the moment the gap ends would be; a time
    repeated at fall-back is its first occurrence (fold 0), as zoneinfo resolves them.
    """
    if minute == DAY_MINUTES:
        return datetime.combine(day + timedelta(days=1), time(0), zone).astimezone(UTC)
    wall = datetime.combine(day, time(minute // 60, minute % 60), zone)
    return wall.astimezone(UTC)


def round_the_clock(timezone: str = "UTC", country: str = "") -> Calendar:
    """Open every minute of every day (tests and round-the-clock contracts)."""
    return Calendar(
        timezone=timezone, weekly=tuple(((0, DAY_MINUTES),) for _ in range(7)), country=country
    )
