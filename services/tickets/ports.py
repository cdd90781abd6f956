"""The ports the tickets handlers need: small Protocols that adapters (and test fakes) fill."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.tickets.core.kb import ArticleTokens
from services.tickets.core.model import Article, CalendarSpec, DeviceInfo, Ticket, TimelineEntry
from services.tickets.core.routing import TechnicianProfile
from shared.contracts import Role, TicketStatus, Topic
from shared.events import Event

Outgoing = tuple[Topic, str, Event]


@dataclass(frozen=True)
class TicketFilter:
    """What a listing may be narrowed to; ``device_ids`` None = any device of the scope."""

    now: datetime
    org_id: str | None = None
    device_ids: frozenset[str] | None = None
    device_id: str | None = None
    status: TicketStatus | None = None
    assignee: str | None = None
    breach: bool | None = None


class TicketStore(Protocol):
    # --- what other services told us (projections) ---
    async def device(self, device_id: str) -> DeviceInfo | None: ...
    async def organisation_known(self, org_id: str) -> bool: ...
    async def user_role(self, user_id: str) -> Role | None: ...

    # --- calendars ---
    async def calendar(self, calendar_id: str) -> CalendarSpec | None: ...
    async def put_calendar(self, calendar_id: str, spec: CalendarSpec) -> None: ...

    # --- tickets (each write carries its events: the outbox on the document) ---
    async def insert_ticket(self, ticket: Ticket, events: Sequence[Outgoing]) -> bool:
        """False when a ticket with this id exists already."""
        ...

    async def get_ticket(self, ticket_id: str) -> Ticket | None: ...

    async def save_ticket(
        self, ticket: Ticket, expected_revision: int, events: Sequence[Outgoing]
    ) -> bool:
        """Write ``ticket`` (its revision already raised) unless it changed meanwhile."""
        ...

    async def list_tickets(self, flt: TicketFilter, limit: int) -> list[Ticket]: ...

    async def escalations(self, ticket_ids: Sequence[str]) -> dict[str, list[TimelineEntry]]:
        """The SLA warnings and breaches fired for these tickets, as timeline entries."""
        ...

    # --- routing ---
    async def technicians(self) -> list[TechnicianProfile]: ...
    async def put_technician(self, profile: TechnicianProfile) -> None: ...
    async def open_loads(self, technician_ids: Sequence[str]) -> dict[str, int]: ...

    # --- fault tickets: one open ticket per device and error set ---
    async def claim_fault(self, key: str, ticket_id: str) -> str:
        """The ticket id owning ``key``: ``ticket_id`` if this call claimed it (unique insert)."""
        ...

    async def release_fault(self, key: str, ticket_id: str) -> None: ...

    # --- knowledge base ---
    async def insert_article(self, article: Article, tokens: ArticleTokens) -> None: ...
    async def find_articles(
        self, words: Sequence[str], model_family: str | None, limit: int
    ) -> list[tuple[Article, ArticleTokens]]: ...
