"""In-memory fakes of notify's ports, for the domain tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from services.notify.core.handlers import Deps, Options
from services.notify.core.model import Category, DeliveryStatus, Mail, Recipient
from services.notify.core.recipients import Policy
from services.notify.core.render import Renderer
from services.notify.ports import (
    DeliveryRecord,
    DeliveryState,
    DigestBucket,
    DigestItem,
    OrgEntry,
    PermanentFailure,
    TemporaryFailure,
    UserEntry,
)
from shared.sealing import SealingKey

KEY = SealingKey.generate()


@dataclass
class FakeDirectory:
    users: dict[str, UserEntry] = field(default_factory=dict)
    orgs: dict[str, OrgEntry] = field(default_factory=dict)

    def add_user(
        self,
        user_id: str,
        org_id: str | None,
        role: str | None,
        *,
        language: str = "fi",
        devices: Iterable[str] = (),
        status: str = "active",
    ) -> UserEntry:
        user = UserEntry(
            user_id,
            org_id,
            f"{user_id}@example.com",
            user_id,
            language,
            role,
            frozenset(devices),
            status,
        )
        self.users[user_id] = user
        return user

    async def user(self, user_id: str) -> UserEntry | None:
        return self.users.get(user_id)

    async def users_of(self, org_id: str) -> list[UserEntry]:
        return [u for u in self.users.values() if u.org_id == org_id]

    async def organisation(self, org_id: str) -> OrgEntry | None:
        return self.orgs.get(org_id)


@dataclass
class FakePreferences:
    prefs: dict[str, frozenset[Category]] = field(default_factory=dict)

    async def opted_out_of(self, category: Category, user_ids: Iterable[str]) -> set[str]:
        return {u for u in user_ids if category in self.prefs.get(u, frozenset())}

    async def get(self, user_id: str) -> frozenset[Category]:
        return self.prefs.get(user_id, frozenset())

    async def put(self, user_id: str, opted_out: frozenset[Category]) -> None:
        self.prefs[user_id] = opted_out


@dataclass
class FakeLedger:
    records: dict[str, DeliveryRecord] = field(default_factory=dict)
    log: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    async def save_source(
        self, source_id: str, event_type: str, payload: Mapping[str, Any]
    ) -> None:
        self.sources.setdefault(source_id, (event_type, dict(payload)))

    async def source(self, source_id: str) -> tuple[str, dict[str, Any]] | None:
        return self.sources.get(source_id)

    async def claim(self, records: list[DeliveryRecord]) -> set[str]:
        new = {r.delivery_id for r in records if r.delivery_id not in self.records}
        for r in records:
            self.records.setdefault(r.delivery_id, r)
        return new

    def _insert(self, key: str, doc: dict[str, Any]) -> bool:
        if key in self.log:
            return False
        self.log[key] = {**doc, "at": self.now}
        return True

    async def take_over(self, delivery_id: str, attempt: int) -> bool:
        return self._insert(f"{delivery_id}#claim{attempt}", {"d": delivery_id, "attempt": attempt})

    async def note_retry(self, delivery_id: str, attempt: int, try_no: int, answer: str) -> None:
        self._insert(
            f"{delivery_id}#retry{attempt}.{try_no}",
            {"d": delivery_id, "attempt": attempt, "answer": answer},
        )

    async def finish(
        self, delivery_id: str, status: DeliveryStatus, answer: str | None = None
    ) -> bool:
        return self._insert(
            f"{delivery_id}#final", {"d": delivery_id, "status": status, "answer": answer}
        )

    def state(self, delivery_id: str) -> DeliveryState:
        record = self.records[delivery_id]
        entries = {k: v for k, v in self.log.items() if v["d"] == delivery_id}
        attempts = max([1] + [v["attempt"] for k, v in entries.items() if "#claim" in k])
        last = max([record.created_at] + [v["at"] for v in entries.values()])
        final = entries.get(f"{delivery_id}#final")
        retries = [v for k, v in entries.items() if "#retry" in k]
        if final:
            return DeliveryState(record, final["status"], attempts, last, final["answer"])
        answer = retries[-1]["answer"] if retries else None
        status = (
            DeliveryStatus.RETRYING
            if any(r["attempt"] == attempts for r in retries)
            else DeliveryStatus.PENDING
        )
        return DeliveryState(record, status, attempts, last, answer)

    async def states(self, delivery_ids: Iterable[str]) -> dict[str, DeliveryState]:
        return {d: self.state(d) for d in delivery_ids if d in self.records}

    async def stale(self, cutoff: datetime, horizon: datetime) -> list[DeliveryState]:
        states = [self.state(d) for d in self.records]
        return [
            s
            for s in states
            if s.status in (DeliveryStatus.PENDING, DeliveryStatus.RETRYING)
            and s.last_activity < cutoff
        ]


@dataclass
class FakeDigests:
    items_: dict[str, DigestItem] = field(default_factory=dict)
    done_: set[str] = field(default_factory=set)

    async def open_bucket(self, recipient_key: str, now: datetime) -> DigestBucket | None:
        for i in self.items_.values():
            if i.recipient.key == recipient_key and i.window_end > now:
                return DigestBucket(i.bucket, i.window_start, i.window_end)
        return None

    async def add(self, item: DigestItem) -> bool:
        key = f"{item.recipient.key}|{item.event_id}"
        if key in self.items_:
            return False
        self.items_[key] = item
        return True

    async def due(self, now: datetime, horizon: datetime) -> list[str]:
        return sorted({i.bucket for i in self.items_.values() if i.window_end <= now} - self.done_)

    async def items(self, bucket: str) -> list[DigestItem]:
        return [i for k, i in sorted(self.items_.items()) if i.bucket == bucket]

    async def done(self, bucket: str) -> None:
        self.done_.add(bucket)


@dataclass
class FakeMailer:
    sent: list[Mail] = field(default_factory=list)
    fail_temporarily: int = 0
    refuse: set[str] = field(default_factory=set)

    async def send(self, mail: Mail) -> None:
        if mail.to in self.refuse:
            raise PermanentFailure("550 5.1.1 no such user")
        if self.fail_temporarily > 0:
            self.fail_temporarily -= 1
            raise TemporaryFailure("451 4.3.0 try again later")
        self.sent.append(mail)


def deps(**overrides: Any) -> Deps:
    base: dict[str, Any] = {
        "directory": FakeDirectory(),
        "preferences": FakePreferences(),
        "ledger": FakeLedger(),
        "mailer": FakeMailer(),
        "digests": FakeDigests(),
        "renderer": Renderer(),
        "policy": Policy("agents@service.example.com", "en", "https://portal.example.com"),
        "opener": KEY.open,
        "options": Options(
            concurrency=4,
            backoff_seconds=0.001,
            backoff_max_seconds=0.001,
            lease_seconds=60,
            digest_window_seconds=60,
        ),
    }
    base.update(overrides)
    return Deps(**base)


def later(d: Deps, seconds: float) -> None:
    """Move the fakes' clock on."""
    moved = d.clock() + timedelta(seconds=seconds)
    d.clock = lambda: moved


def recipient(address: str, language: str = "en") -> Recipient:
    return Recipient(address, language)  # type: ignore[arg-type]
