"""Who hears of what: each event kind, its category, template and recipients.

Pure rules over the directory (the identity projections): no Kafka, no MongoDB here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from services.notify.core.model import Category, Language, Notification, Recipient
from services.notify.ports import Directory, OrgEntry, TokenOpener, UserEntry
from shared import contracts as c
from shared.events import Event

STOCK_ROLES = frozenset({c.Role.STOCK_MANAGER.value, c.Role.DEVICE_STOCK_MANAGER.value})
ACTIVE = c.UserStatus.ACTIVE.value

# Event type -> (contract, category, template)
KINDS: dict[str, tuple[type[Event], Category, str]] = {
    c.ConfirmationRequested.event_type: (
        c.ConfirmationRequested,
        Category.CONFIRMATION,
        "confirmation",
    ),
    c.InvitationIssued.event_type: (c.InvitationIssued, Category.INVITATION, "invitation"),
    c.AccountExistsNotice.event_type: (
        c.AccountExistsNotice,
        Category.ACCOUNT_EXISTS,
        "account_exists",
    ),
    c.TicketCreated.event_type: (c.TicketCreated, Category.TICKET_RECEIVED, "ticket_received"),
    c.TicketStatusChanged.event_type: (
        c.TicketStatusChanged,
        Category.TICKET_STATUS,
        "ticket_status",
    ),
    c.SlaEscalation.event_type: (c.SlaEscalation, Category.SLA, "sla"),
    c.SupplyOrderRaised.event_type: (c.SupplyOrderRaised, Category.SUPPLY_ORDER, "supply_order"),
    c.ReadingAnomaly.event_type: (c.ReadingAnomaly, Category.READING_ANOMALY, "reading_anomaly"),
    c.DeviceStale.event_type: (c.DeviceStale, Category.DEVICE_STALE, "device_stale"),
}


@dataclass(frozen=True)
class Policy:
    """What the rules need from settings."""

    agents_address: str
    agents_language: Language
    portal_url: str


LANGUAGES = ("fi", "sv", "en")


def language_or(value: str | None, fallback: str = "en") -> Language:
    """``value`` when it is a language notify writes in, else ``fallback`` (else English)."""
    for candidate in (value, fallback):
        if candidate in LANGUAGES:
            return cast(Language, candidate)
    return "en"


def _person(user: UserEntry, org: OrgEntry | None) -> Recipient:
    return Recipient(
        address=user.email,
        language=language_or(user.language, org.language if org else "en"),
        timezone=org.timezone if org else "UTC",
        name=user.name,
        user_id=user.user_id,
    )


def _agents(policy: Policy, org: OrgEntry | None) -> Recipient:
    # The service centre reads times in the customer's zone: that is what the customer sees.
    return Recipient(
        address=policy.agents_address,
        language=policy.agents_language,
        timezone=org.timezone if org else "UTC",
    )


def notification(event_id: str, event: Event, policy: Policy, opener: TokenOpener) -> Notification:
    """The notification an event makes (its template context; secrets opened here)."""
    _model, category, template = KINDS[event.event_type]
    context: dict[str, Any] = event.model_dump(mode="json")
    if isinstance(event, c.ConfirmationRequested):
        token = opener(context.pop("sealed_token"), context="confirmation")
        context["link"] = f"{policy.portal_url}/identity/registrations/confirm?token={token}"
    elif isinstance(event, c.InvitationIssued):
        token = opener(context.pop("sealed_token"), context="invitation")
        context["link"] = f"{policy.portal_url}/identity/invitations/accept?token={token}"
    elif isinstance(event, c.AccountExistsNotice):
        context["link"] = f"{policy.portal_url}/identity/docs"
    return Notification(event_id, event.event_type, category, template, context)


async def recipients(event: Event, directory: Directory, policy: Policy) -> list[Recipient]:
    """Who must hear of ``event``: never the same recipient twice."""
    found: list[Recipient] = []
    if isinstance(event, c.ConfirmationRequested | c.AccountExistsNotice):
        user = await directory.user(event.user_id)
        org = await directory.organisation(user.org_id) if user and user.org_id else None
        found.append(
            Recipient(
                address=event.email,  # the address to confirm, not the one on file
                language=event.language,
                timezone=org.timezone if org else "UTC",
                user_id=event.user_id,
            )
        )
    elif isinstance(event, c.InvitationIssued):
        org = await directory.organisation(event.org_id) if event.org_id else None
        found.append(
            Recipient(
                address=event.email,
                language=event.language,
                timezone=org.timezone if org else "UTC",
                user_id=event.user_id,
            )
        )
    elif isinstance(event, c.TicketCreated | c.TicketStatusChanged):
        if event.created_by:
            user = await directory.user(event.created_by)
            if user is not None and user.status == ACTIVE and user.org_id == event.org_id:
                found.append(_person(user, await directory.organisation(event.org_id)))
    elif isinstance(event, c.SlaEscalation):
        found.append(_agents(policy, await directory.organisation(event.org_id)))
    elif isinstance(event, c.SupplyOrderRaised):
        org = await directory.organisation(event.org_id)
        found.extend(
            _person(u, org)
            for u in await directory.users_of(event.org_id)
            if u.status == ACTIVE and u.role in STOCK_ROLES and event.device_id in u.device_ids
        )
    elif isinstance(event, c.ReadingAnomaly | c.DeviceStale):
        org = await directory.organisation(event.org_id)
        found.extend(
            _person(u, org)
            for u in await directory.users_of(event.org_id)
            if u.status == ACTIVE and u.role == c.Role.ADMIN.value
        )
        found.append(_agents(policy, org))
    unique: dict[str, Recipient] = {}
    for r in found:
        unique.setdefault(r.key, r)
    return list(unique.values())
