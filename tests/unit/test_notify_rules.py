"""Notify's domain on fakes: recipients, languages, opt-outs, the ledger's once-only promise,
retries, digests, recovery after a crash, and who sees which live event."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.notify.config import NotifySettings
from services.notify.core.handlers import (
    NotifyPeople,
    flush_digests,
    notify_people,
    recover_deliveries,
)
from services.notify.core.model import (
    Category,
    DeliveryStatus,
    Mail,
    Notification,
    Recipient,
    delivery_id,
    message_id,
)
from services.notify.core.recipients import Policy, recipients
from services.notify.core.render import Renderer
from services.notify.core.visibility import LiveEvent, may_see
from services.notify.ports import DeliveryRecord, OrgEntry
from shared import contracts as c
from shared.auth import Principal
from shared.config import Environment
from shared.contracts import Role
from shared.sealing import SealingKey, seal
from tests.unit.notify_fakes import (
    KEY,
    FakeDigests,
    FakeDirectory,
    FakeLedger,
    FakeMailer,
    FakePreferences,
    deps,
    later,
    recipient,
)

ORG = "org-1"
NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def directory() -> FakeDirectory:
    d = FakeDirectory()
    d.orgs[ORG] = OrgEntry(ORG, "Europe/Helsinki", "fi")
    d.orgs["org-2"] = OrgEntry("org-2", "Europe/Stockholm", "sv")
    d.add_user("admin-fi", ORG, "admin", language="fi")
    d.add_user("admin-sv", ORG, "admin", language="sv")
    d.add_user("admin-invited", ORG, "admin", status="invited")
    d.add_user("stock", ORG, "stock_manager", devices=["dev-1"])
    d.add_user("dsm", ORG, "device_stock_manager", devices=["dev-1", "dev-2"])
    d.add_user("stock-other-device", ORG, "stock_manager", devices=["dev-2"])
    d.add_user("manager", ORG, "device_manager", devices=["dev-1"])
    d.add_user("foreign-admin", "org-2", "admin")
    d.add_user("foreign-stock", "org-2", "stock_manager", devices=["dev-1"])
    return d


POLICY = Policy("agents@service.example.com", "en", "https://portal.example.com")


def supply_order() -> c.SupplyOrderRaised:
    return c.SupplyOrderRaised(
        order_id="o1",
        device_id="dev-1",
        org_id=ORG,
        serial="SN-1",
        consumable="black",
        level=7,
        days_to_empty=3.5,
        action=c.SupplyAction.SHIPMENT,
        raised_at=NOW,
    )


def ticket_created(creator: str = "manager", out_of_hours: bool = True) -> c.TicketCreated:
    return c.TicketCreated(
        ticket_id="T-42",
        org_id=ORG,
        device_id="dev-1",
        created_by=creator,
        category=c.TicketCategory.FAULT,
        status=c.TicketStatus.NEW,
        clock_starts_at=datetime(2026, 11, 30, 6, 0, tzinfo=UTC),  # Monday 08:00 in Helsinki
        due_at=datetime(2026, 11, 30, 14, 0, tzinfo=UTC),
        out_of_hours=out_of_hours,
    )


def escalation(ticket: str, fired_at: datetime, kind: str = "warning") -> c.SlaEscalation:
    return c.SlaEscalation(
        ticket_id=ticket,
        org_id=ORG,
        device_id=None,
        kind=c.SlaKind(kind),
        due_at=fired_at + timedelta(hours=1),
        fired_at=fired_at,
    )


# --- recipients -----------------------------------------------------------------------------


async def test_supply_orders_go_to_the_devices_stock_managers_only() -> None:
    found = await recipients(supply_order(), directory(), POLICY)
    assert sorted(r.user_id or "" for r in found) == ["dsm", "stock"]
    assert {r.timezone for r in found} == {"Europe/Helsinki"}


async def test_anomalies_and_stale_devices_go_to_active_admins_and_the_agents() -> None:
    anomaly = c.ReadingAnomaly(
        device_id="dev-1", org_id=ORG, serial="SN-1", counters={"total": [100, 90]}, read_at=NOW
    )
    stale = c.DeviceStale(device_id="dev-1", org_id=ORG, serial="SN-1", last_seen_at=NOW)
    for event in (anomaly, stale):
        found = await recipients(event, directory(), POLICY)
        assert sorted(r.key for r in found) == [
            "address:agents@service.example.com",
            "admin-fi",
            "admin-sv",
        ]
        by_key = {r.key: r for r in found}
        assert by_key["admin-sv"].language == "sv"
        assert by_key["admin-fi"].language == "fi"


async def test_ticket_messages_go_to_the_creator_of_the_same_organisation() -> None:
    found = await recipients(ticket_created("manager"), directory(), POLICY)
    assert [(r.user_id, r.language, r.timezone) for r in found] == [
        ("manager", "fi", "Europe/Helsinki")
    ]
    assert await recipients(ticket_created("foreign-admin"), directory(), POLICY) == []
    assert await recipients(ticket_created("nobody"), directory(), POLICY) == []


async def test_sla_escalations_go_to_the_agents_shared_address() -> None:
    found = await recipients(escalation("T-1", NOW), directory(), POLICY)
    assert [r.address for r in found] == ["agents@service.example.com"]


# --- templates ------------------------------------------------------------------------------


def test_ticket_received_out_of_hours_in_three_languages() -> None:
    renderer = Renderer()
    note = Notification(
        "e1",
        c.TicketCreated.event_type,
        Category.TICKET_RECEIVED,
        "ticket_received",
        ticket_created().model_dump(mode="json"),
    )
    expected = {
        "fi": ("Tiketti T-42 vastaanotettu", "käsitellään alkaen", "maanantai", "8.00"),
        "sv": ("Ärende T-42 mottaget", "hanteras från och med", "måndag", "08:00"),
        "en": ("Ticket T-42 received", "will be handled from", "Monday", "08:00"),
    }
    for language, (subject, phrase, weekday, time) in expected.items():
        got_subject, text, html = renderer.render(
            note, Recipient("a@example.com", language, "Europe/Helsinki")
        )
        assert got_subject == subject
        assert phrase in text, text
        assert weekday in text, text  # Monday 30 November, 08:00 in Helsinki
        assert time in text, text
        assert f'lang="{language}"' in html and "T-42" in html
    # Within business hours the "handled from" sentence is left out.
    in_hours = Notification(
        "e2",
        c.TicketCreated.event_type,
        Category.TICKET_RECEIVED,
        "ticket_received",
        ticket_created(out_of_hours=False).model_dump(mode="json"),
    )
    _s, text, _h = renderer.render(in_hours, recipient("a@example.com", "en"))
    assert "handled from" not in text


def test_html_is_escaped_and_the_link_is_a_button() -> None:
    note = Notification(
        "e1",
        c.DeviceStale.event_type,
        Category.DEVICE_STALE,
        "device_stale",
        {"serial": "<b>SN</b>", "last_seen_at": NOW.isoformat()},
    )
    _s, text, html = Renderer().render(note, recipient("a@example.com"))
    assert "<b>SN</b>" in text
    assert "&lt;b&gt;SN&lt;/b&gt;" in html and "<b>SN</b>" not in html


async def test_confirmation_link_carries_the_opened_token_in_the_users_language() -> None:
    d = deps(directory=directory())
    event = c.ConfirmationRequested(
        user_id="new-user",
        email="new@example.com",
        language="sv",
        sealed_token=seal(KEY.public_key, "the-raw-token", context="confirmation"),
        expires_at=NOW + timedelta(hours=48),
    )
    assert await notify_people(NotifyPeople("ev-1", event), d) == 1
    mail = d.mailer.sent[0]  # type: ignore[attr-defined]
    assert mail.to == "new@example.com"
    assert mail.subject == "Bekräfta ditt Fleetdesk-konto"
    assert (
        "https://portal.example.com/identity/registrations/confirm?token=the-raw-token" in mail.text
    )
    assert (
        'href="https://portal.example.com/identity/registrations/confirm?token=the-raw-token"'
        in mail.html
    )
    assert mail.message_id == message_id(delivery_id("ev-1", "new-user"), "fleetdesk.local")


# --- the ledger: once per (event, recipient) ------------------------------------------------


async def test_a_redelivered_event_sends_nothing_twice() -> None:
    d = deps(directory=directory())
    assert await notify_people(NotifyPeople("ev-1", supply_order()), d) == 2
    assert await notify_people(NotifyPeople("ev-1", supply_order()), d) == 0
    assert sorted(m.to for m in d.mailer.sent) == ["dsm@example.com", "stock@example.com"]  # type: ignore[attr-defined]
    # Another event is another message.
    assert await notify_people(NotifyPeople("ev-2", supply_order()), d) == 2


async def test_opt_outs_are_honoured_but_mandatory_messages_still_go() -> None:
    prefs = FakePreferences(
        {
            "stock": frozenset({Category.SUPPLY_ORDER}),
            "new-user": frozenset({Category.CONFIRMATION}),
        }
    )
    d = deps(directory=directory(), preferences=prefs)
    await notify_people(NotifyPeople("ev-1", supply_order()), d)
    assert [m.to for m in d.mailer.sent] == ["dsm@example.com"]  # type: ignore[attr-defined]
    confirm = c.ConfirmationRequested(
        user_id="new-user",
        email="new@example.com",
        language="fi",
        sealed_token=seal(KEY.public_key, "tok", context="confirmation"),
        expires_at=NOW,
    )
    assert await notify_people(NotifyPeople("ev-2", confirm), d) == 1


async def test_temporary_failures_are_retried_and_permanent_ones_recorded() -> None:
    mailer = FakeMailer(fail_temporarily=2, refuse={"stock@example.com"})
    ledger = FakeLedger()
    d = deps(directory=directory(), mailer=mailer, ledger=ledger)
    d.options = d.options.__class__(concurrency=1, backoff_seconds=0.001, backoff_max_seconds=0.001)
    await notify_people(NotifyPeople("ev-1", supply_order()), d)
    assert [m.to for m in mailer.sent] == ["dsm@example.com"]
    refused = ledger.state(delivery_id("ev-1", "stock"))
    assert refused.status is DeliveryStatus.FAILED
    assert refused.answer is not None and refused.answer.startswith("550")
    sent = ledger.state(delivery_id("ev-1", "dsm"))
    assert sent.status is DeliveryStatus.SENT


async def test_a_server_that_keeps_failing_leaves_the_delivery_retrying_for_the_sweep() -> None:
    mailer = FakeMailer(fail_temporarily=100)
    ledger = FakeLedger()
    d = deps(directory=directory(), mailer=mailer, ledger=ledger)
    await notify_people(NotifyPeople("ev-1", ticket_created()), d)
    key = delivery_id("ev-1", "manager")
    assert ledger.state(key).status is DeliveryStatus.RETRYING
    mailer.fail_temporarily = 0
    assert await recover_deliveries(d) == 0  # within the lease: the sender may still be alive
    later(d, 61)
    assert await recover_deliveries(d) == 1
    assert ledger.state(key).status is DeliveryStatus.SENT
    assert ledger.state(key).attempts == 2
    assert await recover_deliveries(d) == 0


async def test_a_crash_mid_send_is_recovered_once_after_the_lease() -> None:
    ledger = FakeLedger()
    d = deps(directory=directory(), ledger=ledger)
    event = ticket_created()
    # The crashed run: source kept and record claimed, the message never handed over.
    await ledger.save_source("ev-1", event.event_type, event.model_dump(mode="json"))
    person = (await recipients(event, d.directory, d.policy))[0]
    await ledger.claim(
        [
            DeliveryRecord(
                delivery_id("ev-1", person.key),
                "ev-1",
                event.event_type,
                Category.TICKET_RECEIVED,
                person,
                NOW,
            )
        ]
    )
    # Kafka redelivers the event after the restart: the record exists, nothing is sent now.
    assert await notify_people(NotifyPeople("ev-1", event), d) == 0
    later(d, 61)
    assert await recover_deliveries(d) == 1
    assert await recover_deliveries(d) == 0
    assert len(d.mailer.sent) == 1  # type: ignore[attr-defined]


async def test_a_fan_out_longer_than_the_lease_is_not_taken_over_while_it_runs() -> None:
    """Each message takes half a lease and the sweep runs during every send: messages still
    waiting their turn are not in the ledger yet, so the sweep has nothing to take over."""
    d = deps(directory=directory())
    d.options = d.options.__class__(concurrency=1, lease_seconds=60)
    clock = [NOW]
    d.clock = lambda: clock[0]
    sweeping = [False]
    swept: list[int] = []
    mailer = d.mailer
    send = mailer.send

    async def slow_send(mail: Mail) -> None:
        clock[0] += timedelta(seconds=30)
        if not sweeping[0]:
            sweeping[0] = True
            swept.append(await recover_deliveries(d))
            sweeping[0] = False
        await send(mail)

    mailer.send = slow_send  # type: ignore[method-assign]
    anomaly = c.ReadingAnomaly(
        device_id="dev-1", org_id=ORG, serial="SN-1", counters={"total": [2, 1]}, read_at=NOW
    )
    assert await notify_people(NotifyPeople("ev-1", anomaly), d) == 3  # 2 admins + agents
    assert swept == [0, 0, 0]
    assert len(mailer.sent) == 3  # type: ignore[attr-defined]


async def test_the_sweep_gives_up_after_max_claims_with_the_last_answer() -> None:
    mailer = FakeMailer(fail_temporarily=10_000)
    ledger = FakeLedger()
    d = deps(directory=directory(), mailer=mailer, ledger=ledger)
    d.options = d.options.__class__(
        send_attempts=1, backoff_seconds=0.001, lease_seconds=1, max_claims=2
    )
    await notify_people(NotifyPeople("ev-1", ticket_created()), d)
    for _ in range(3):
        later(d, 2)
        await recover_deliveries(d)
    state = ledger.state(delivery_id("ev-1", "manager"))
    assert state.status is DeliveryStatus.FAILED
    assert state.answer is not None and "451" in state.answer


# --- digests --------------------------------------------------------------------------------


async def test_a_burst_of_escalations_becomes_one_digest() -> None:
    digests = FakeDigests()
    d = deps(directory=directory(), digests=digests)
    for i in range(12):
        d.clock = lambda i=i: NOW + timedelta(seconds=i * 4)  # type: ignore[misc]
        # Firing times do not matter (a backlog after an outage is grouped too).
        event = escalation(f"T-{i}", NOW - timedelta(hours=i), "breach" if i % 3 else "warning")
        await notify_people(NotifyPeople(f"ev-{i}", event), d)
        await notify_people(NotifyPeople(f"ev-{i}", event), d)  # redelivered
    assert d.mailer.sent == []  # type: ignore[attr-defined]
    assert await flush_digests(d) == 0  # the window (60 s from the first) is still open
    later(d, 20)
    assert await flush_digests(d) == 1
    assert await flush_digests(d) == 0
    mail = d.mailer.sent[0]  # type: ignore[attr-defined]
    assert mail.to == "agents@service.example.com"
    assert mail.subject == "SLA: 12 escalations (8 breaches)"
    assert all(f"T-{i} " in mail.text for i in range(12))


async def test_a_lone_escalation_is_sent_as_itself_and_the_next_opens_a_new_window() -> None:
    d = deps(directory=directory())
    d.clock = lambda: NOW
    await notify_people(NotifyPeople("ev-1", escalation("T-1", NOW, "breach")), d)
    later(d, 61)
    assert await flush_digests(d) == 1
    assert d.mailer.sent[0].subject == "SLA breach: ticket T-1"  # type: ignore[attr-defined]
    assert await notify_people(NotifyPeople("ev-2", escalation("T-2", NOW)), d) == 0
    assert await flush_digests(d) == 0
    later(d, 61)
    assert await flush_digests(d) == 1
    assert [m.subject for m in d.mailer.sent][1] == "SLA warning: ticket T-2"  # type: ignore[attr-defined]


async def test_an_escalation_reaching_a_bucket_after_its_digest_goes_out_on_its_own() -> None:
    digests = FakeDigests()
    d = deps(directory=directory(), digests=digests)
    d.clock = lambda: NOW
    await notify_people(NotifyPeople("ev-1", escalation("T-1", NOW)), d)
    later(d, 61)
    assert await flush_digests(d) == 1
    # The race the ledger closes: an item lands in the bucket after the digest was written.
    (first,) = digests.items_.values()
    late = first.__class__(
        first.bucket,
        "ev-2",
        first.recipient,
        escalation("T-2", NOW).model_dump(mode="json"),
        first.window_start,
        first.window_end,
    )
    await digests.add(late)
    digests.done_.discard(first.bucket)
    assert await flush_digests(d) == 1
    assert await flush_digests(d) == 0
    assert [m.subject for m in d.mailer.sent] == [  # type: ignore[attr-defined]
        "SLA warning: ticket T-1",
        "SLA warning: ticket T-2",
    ]


# --- live events ----------------------------------------------------------------------------


def test_live_events_are_scoped_by_organisation_role_and_device() -> None:
    def who(role: Role | None, org: str | None = ORG, devices: tuple[str, ...] = ()) -> Principal:
        return Principal(uuid.uuid4().hex, org, role, frozenset(devices))

    ticket = LiveEvent(1, "tickets.ticket-status-changed", ORG, "dev-1")
    org_level = LiveEvent(2, "tickets.ticket-created", ORG, None, people=frozenset({"creator"}))
    assert may_see(who(Role.AGENT, None), ticket)
    assert may_see(who(Role.ADMIN), ticket) and may_see(who(Role.ADMIN), org_level)
    assert may_see(who(Role.DEVICE_MANAGER, devices=("dev-1",)), ticket)
    assert not may_see(who(Role.DEVICE_MANAGER, devices=("dev-2",)), ticket)
    assert not may_see(who(Role.DEVICE_MANAGER, devices=("dev-1",)), org_level)
    assert may_see(Principal("creator", ORG, Role.DEVICE_MANAGER), org_level)
    assert not may_see(who(Role.ADMIN, "org-2"), ticket)
    assert not may_see(who(Role.KB_VIEWER), ticket)
    assert not may_see(who(Role.TECHNICIAN, None), ticket)
    assert not may_see(who(None), ticket)


# --- settings -------------------------------------------------------------------------------


def test_the_development_sealing_key_is_refused_outside_development() -> None:
    assert NotifySettings(environment=Environment.DEVELOPMENT)
    with pytest.raises(ValueError, match="notify_sealing_private_key"):
        NotifySettings(environment=Environment.PRODUCTION)
    key = SealingKey.generate().private_key_b64()
    assert NotifySettings(environment=Environment.PRODUCTION, notify_sealing_private_key=key)


SAMPLES: dict[str, dict[str, object]] = {
    "confirmation": {"link": "https://p/c?token=t", "expires_at": NOW.isoformat()},
    "invitation": {"link": "https://p/i?token=t", "expires_at": NOW.isoformat(), "role": "admin"},
    "account_exists": {"link": "https://p/docs", "attempted_at": NOW.isoformat()},
    "ticket_received": ticket_created().model_dump(mode="json"),
    "ticket_status": {"ticket_id": "T-1", "old_status": "new", "new_status": "resolved"},
    "sla": escalation("T-1", NOW).model_dump(mode="json"),
    "sla_digest": {
        "items": [escalation(f"T-{i}", NOW).model_dump(mode="json") for i in range(2)],
        "breaches": 0,
        "window_start": NOW.isoformat(),
        "window_end": NOW.isoformat(),
    },
    "supply_order": supply_order().model_dump(mode="json"),
    "reading_anomaly": {"serial": "SN", "counters": {"total": [2, 1]}, "read_at": NOW.isoformat()},
    "device_stale": {"serial": "SN", "last_seen_at": NOW.isoformat()},
}


@pytest.mark.parametrize("language", ["fi", "sv", "en"])
@pytest.mark.parametrize("template", sorted(SAMPLES))
def test_every_template_renders_in_every_language(template: str, language: str) -> None:
    note = Notification("e", "x", Category.SLA, template, SAMPLES[template])
    subject, text, html = Renderer().render(
        note,
        Recipient("a@example.com", language, "Europe/Helsinki"),  # type: ignore[arg-type]
    )
    assert subject and "\n" not in subject
    assert len(text.strip().splitlines()) >= 1 and "{{" not in text
    assert html.startswith("<!DOCTYPE html>") and f'lang="{language}"' in html
