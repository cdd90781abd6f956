"""Notify's use cases, one function each: tell people of an event, flush digests, recover.

The delivery promise: one ledger record per (event, recipient) is inserted right BEFORE the
message is sent, and that unique insert decides who sends. A redelivered event, a second
instance or a restart finds the record and does not send again. The one window left is a
crash after the SMTP server accepted a message and before its outcome was recorded: such a
record stays pending, and the recovery sweep sends it again once its lease has run out
(at-least-once for that window, so no confirmation is lost); the copy carries the same
Message-ID (derived from event and recipient), by which receiving systems (and Mailpit with
``--ignore-duplicate-ids``) drop it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from services.notify.core.model import (
    MANDATORY,
    Category,
    DeliveryStatus,
    Mail,
    Notification,
    Recipient,
    delivery_id,
    message_id,
)
from services.notify.core.recipients import KINDS, Policy, notification, recipients
from services.notify.core.render import Renderer
from services.notify.ports import (
    DeliveryRecord,
    DeliveryState,
    DigestBucket,
    DigestItem,
    DigestStore,
    Directory,
    Ledger,
    Mailer,
    PermanentFailure,
    PreferenceStore,
    TemporaryFailure,
    TokenOpener,
)
from shared.contracts import SlaEscalation
from shared.events import Event
from shared.logging import get_logger

log = get_logger(__name__)

DIGEST_TYPE = "notify.sla-digest"


@dataclass(frozen=True)
class Options:
    """Delivery tuning, from settings."""

    concurrency: int = 8
    send_attempts: int = 4
    backoff_seconds: float = 0.2
    backoff_max_seconds: float = 5.0
    lease_seconds: float = 120.0
    max_claims: int = 5
    digest_window_seconds: int = 300
    horizon: timedelta = timedelta(days=2)
    message_id_domain: str = "fleetdesk.local"


@dataclass
class Deps:
    directory: Directory
    preferences: PreferenceStore
    ledger: Ledger
    mailer: Mailer
    digests: DigestStore
    renderer: Renderer
    policy: Policy
    opener: TokenOpener
    options: Options
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


@dataclass(frozen=True)
class NotifyPeople:
    """Command: tell the people concerned of ``event`` (``event_id`` from its envelope)."""

    event_id: str
    event: Event


# --- tell people of an event ----------------------------------------------------------------


async def notify_people(cmd: NotifyPeople, deps: Deps) -> int:
    """Resolve, filter opt-outs, record, send. Returns how many messages this call sent."""
    note = notification(cmd.event_id, cmd.event, deps.policy, deps.opener)
    people = await recipients(cmd.event, deps.directory, deps.policy)
    people = await _without_opt_outs(people, note.category, deps.preferences)
    if not people:
        return 0
    if isinstance(cmd.event, SlaEscalation):
        return await _into_digest(cmd.event_id, cmd.event, people, deps)
    await deps.ledger.save_source(
        cmd.event_id, cmd.event.event_type, cmd.event.model_dump(mode="json")
    )
    return await _deliver(note, people, deps)


async def _without_opt_outs(
    people: list[Recipient], category: Category, preferences: PreferenceStore
) -> list[Recipient]:
    if category in MANDATORY:
        return people
    users = [p.user_id for p in people if p.user_id]
    opted = await preferences.opted_out_of(category, users) if users else set()
    return [p for p in people if not (p.user_id and p.user_id in opted)]


async def _deliver(note: Notification, people: list[Recipient], deps: Deps) -> int:
    now = deps.clock()
    records = [
        DeliveryRecord(
            delivery_id(note.event_id, p.key), note.event_id, note.event_type, note.category, p, now
        )
        for p in people
    ]
    return await _send_all(((r, note, 1) for r in records), deps, claim=True)


async def _send_all(
    jobs: Iterable[tuple[DeliveryRecord, Notification, int]], deps: Deps, *, claim: bool = False
) -> int:
    """Send concurrently, at most ``concurrency`` at a time (the SMTP connections).

    With ``claim``, each record is inserted into the ledger by the worker right before it is
    sent, never ahead: a record in the ledger that is still pending is one whose message was
    being sent, so the recovery sweep never takes over a message that merely waits its turn.
    A record that exists already belongs to an earlier run (sent, failed, or in flight under
    someone's lease) and is skipped.
    """
    jobs_iter = iter(jobs)
    sent = 0

    async def worker() -> None:
        nonlocal sent
        for record, note, attempt in jobs_iter:
            if claim:
                record = replace(record, created_at=deps.clock())  # the lease starts now
                if not await deps.ledger.claim([record]):
                    continue
            if await send_one(record, note, attempt, deps) is DeliveryStatus.SENT:
                sent += 1

    await asyncio.gather(*(worker() for _ in range(deps.options.concurrency)))
    return sent


def render(record: DeliveryRecord, note: Notification, deps: Deps) -> Mail:
    subject, text, html = deps.renderer.render(note, record.recipient)
    return Mail(
        delivery_id=record.delivery_id,
        message_id=message_id(record.delivery_id, deps.options.message_id_domain),
        to=record.recipient.address,
        subject=subject,
        text=text,
        html=html,
    )


async def send_one(
    record: DeliveryRecord, note: Notification, attempt: int, deps: Deps
) -> DeliveryStatus:
    """One send round: temporary failures retried with backoff, the outcome recorded once."""
    mail = render(record, note, deps)
    opts = deps.options
    try:
        async for try_ in AsyncRetrying(
            stop=stop_after_attempt(opts.send_attempts),
            wait=wait_exponential(multiplier=opts.backoff_seconds, max=opts.backoff_max_seconds),
            retry=retry_if_exception_type(TemporaryFailure),
            reraise=True,
        ):
            with try_:
                try:
                    await deps.mailer.send(mail)
                except TemporaryFailure as exc:
                    # Also the sender's heartbeat: the lease counts from the last activity.
                    await deps.ledger.note_retry(
                        record.delivery_id, attempt, try_.retry_state.attempt_number, str(exc)
                    )
                    raise
    except TemporaryFailure:
        return DeliveryStatus.RETRYING  # the recovery sweep tries again after the lease
    except PermanentFailure as exc:
        await deps.ledger.finish(record.delivery_id, DeliveryStatus.FAILED, str(exc))
        return DeliveryStatus.FAILED
    await deps.ledger.finish(record.delivery_id, DeliveryStatus.SENT)
    return DeliveryStatus.SENT


# --- digests of SLA escalations -------------------------------------------------------------


async def _into_digest(
    event_id: str, event: SlaEscalation, people: list[Recipient], deps: Deps
) -> int:
    """Escalations wait in a bucket per recipient: the first one opens a window of
    ``digest_window_seconds``; all that arrive within it go out together when it closes.

    Windows follow arrival, not firing time, so a backlog after an outage is grouped too. An
    item is recorded once per (recipient, event): a redelivered escalation changes nothing.
    """
    window = timedelta(seconds=deps.options.digest_window_seconds)
    sent = 0
    for person in people:
        now = deps.clock()
        bucket = await deps.digests.open_bucket(person.key, now)
        if bucket is None:
            bucket = DigestBucket(f"{person.key}@{now.timestamp():.6f}", now, now + window)
        item = DigestItem(
            bucket.bucket,
            event_id,
            person,
            event.model_dump(mode="json"),
            bucket.window_start,
            bucket.window_end,
        )
        if await deps.digests.add(item):
            sent += await _send_late([item], deps)
    return sent


def _digest_source(bucket: str) -> str:
    return f"digest:{bucket}"


async def _send_late(items: list[DigestItem], deps: Deps) -> int:
    """Items that reached a bucket after its digest was written go out on their own.

    Both the adder (after adding) and the flusher (after writing the digest) look, so an item
    is never left out; if both find it, the ledger's unique record lets one of them send it.
    """
    if not items:
        return 0
    source = await deps.ledger.source(_digest_source(items[0].bucket))
    if source is None:
        return 0
    included = {i["event_id"] for i in source[1]["items"]}
    sent = 0
    for item in items:
        if item.event_id in included:
            continue
        event = SlaEscalation.model_validate(item.payload)
        await deps.ledger.save_source(item.event_id, event.event_type, item.payload)
        note = notification(item.event_id, event, deps.policy, deps.opener)
        sent += await _deliver(note, [item.recipient], deps)
    return sent


def digest_notification(source_id: str, payload: dict[str, Any]) -> Notification:
    items = sorted(payload["items"], key=lambda i: (i["fired_at"], i["ticket_id"]))
    if len(items) == 1:
        return Notification(source_id, DIGEST_TYPE, Category.SLA, "sla", dict(items[0]))
    return Notification(
        source_id,
        DIGEST_TYPE,
        Category.SLA,
        "sla_digest",
        {
            "items": items,
            "breaches": sum(1 for i in items if i["kind"] == "breach"),
            "window_start": payload["window_start"],
            "window_end": payload["window_end"],
        },
    )


async def flush_digests(deps: Deps) -> int:
    """Send one message per bucket whose window has ended. Safe to run anywhere, any time."""
    now = deps.clock()
    sent = 0
    for bucket in await deps.digests.due(now, now - deps.options.horizon):
        items = await deps.digests.items(bucket)
        if not items:
            continue
        source_id = _digest_source(bucket)
        if await deps.ledger.source(source_id) is None:
            await deps.ledger.save_source(
                source_id,
                DIGEST_TYPE,
                {
                    "items": [{**i.payload, "event_id": i.event_id} for i in items],
                    "window_start": items[0].window_start.isoformat(),
                    "window_end": items[0].window_end.isoformat(),
                },
            )
        stored = await deps.ledger.source(source_id)
        assert stored is not None
        note = digest_notification(source_id, stored[1])
        sent += await _deliver(note, [items[0].recipient], deps)
        sent += await _send_late(items, deps)
        await deps.digests.done(bucket)
    return sent


# --- recovery -------------------------------------------------------------------------------


async def note_for(state: DeliveryState, deps: Deps) -> Notification | None:
    """Render input of a recorded delivery, from the source kept for it."""
    source_id = state.record.event_id
    source = await deps.ledger.source(source_id)
    if source is None:
        return None
    event_type, payload = source
    if event_type == DIGEST_TYPE:
        return digest_notification(source_id, payload)
    model = KINDS[event_type][0]
    return notification(source_id, model.model_validate(payload), deps.policy, deps.opener)


async def recover_deliveries(deps: Deps) -> int:
    """Take over deliveries left pending (a crash mid-send) or retrying, once their lease ran
    out; give up after ``max_claims`` rounds with the last answer recorded."""
    now = deps.clock()
    stale = await deps.ledger.stale(
        now - timedelta(seconds=deps.options.lease_seconds), now - deps.options.horizon
    )
    jobs: list[tuple[DeliveryRecord, Notification, int]] = []
    for state in stale:
        attempt = state.attempts + 1
        if attempt > deps.options.max_claims:
            await deps.ledger.finish(
                state.record.delivery_id,
                DeliveryStatus.FAILED,
                f"gave up after {state.attempts} rounds: {state.answer or 'no answer'}",
            )
            continue
        if not await deps.ledger.take_over(state.record.delivery_id, attempt):
            continue  # another instance took it
        try:
            note = await note_for(state, deps)
        except Exception as exc:  # a source that no longer renders: record why
            note = None
            log.warning(
                "delivery cannot be rendered again",
                delivery_id=state.record.delivery_id,
                error=repr(exc),
            )
        if note is None:
            await deps.ledger.finish(
                state.record.delivery_id, DeliveryStatus.FAILED, "source of the message is gone"
            )
            continue
        jobs.append((state.record, note, attempt))
    return await _send_all(jobs, deps)
