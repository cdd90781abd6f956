"""The small interfaces notify's core needs; adapters implement them, tests fake them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from services.notify.core.model import Category, DeliveryStatus, Mail, Recipient


@dataclass(frozen=True)
class UserEntry:
    """A user as the identity projection knows them."""

    user_id: str
    org_id: str | None
    email: str
    name: str
    language: str
    role: str | None
    device_ids: frozenset[str]
    status: str


@dataclass(frozen=True)
class OrgEntry:
    org_id: str
    timezone: str
    language: str


class Directory(Protocol):
    """Who is who: the identity projections (users, organisations)."""

    async def user(self, user_id: str) -> UserEntry | None: ...

    async def users_of(self, org_id: str) -> list[UserEntry]: ...

    async def organisation(self, org_id: str) -> OrgEntry | None: ...


class PreferenceStore(Protocol):
    async def opted_out_of(self, category: Category, user_ids: Iterable[str]) -> set[str]:
        """Which of ``user_ids`` opted out of ``category``."""

    async def get(self, user_id: str) -> frozenset[Category]: ...

    async def put(self, user_id: str, opted_out: frozenset[Category]) -> None: ...


@dataclass(frozen=True)
class DeliveryRecord:
    """One message of the ledger: created once per (event, recipient), before sending."""

    delivery_id: str
    event_id: str
    event_type: str
    category: Category
    recipient: Recipient
    created_at: datetime


@dataclass(frozen=True)
class DeliveryState:
    record: DeliveryRecord
    status: DeliveryStatus
    attempts: int
    last_activity: datetime
    answer: str | None = None


class Ledger(Protocol):
    """The delivery ledger. Every once-only fact is a unique insert (no conditional updates)."""

    async def save_source(
        self, source_id: str, event_type: str, payload: Mapping[str, Any]
    ) -> None:
        """Keep what a delivery is rendered from (once), so a recovery can render it again."""

    async def source(self, source_id: str) -> tuple[str, dict[str, Any]] | None: ...

    async def claim(self, records: list[DeliveryRecord]) -> set[str]:
        """Insert the records; return the ids that were new (the caller now owns them)."""

    async def states(self, delivery_ids: Iterable[str]) -> dict[str, DeliveryState]: ...

    async def take_over(self, delivery_id: str, attempt: int) -> bool:
        """Claim send round ``attempt`` (>= 2) of a delivery; True for exactly one caller."""

    async def note_retry(
        self, delivery_id: str, attempt: int, try_no: int, answer: str
    ) -> None: ...

    async def finish(
        self, delivery_id: str, status: DeliveryStatus, answer: str | None = None
    ) -> bool:
        """Record the final outcome (sent or failed), once; True when this call recorded it."""

    async def stale(self, cutoff: datetime, horizon: datetime) -> list[DeliveryState]:
        """Pending or retrying deliveries created after ``horizon`` and idle since ``cutoff``."""


class Mailer(Protocol):
    async def send(self, mail: Mail) -> None:
        """Hand ``mail`` to the SMTP server; raise TemporaryFailure or PermanentFailure."""


class TemporaryFailure(Exception):
    """The server may accept later (4xx, connection lost, timeout)."""


class PermanentFailure(Exception):
    """The server refused for good (5xx); carries its answer."""


@dataclass(frozen=True)
class DigestItem:
    bucket: str
    event_id: str
    recipient: Recipient
    payload: dict[str, Any]
    window_start: datetime
    window_end: datetime


@dataclass(frozen=True)
class DigestBucket:
    bucket: str
    window_start: datetime
    window_end: datetime


class DigestStore(Protocol):
    async def open_bucket(self, recipient_key: str, now: datetime) -> DigestBucket | None:
        """The recipient's bucket whose window is still open at ``now``, if any."""

    async def add(self, item: DigestItem) -> bool:
        """Insert the item once per (recipient, event); True when new."""

    async def due(self, now: datetime, horizon: datetime) -> list[str]:
        """Buckets whose window has ended, newer than ``horizon``."""

    async def items(self, bucket: str) -> list[DigestItem]: ...

    async def done(self, bucket: str) -> None:
        """The bucket's digest is out: ``due`` no longer lists it."""


class TokenOpener(Protocol):
    def __call__(self, box: str, *, context: str) -> str: ...
