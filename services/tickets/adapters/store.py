"""The tickets service's MongoDB collections: the store port, with the outbox on each ticket."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from services.tickets.core.kb import ArticleTokens
from services.tickets.core.model import Article, CalendarSpec, DeviceInfo, Ticket, TimelineEntry
from services.tickets.core.routing import TechnicianProfile
from services.tickets.core.status import OPEN
from services.tickets.ports import Outgoing, TicketFilter
from shared import projections
from shared.contracts import Role, TicketStatus
from shared.store import Document, insert_once, new_with_outbox, with_outbox

TICKETS = "tickets"
CALENDARS = "calendars"
TECHNICIANS = "technicians"
FAULT_CLAIMS = "fault_claims"
ARTICLES = "kb_articles"
FIRINGS = "sla_firings"  # once-only facts: (ticket, kind, deadline) -> the escalation event
PUBLISHED = "sla_published"  # which firings reached Kafka, per batch (inserts, no updates)

INDEXES = {
    **projections.INDEXES,
    TICKETS: [
        IndexModel([("org_id", ASCENDING)], name="by_org"),
        IndexModel([("device_id", ASCENDING)], name="by_device"),
        IndexModel([("assignee", ASCENDING)], name="by_assignee"),
        IndexModel([("status", ASCENDING)], name="by_status"),
        # The timer owner rebuilds its heap from one partition's running timers.
        IndexModel([("partition", ASCENDING), ("timers_active", ASCENDING)], name="by_partition"),
    ],
    ARTICLES: [
        IndexModel([("tokens", ASCENDING)], name="by_token"),
        IndexModel([("model_families", ASCENDING)], name="by_family"),
    ],
    FIRINGS: [
        IndexModel([("partition", ASCENDING)], name="by_partition"),
        IndexModel([("ticket_id", ASCENDING)], name="by_ticket"),  # shown on the timeline
    ],
    PUBLISHED: [IndexModel([("partitions", ASCENDING)], name="by_partition")],
}

_OPEN = [str(s) for s in OPEN]
_LOADED = [
    str(s)
    for s in (TicketStatus.ASSIGNED, TicketStatus.IN_PROGRESS, TicketStatus.WAITING_FOR_CUSTOMER)
]


def ticket_doc(ticket: Ticket) -> Document:
    """The stored form: the model plus top-level fields the timer owner reads without parsing."""
    doc = ticket.model_dump(mode="python", exclude={"ticket_id"})
    doc["sla"]["calendar"] = ticket.sla.calendar.model_dump(mode="json")
    doc = _plain(doc)
    offer = ticket.offer
    pending = offer is not None and not offer.accepted and offer.expires_at is not None
    timers = {
        "warn_at": ticket.sla.warn_at,
        "due_at": ticket.sla.due_at,
        "offer_id": offer.offer_id if pending and offer else None,
        "offer_expires_at": offer.expires_at if pending and offer else None,
    }
    doc["timers"] = timers
    doc["timers_active"] = any(v is not None for v in timers.values())
    doc["responded_late"] = bool(
        ticket.sla.responded_at
        and ticket.sla.deadline
        and ticket.sla.responded_at > ticket.sla.deadline
    )
    return {"_id": ticket.ticket_id, **doc}


def _plain(value: Any) -> Any:
    """Enums as their text (BSON knows no StrEnum), recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str) and type(value) is not str:
        return str(value)
    return value


def from_doc(doc: Document) -> Ticket:
    return Ticket.model_validate({**doc, "ticket_id": doc["_id"]})


class MongoTicketStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.db = db
        self.tickets = db[TICKETS]

    # --- projections ---
    async def device(self, device_id: str) -> DeviceInfo | None:
        doc = await self.db[projections.DEVICES].find_one({"_id": device_id})
        if doc is None:
            return None
        location = doc.get("location") or {}
        return DeviceInfo(
            device_id=doc["_id"],
            org_id=doc["org_id"],
            model=doc.get("model", ""),
            model_family=doc.get("model_family", ""),
            postal_code=location.get("postal_code", ""),
            region=location.get("region", ""),
            sla_response_hours=doc.get("sla_response_hours", 8),
            calendar_id=doc.get("calendar_id"),
            removed=bool(doc.get("removed")) or doc.get("status") == "removed",
        )

    async def organisation_known(self, org_id: str) -> bool:
        return await self.db[projections.ORGANISATIONS].find_one({"_id": org_id}) is not None

    async def user_role(self, user_id: str) -> Role | None:
        doc = await self.db[projections.USERS].find_one({"_id": user_id}, {"role": 1})
        return Role(doc["role"]) if doc and doc.get("role") else None

    # --- calendars ---
    async def calendar(self, calendar_id: str) -> CalendarSpec | None:
        doc = await self.db[CALENDARS].find_one({"_id": calendar_id})
        if doc is None:
            return None
        doc.pop("_id")
        return CalendarSpec.model_validate(doc)

    async def put_calendar(self, calendar_id: str, spec: CalendarSpec) -> None:
        await self.db[CALENDARS].replace_one(
            {"_id": calendar_id}, spec.model_dump(mode="json"), upsert=True
        )

    # --- tickets ---
    async def insert_ticket(self, ticket: Ticket, events: Sequence[Outgoing]) -> bool:
        return await insert_once(self.tickets, new_with_outbox(ticket_doc(ticket), *events))

    async def get_ticket(self, ticket_id: str) -> Ticket | None:
        doc = await self.tickets.find_one({"_id": ticket_id}, {"outbox": 0})
        return from_doc(doc) if doc else None

    async def save_ticket(
        self, ticket: Ticket, expected_revision: int, events: Sequence[Outgoing]
    ) -> bool:
        fields = ticket_doc(ticket)
        fields.pop("_id")
        update = with_outbox({"$set": fields}, *events)
        # One atomic conditional update: a concurrent writer of the same revision loses.
        result = await self.tickets.update_one(
            {"_id": ticket.ticket_id, "revision": expected_revision}, update
        )
        return result.matched_count == 1

    async def list_tickets(self, flt: TicketFilter, limit: int) -> list[Ticket]:
        query: dict[str, Any] = {}
        if flt.org_id:
            query["org_id"] = flt.org_id
        if flt.device_id:
            query["device_id"] = flt.device_id
        if flt.device_ids is not None:
            allowed = sorted(flt.device_ids)
            if flt.device_id and flt.device_id not in flt.device_ids:
                return []
            if not flt.device_id:
                query["device_id"] = {"$in": allowed}
        if flt.status:
            query["status"] = str(flt.status)
        if flt.assignee:
            query["assignee"] = flt.assignee
        if flt.breach is not None:
            late = [
                {
                    "sla.responded_at": None,
                    "sla.deadline": {"$lt": flt.now},
                    "status": {"$in": _OPEN},
                },
                {"responded_late": True},
            ]
            query["$or" if flt.breach else "$nor"] = late
        cursor = self.tickets.find(query, {"outbox": 0}).sort("created_at", DESCENDING).limit(limit)
        return [from_doc(doc) async for doc in cursor]

    async def escalations(self, ticket_ids: Sequence[str]) -> dict[str, list[TimelineEntry]]:
        ids = sorted(set(ticket_ids))
        if not ids:
            return {}
        query: dict[str, Any] = {"ticket_id": ids[0] if len(ids) == 1 else {"$in": ids}}
        out: dict[str, list[TimelineEntry]] = {}
        async for doc in self.db[FIRINGS].find(query):
            payload = doc.get("payload") or {}
            kind = doc["kind"]
            due = payload.get("due_at")
            if kind == "warning":
                text = f"SLA warning: the response is due {due}"
            else:
                text = f"SLA breach: the response was due {due}"
            out.setdefault(doc["ticket_id"], []).append(
                TimelineEntry(
                    at=payload.get("fired_at") or doc["deadline"],
                    by=None,
                    kind="sla",
                    text=text,
                    data={"escalation": kind, "deadline": due},
                )
            )
        return out

    # --- routing ---
    async def technicians(self) -> list[TechnicianProfile]:
        out = []
        async for doc in self.db[TECHNICIANS].find({}):
            out.append(
                TechnicianProfile(
                    user_id=doc["_id"],
                    postal_prefixes=tuple(doc.get("postal_prefixes", ())),
                    regions=tuple(doc.get("regions", ())),
                    skills=tuple(doc.get("skills", ())),
                    capacity=int(doc.get("capacity", 0)),
                    active=bool(doc.get("active", True)),
                )
            )
        return out

    async def put_technician(self, profile: TechnicianProfile) -> None:
        doc = {
            "postal_prefixes": list(profile.postal_prefixes),
            "regions": list(profile.regions),
            "skills": list(profile.skills),
            "capacity": profile.capacity,
            "active": profile.active,
        }
        await self.db[TECHNICIANS].replace_one({"_id": profile.user_id}, doc, upsert=True)

    async def open_loads(self, technician_ids: Sequence[str]) -> dict[str, int]:
        loads: dict[str, int] = {}
        for tech in technician_ids:
            loads[tech] = await self.tickets.count_documents(
                {"assignee": tech, "status": {"$in": _LOADED}}
            )
        return loads

    # --- fault tickets ---
    async def claim_fault(self, key: str, ticket_id: str) -> str:
        if await insert_once(self.db[FAULT_CLAIMS], {"_id": key, "ticket_id": ticket_id}):
            return ticket_id
        doc = await self.db[FAULT_CLAIMS].find_one({"_id": key})
        if doc is None:  # released meanwhile: claim again
            return await self.claim_fault(key, ticket_id)
        return str(doc["ticket_id"])

    async def release_fault(self, key: str, ticket_id: str) -> None:
        await self.db[FAULT_CLAIMS].delete_one({"_id": key, "ticket_id": ticket_id})

    # --- knowledge base ---
    async def insert_article(self, article: Article, tokens: ArticleTokens) -> None:
        doc = article.model_dump(mode="python", exclude={"article_id"})
        doc.update(
            _id=article.article_id,
            tokens=tokens.all,
            t_title=list(tokens.title),
            t_tags=list(tokens.tags),
            t_body=list(tokens.body),
        )
        await self.db[ARTICLES].insert_one(doc)

    async def find_articles(
        self, words: Sequence[str], model_family: str | None, limit: int
    ) -> list[tuple[Article, ArticleTokens]]:
        query: dict[str, Any] = {}
        if words:
            query["tokens"] = {"$in": list(words)}
        if model_family:
            query["model_families"] = model_family
        cursor = self.db[ARTICLES].find(query).sort("created_at", DESCENDING).limit(limit)
        out = []
        async for doc in cursor:
            tokens = ArticleTokens(
                tuple(doc.get("t_title", [])),
                tuple(doc.get("t_tags", [])),
                tuple(doc.get("t_body", [])),
            )
            out.append((Article.model_validate({**doc, "article_id": doc["_id"]}), tokens))
        return out
