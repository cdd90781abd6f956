"""What notify talks about: categories, recipients, notifications and the delivery ledger's terms.

Nothing here does I/O; the adapters fill these from Kafka, the projections and MongoDB.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Language = Literal["fi", "sv", "en"]


class Category(StrEnum):
    """What a message is about; users opt out per category (except the mandatory ones)."""

    CONFIRMATION = "confirmation"
    INVITATION = "invitation"
    ACCOUNT_EXISTS = "account_exists"
    TICKET_RECEIVED = "ticket_received"
    TICKET_STATUS = "ticket_status"
    SLA = "sla"
    SUPPLY_ORDER = "supply_order"
    READING_ANOMALY = "reading_anomaly"
    DEVICE_STALE = "device_stale"


MANDATORY = frozenset({Category.CONFIRMATION, Category.INVITATION, Category.ACCOUNT_EXISTS})
OPTIONAL = frozenset(Category) - MANDATORY


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True)
class Recipient:
    """One person (or the agents' shared address) to write to, and how."""

    address: str
    language: Language
    timezone: str = "UTC"
    name: str = ""
    user_id: str | None = None

    @property
    def key(self) -> str:
        """The ledger's recipient key: the user when known, else the address."""
        return self.user_id or f"address:{self.address.lower()}"


@dataclass(frozen=True)
class Notification:
    """An event that concerns people, in the terms templates use."""

    event_id: str
    event_type: str
    category: Category
    template: str
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Mail:
    """A rendered message to one recipient."""

    delivery_id: str
    message_id: str
    to: str
    subject: str
    text: str
    html: str


def delivery_id(event_id: str, recipient_key: str) -> str:
    """The ledger key of one message: one per (event, recipient), whatever happens."""
    return f"{event_id}:{recipient_key}"


def message_id(delivery: str, domain: str) -> str:
    """A Message-ID derived from the delivery: a copy sent again carries the same one, so the
    receiving side can drop it (the crash window of at-least-once delivery)."""
    digest = hashlib.sha256(delivery.encode()).hexdigest()[:32]
    return f"<{digest}@{domain}>"


class Preferences(BaseModel):
    """A user's opt-outs: the optional categories they do not want e-mail about."""

    model_config = ConfigDict(extra="forbid")

    opted_out: list[Category] = Field(
        default_factory=list,
        description="Categories not to e-mail about; mandatory ones (confirmation, invitation, "
        "account_exists) cannot be opted out of.",
    )


class PreferencesPublic(Preferences):
    mandatory: list[Category] = Field(
        default_factory=lambda: sorted(MANDATORY), description="Always sent."
    )
    categories: list[Category] = Field(
        default_factory=lambda: list(Category), description="Every category."
    )


class DeliveryPublic(BaseModel):
    """One ledger record as agents see it."""

    delivery_id: str
    event_id: str
    event_type: str
    category: Category
    recipient: str
    user_id: str | None
    status: DeliveryStatus
    answer: str | None = Field(None, description="The server's last answer on failure.")
    attempts: int = Field(description="Send rounds so far.")
    created_at: datetime
    updated_at: datetime
