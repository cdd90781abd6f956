"""An in-memory tickets store (the port) and a settable clock, for domain tests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from services.tickets import handlers
from services.tickets.core.kb import ArticleTokens
from services.tickets.core.model import Article, CalendarSpec, DeviceInfo, Ticket, TimelineEntry
from services.tickets.core.routing import TechnicianProfile
from services.tickets.core.status import OPEN
from services.tickets.ports import Outgoing, TicketFilter
from shared.contracts import Role, TicketStatus


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class FakeStore:
    def __init__(self) -> None:
        self.devices: dict[str, DeviceInfo] = {}
        self.roles: dict[str, Role] = {}
        self.calendars: dict[str, CalendarSpec] = {}
        self.tickets: dict[str, Ticket] = {}
        self.events: list[Outgoing] = []
        self.techs: dict[str, TechnicianProfile] = {}
        self.faults: dict[str, str] = {}
        self.articles: list[tuple[Article, ArticleTokens]] = []
        self.fired: dict[str, list[TimelineEntry]] = {}

    async def device(self, device_id: str) -> DeviceInfo | None:
        return self.devices.get(device_id)

    async def organisation_known(self, org_id: str) -> bool:
        return True

    async def user_role(self, user_id: str) -> Role | None:
        return self.roles.get(user_id)

    async def calendar(self, calendar_id: str) -> CalendarSpec | None:
        return self.calendars.get(calendar_id)

    async def put_calendar(self, calendar_id: str, spec: CalendarSpec) -> None:
        self.calendars[calendar_id] = spec

    async def insert_ticket(self, ticket: Ticket, events: Sequence[Outgoing]) -> bool:
        if ticket.ticket_id in self.tickets:
            return False
        self.tickets[ticket.ticket_id] = ticket.model_copy(deep=True)
        self.events.extend(events)
        return True

    async def get_ticket(self, ticket_id: str) -> Ticket | None:
        t = self.tickets.get(ticket_id)
        return t.model_copy(deep=True) if t else None

    async def save_ticket(
        self, ticket: Ticket, expected_revision: int, events: Sequence[Outgoing]
    ) -> bool:
        if self.tickets[ticket.ticket_id].revision != expected_revision:
            return False
        self.tickets[ticket.ticket_id] = ticket.model_copy(deep=True)
        self.events.extend(events)
        return True

    async def list_tickets(self, flt: TicketFilter, limit: int) -> list[Ticket]:
        return list(self.tickets.values())[:limit]

    async def escalations(self, ticket_ids: Sequence[str]) -> dict[str, list[TimelineEntry]]:
        return {t: list(self.fired[t]) for t in ticket_ids if t in self.fired}

    async def technicians(self) -> list[TechnicianProfile]:
        return list(self.techs.values())

    async def put_technician(self, profile: TechnicianProfile) -> None:
        self.techs[profile.user_id] = profile

    async def open_loads(self, technician_ids: Sequence[str]) -> dict[str, int]:
        loaded = OPEN - {TicketStatus.NEW}
        return {
            t: sum(1 for x in self.tickets.values() if x.assignee == t and x.status in loaded)
            for t in technician_ids
        }

    async def claim_fault(self, key: str, ticket_id: str) -> str:
        return self.faults.setdefault(key, ticket_id)

    async def release_fault(self, key: str, ticket_id: str) -> None:
        if self.faults.get(key) == ticket_id:
            del self.faults[key]

    async def insert_article(self, article: Article, tokens: ArticleTokens) -> None:
        self.articles.append((article, tokens))

    async def find_articles(
        self, words: Sequence[str], model_family: str | None, limit: int
    ) -> list[tuple[Article, ArticleTokens]]:
        return [
            (a, t)
            for a, t in self.articles
            if (not words or set(words) & set(t.all))
            and (not model_family or model_family in a.model_families)
        ][:limit]


def deps(store: FakeStore, clock: Clock, **policy: object) -> handlers.Deps:
    return handlers.Deps(store, handlers.Policy(**policy), clock, lambda _id: 0)  # type: ignore[arg-type]
