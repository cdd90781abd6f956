"""Business-hours arithmetic against a minute-by-minute reference, and the named cases."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import holidays
from hypothesis import given, settings
from hypothesis import strategies as st

from services.tickets.core import sla
from services.tickets.core.calendar import Calendar, round_the_clock

HEL = ZoneInfo("Europe/Helsinki")
MINUTE = timedelta(minutes=1)
OFFICE = Calendar()  # Finland, Europe/Helsinki, Mon-Fri 08:00-16:00
SPLIT = Calendar(
    timezone="Europe/Stockholm",
    weekly=(((450, 690), (750, 1020)),) * 5 + (((600, 840),), ()),
    country="SE",
    closures=frozenset({date(2026, 12, 23)}),
)
ALWAYS_HEL = round_the_clock("Europe/Helsinki", "FI")


def hel(*args: int) -> datetime:
    return datetime(*args, tzinfo=HEL).astimezone(UTC)  # type: ignore[misc]


HOLIDAYS = {c: holidays.country_holidays(c, years=range(2025, 2030)) for c in ("FI", "SE")}


def open_minute(cal: Calendar, t: datetime) -> bool:
    """The reference: is the minute starting at ``t`` open? (independent of the implementation)"""
    local = t.astimezone(ZoneInfo(cal.timezone))
    day = local.date()
    if day in cal.closures or (cal.country and day in HOLIDAYS[cal.country]):
        return False
    m = local.hour * 60 + local.minute
    return any(start <= m < end for start, end in cal.weekly[day.weekday()])


def ref_add(cal: Calendar, t: datetime, minutes: int) -> datetime:
    if minutes == 0:
        while not open_minute(cal, t):
            t += MINUTE
        return t
    count = 0
    while True:
        if open_minute(cal, t):
            count += 1
            if count == minutes:
                return t + MINUTE
        t += MINUTE


def ref_between(cal: Calendar, a: datetime, b: datetime) -> timedelta:
    n = 0
    while a < b:
        n += open_minute(cal, a)
        a += MINUTE
    return n * MINUTE


START = datetime(2026, 1, 1, tzinfo=UTC)
instants = st.integers(0, 2 * 366 * 24 * 60).map(lambda m: START + m * MINUTE)
calendars = st.sampled_from([OFFICE, SPLIT, ALWAYS_HEL])


@settings(max_examples=60, deadline=None)
@given(calendars, instants, st.integers(0, 2000))
def test_add_matches_the_minute_reference(cal: Calendar, t: datetime, minutes: int) -> None:
    assert cal.add(t, minutes * MINUTE) == ref_add(cal, t, minutes)


@settings(max_examples=60, deadline=None)
@given(calendars, instants, st.integers(0, 6000))
def test_between_matches_the_minute_reference(cal: Calendar, t: datetime, span: int) -> None:
    assert cal.between(t, t + span * MINUTE) == ref_between(cal, t, t + span * MINUTE)


@settings(max_examples=60, deadline=None)
@given(calendars, instants, st.integers(1, 3000))
def test_add_then_between_is_the_budget(cal: Calendar, t: datetime, minutes: int) -> None:
    assert cal.between(t, cal.add(t, minutes * MINUTE)) == minutes * MINUTE


def test_weekend_is_skipped() -> None:
    # Friday 2026-11-27 15:00 + 2 h = Monday 09:00.
    assert OFFICE.add(hel(2026, 11, 27, 15), timedelta(hours=2)) == hel(2026, 11, 30, 9)


def test_public_holiday_is_closed() -> None:
    # Finnish Independence Day falls on Sunday in 2026; Epiphany 2026-01-06 is a Tuesday.
    assert not OFFICE.is_open(hel(2026, 1, 6, 10))
    assert OFFICE.next_opening(hel(2026, 1, 5, 17)) == hel(2026, 1, 7, 8)


def test_filed_friday_evening_before_a_holiday() -> None:
    # Friday 2028-12-22 18:00: the weekend, then Christmas Day (Mon) and Boxing Day (Tue):
    # the clock starts Wednesday 27.12. 08:00, and 8 business hours end that day at 16:00.
    filed = hel(2028, 12, 22, 18)
    assert OFFICE.next_opening(filed) == hel(2028, 12, 27, 8)
    assert OFFICE.add(filed, timedelta(hours=8)) == hel(2028, 12, 27, 16)
    # Easter 2027: filed Thursday 25.3. 17:00, Good Friday to Easter Monday closed -> Tue 30.3.
    assert OFFICE.next_opening(hel(2027, 3, 25, 17)) == hel(2027, 3, 30, 8)
    # Midsummer Eve (Friday 2026-06-19): filed Thursday evening, clock starts Monday 22.6.
    assert OFFICE.next_opening(hel(2026, 6, 18, 20)) == hel(2026, 6, 22, 8)


def test_daylight_saving_change() -> None:
    # Finland springs forward on Sunday 2026-03-29 (03:00 -> 04:00): round the clock, 24 h of
    # business time from Saturday noon ends Sunday 13:00 local (23 h of wall clock... in UTC +23h).
    start = hel(2026, 3, 28, 12)
    end = ALWAYS_HEL.add(start, timedelta(hours=24))
    assert end - start == timedelta(hours=24)
    assert end.astimezone(HEL).hour == 13
    # Office hours keep their local wall-clock times across the change: 08:00 is 06:00 UTC before
    # and 05:00 UTC after.
    assert OFFICE.next_opening(hel(2026, 3, 26, 17)) == datetime(2026, 3, 27, 6, tzinfo=UTC)
    assert OFFICE.next_opening(hel(2026, 3, 28, 17)) == datetime(2026, 3, 30, 5, tzinfo=UTC)
    # Falling back (2026-10-25): the day has 25 h.
    day = ALWAYS_HEL.between(hel(2026, 10, 25, 0), hel(2026, 10, 26, 0))
    assert day == timedelta(hours=25)


def test_out_of_hours_start() -> None:
    assert OFFICE.next_opening(hel(2026, 11, 25, 7, 30)) == hel(2026, 11, 25, 8)
    inside = hel(2026, 11, 25, 9, 15)
    assert OFFICE.next_opening(inside) == inside and OFFICE.is_open(inside)
    assert OFFICE.next_opening(hel(2026, 11, 25, 16)) == hel(2026, 11, 26, 8)


def test_pause_spanning_a_weekend() -> None:
    # 8 h budget from Thursday 2026-11-26 08:00; waiting from Thu 12:00 to Mon 10:00:
    # 4 h used before, 4 h after the pause -> Monday 14:00.
    start = hel(2026, 11, 26, 8)
    pauses = [sla.Pause(hel(2026, 11, 26, 12), hel(2026, 11, 30, 10))]
    assert sla.deadline(OFFICE, start, timedelta(hours=8), pauses) == hel(2026, 11, 30, 14)
    # Business time the pause took: Thu 12-16, Fri 8-16, Mon 8-10 = 14 h.
    assert sla.paused_business(OFFICE, pauses, hel(2026, 12, 1)) == timedelta(hours=14)
    assert sla.paused_total(pauses, hel(2026, 12, 1)) == timedelta(days=4, hours=-2)
    # Still waiting: no deadline.
    assert (
        sla.deadline(OFFICE, start, timedelta(hours=8), [sla.Pause(hel(2026, 11, 26, 12))]) is None
    )


def test_pause_after_the_deadline_does_not_move_it() -> None:
    start = hel(2026, 11, 26, 8)
    late = [sla.Pause(hel(2026, 11, 26, 15), hel(2026, 11, 27, 9))]
    assert sla.deadline(OFFICE, start, timedelta(hours=2), late) == hel(2026, 11, 26, 10)


def test_pause_before_the_clock_starts() -> None:
    # Filed Saturday, waiting at once until Monday 10:00: the clock runs from Monday 10:00.
    start = OFFICE.next_opening(hel(2026, 11, 28, 11))
    pauses = [sla.Pause(hel(2026, 11, 28, 11), hel(2026, 11, 30, 10))]
    assert sla.deadline(OFFICE, start, timedelta(hours=1), pauses) == hel(2026, 11, 30, 11)


def test_warning_and_due_and_answered() -> None:
    start = hel(2026, 11, 26, 8)
    times = sla.timers(OFFICE, start, timedelta(hours=10), [], warning_share=0.8, answered=False)
    assert times.warn_at == hel(2026, 11, 26, 16)  # the end of Thursday: 8 of 10 hours
    assert times.due_at == hel(2026, 11, 27, 10)
    none = sla.timers(OFFICE, start, timedelta(hours=10), [], warning_share=0.8, answered=True)
    assert none.warn_at is None and none.due_at is None


def test_a_calendar_without_hours_is_refused() -> None:
    closed = Calendar(weekly=((),) * 7)
    try:
        closed.next_opening(hel(2026, 1, 1))
    except ValueError:
        return
    raise AssertionError("a calendar with no opening hours gave an opening")
