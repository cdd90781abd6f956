"""Tickets, calendars, technicians and articles as the domain sees them (pydantic, no I/O)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from services.tickets.core import sla
from services.tickets.core.calendar import Calendar
from shared.contracts import TicketCategory, TicketStatus

Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=64)]
HHMM = Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


class Span(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: HHMM = Field(description="Opening, local time HH:MM.")
    end: HHMM = Field(description="Closing, local time HH:MM (24:00 = midnight).")


def _office_hours() -> dict[Weekday, list[Span]]:
    day = [Span(start="08:00", end="16:00")]
    return {"mon": day, "tue": day, "wed": day, "thu": day, "fri": day}


class CalendarSpec(BaseModel):
    """A service calendar as agents maintain it and tickets keep a copy of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = Field("Europe/Helsinki", max_length=64, description="IANA time zone.")
    country: str = Field(
        "FI", pattern=r"^([A-Z]{2})?$", description="ISO country of the public holidays."
    )
    subdivision: str | None = Field(None, max_length=10, description="Holiday subdivision.")
    weekly: dict[Weekday, list[Span]] = Field(
        default_factory=lambda: _office_hours(),
        description="Opening hours per weekday; a missing day is closed.",
    )
    closures: list[date] = Field(
        default_factory=list, max_length=1000, description="Extra closed dates."
    )

    def to_calendar(self) -> Calendar:
        weekly = tuple(
            tuple((_minutes(s.start), _minutes(s.end)) for s in self.weekly.get(day) or [])
            for day in WEEKDAYS
        )
        return Calendar(
            timezone=self.timezone,
            weekly=weekly,
            country=self.country,
            subdivision=self.subdivision,
            closures=frozenset(self.closures),
        )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value)
        except Exception as exc:
            raise ValueError("unknown time zone") from exc
        return value


class TimelineEntry(BaseModel):
    """One thing that happened to a ticket: who, when, what."""

    at: AwareDatetime
    by: str | None = Field(description="User id; null for the system.")
    kind: Literal["created", "status", "comment", "assignment", "routing", "sla", "removal"]
    text: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class PauseModel(BaseModel):
    start: AwareDatetime
    end: AwareDatetime | None = None


class SlaState(BaseModel):
    calendar: CalendarSpec
    budget_seconds: float = Field(description="Response time in business seconds.")
    clock_starts_at: AwareDatetime
    out_of_hours: bool
    pauses: list[PauseModel] = Field(default_factory=list)
    responded_at: AwareDatetime | None = None
    warn_at: AwareDatetime | None = None
    due_at: AwareDatetime | None = None
    deadline: AwareDatetime | None = Field(
        None, description="The deadline as last computed (kept when answered or paused)."
    )

    def pause_list(self) -> list[sla.Pause]:
        return [sla.Pause(p.start, p.end) for p in self.pauses]


class Offer(BaseModel):
    offer_id: str
    technician_id: str
    expires_at: AwareDatetime | None = None  # None = accepted (or an agent's assignment)
    accepted: bool = False


class Ticket(BaseModel):
    ticket_id: str
    org_id: str
    device_id: str | None
    category: TicketCategory
    description: str
    contact_name: str = ""
    contact_phone: str = ""
    created_by: str | None
    created_at: AwareDatetime
    status: TicketStatus = TicketStatus.NEW
    resume_to: TicketStatus | None = None
    assignee: str | None = None
    offer: Offer | None = None
    excluded: list[str] = Field(default_factory=list, description="Declined or lapsed.")
    sla: SlaState
    timeline: list[TimelineEntry] = Field(default_factory=list)
    revision: int = 1
    partition: int = 0
    fault_key: str | None = None
    error_codes: list[str] = Field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return self.status not in (TicketStatus.RESOLVED, TicketStatus.CLOSED)

    def note(
        self, at: datetime, by: str | None, kind: str, text: str, **data: Any
    ) -> TimelineEntry:
        entry = TimelineEntry.model_validate(
            {"at": at, "by": by, "kind": kind, "text": text, "data": data}
        )
        self.timeline.append(entry)
        return entry


class DeviceInfo(BaseModel):
    """What tickets knows of a device (from the devices state projection)."""

    device_id: str
    org_id: str
    model: str = ""
    model_family: str = ""
    postal_code: str = ""
    region: str = ""
    sla_response_hours: int = 8
    calendar_id: str | None = None
    removed: bool = False


class Article(BaseModel):
    article_id: str
    title: str
    body: str
    model_families: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    created_by: str
    created_at: AwareDatetime


def budget(hours: int, hour_seconds: float) -> timedelta:
    return timedelta(seconds=hours * hour_seconds)
