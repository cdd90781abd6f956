"""Notify against real servers: Kafka, the MongoDB-wire server and a real SMTP server (Mailpit,
read through its HTTP API; an in-process aiosmtpd server where the server must refuse)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from services.notify.adapters.store import DELIVERIES, DIGEST_ITEMS
from shared import contracts as c
from shared.sealing import seal
from tests.conftest import Infra, MailServer, _local_infra_module
from tests.integration.notify_harness import (
    NotifyProcess,
    connected,
    mails,
    message,
    notify_settings,
    running_notify,
    throwaway_topics,
)
from tests.support import eventually

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def delivered(mail: MailServer, address: str) -> list[dict[str, Any]]:
    return [m for m in await mails(mail, f'to:"{address}"') if m["To"][0]["Address"] == address]


async def settled(notify: Any, expected: int) -> bool:
    """All ``expected`` ledger records have an outcome (sent or failed)."""
    async with httpx.AsyncClient(base_url=notify.url) as client:
        agent = {"_id": "agent-" + uuid.uuid4().hex, "org_id": None, "role": "agent"}
        r = await client.get(
            "/notify/deliveries", params={"limit": 500}, headers=auth(notify.token(agent))
        )
        r.raise_for_status()
        done = [d for d in r.json() if d["status"] in ("sent", "failed")]
        return len(done) >= expected


async def test_each_event_kind_reaches_its_people_once_in_their_language(
    infra: Infra, mailpit: MailServer
) -> None:
    async with running_notify(infra, mailpit) as notify:
        org = await notify.org("Europe/Helsinki", "fi")
        admin_fi, admin_sv, stock, manager, _other_stock = await notify.users(
            org,
            [
                {"role": "admin", "language": "fi"},
                {"role": "admin", "language": "sv"},
                {"role": "stock_manager", "language": "en", "device_ids": ["dev-1"]},
                {"role": "device_manager", "language": "fi", "device_ids": ["dev-1"]},
                {"role": "stock_manager", "language": "fi", "device_ids": ["dev-2"]},
            ],
        )
        newcomer = f"new-{uuid.uuid4().hex[:8]}@customer.example.com"
        events: list[tuple[c.Topic, str, c.Event]] = [
            (
                c.IDENTITY_NOTIFICATIONS,
                "u-new",
                c.ConfirmationRequested(
                    user_id="u-new",
                    email=newcomer,
                    language="fi",
                    sealed_token=seal(notify.key.public_key, "tok-123", context="confirmation"),
                    expires_at=NOW + timedelta(hours=48),
                ),
            ),
            (
                c.TICKET_EVENTS,
                "T-1",
                c.TicketCreated(
                    ticket_id="T-1",
                    org_id=org,
                    device_id="dev-1",
                    created_by=manager["_id"],
                    category=c.TicketCategory.FAULT,
                    status=c.TicketStatus.NEW,
                    clock_starts_at=NOW + timedelta(hours=10),
                    due_at=NOW + timedelta(hours=18),
                    out_of_hours=True,
                ),
            ),
            (
                c.DEVICE_EVENTS,
                "dev-1",
                c.SupplyOrderRaised(
                    order_id="o-1",
                    device_id="dev-1",
                    org_id=org,
                    serial="SN-1",
                    consumable="black",
                    level=5,
                    days_to_empty=2.0,
                    action=c.SupplyAction.SHIPMENT,
                    raised_at=NOW,
                ),
            ),
            (
                c.METER_EVENTS,
                "dev-1",
                c.DeviceStale(device_id="dev-1", org_id=org, serial="SN-1", last_seen_at=NOW),
            ),
        ]
        for topic, key, event in events:
            event_id = await notify.publish(topic, key, event)
            await notify.publish(topic, key, event, event_id=event_id)  # Kafka redelivers
        agents = notify.settings.notify_agents_address
        # 1 confirmation + 1 ticket + 1 supply order + (2 admins + agents) stale = 6
        await eventually(lambda: settled(notify, 6), timeout=60, what="6 deliveries settled")
        expected = {
            newcomer: ["Vahvista Fleetdesk-tunnuksesi"],
            manager["email"]: ["Tiketti T-1 vastaanotettu"],
            stock["email"]: ["Supplies: black running low on SN-1"],
            admin_fi["email"]: ["Laite SN-1 ei raportoi"],
            admin_sv["email"]: ["Enhet SN-1 rapporterar inte"],
            agents: ["Device SN-1 stopped reporting"],
        }
        for address, subjects in expected.items():
            got = await delivered(mailpit, address)
            assert [m["Subject"] for m in got] == subjects, address
        assert await delivered(mailpit, _other_stock["email"]) == []
        confirmation = await message(mailpit, (await delivered(mailpit, newcomer))[0]["ID"])
        assert (
            "https://portal.example.com/identity/registrations/confirm?token=tok-123"
            in confirmation["Text"]
        )
        ticket = await message(mailpit, (await delivered(mailpit, manager["email"]))[0]["ID"])
        assert "käsitellään alkaen" in ticket["Text"] and "Europe/Helsinki" in ticket["Text"]


async def test_opt_out_is_honoured_and_mandatory_messages_still_go(
    infra: Infra, mailpit: MailServer
) -> None:
    async with running_notify(infra, mailpit) as notify:
        org = await notify.org()
        (user,) = await notify.users(org, [{"role": "admin", "language": "en"}])
        async with httpx.AsyncClient(base_url=notify.url) as client:
            refused = await client.put(
                "/notify/preferences",
                json={"opted_out": ["confirmation"]},
                headers=auth(notify.token(user)),
            )
            assert refused.status_code == 422
            assert refused.json()["type"].endswith("/mandatory-category")
            assert (await client.get("/notify/preferences")).status_code == 401
            ok = await client.put(
                "/notify/preferences",
                json={"opted_out": ["ticket_status"]},
                headers=auth(notify.token(user)),
            )
            assert ok.status_code == 200, ok.text
            got = await client.get("/notify/preferences", headers=auth(notify.token(user)))
            assert got.json()["opted_out"] == ["ticket_status"]
            assert "confirmation" in got.json()["mandatory"]
        await notify.publish(
            c.TICKET_EVENTS,
            "T-9",
            c.TicketStatusChanged(
                ticket_id="T-9",
                org_id=org,
                device_id=None,
                created_by=user["_id"],
                old_status=c.TicketStatus.NEW,
                new_status=c.TicketStatus.RESOLVED,
                changed_by=None,
            ),
        )
        await notify.publish(
            c.IDENTITY_NOTIFICATIONS,
            user["_id"],
            c.ConfirmationRequested(
                user_id=user["_id"],
                email=user["email"],
                language="en",
                sealed_token=seal(notify.key.public_key, "t", context="confirmation"),
                expires_at=NOW + timedelta(hours=1),
            ),
        )
        # A second status change, published after the opt-out and the confirmation: once the
        # confirmation is there and the ledger has settled, the ticket changes were skipped.
        got = await eventually(lambda: delivered(mailpit, user["email"]), timeout=30)
        await eventually(lambda: settled(notify, 1), timeout=30)
        assert [m["Subject"] for m in got] == ["Confirm your Fleetdesk account"]
        assert (
            await notify.db[DELIVERIES].count_documents(
                {"event_type": c.TicketStatusChanged.event_type}
            )
            == 0
        )


# --- a server that refuses ------------------------------------------------------------------


class Refusing:
    """aiosmtpd handler: 451 for the first ``temporary`` messages, 550 for refused addresses."""

    def __init__(self, temporary: int, refused: set[str]) -> None:
        self.temporary = temporary
        self.refused = refused
        self.accepted: list[str] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refused:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.temporary > 0:
            self.temporary -= 1
            return "451 4.3.0 please try again later"
        self.accepted.extend(envelope.rcpt_tos)
        return "250 Message accepted"


@asynccontextmanager
async def refusing_server(handler: Refusing) -> AsyncIterator[MailServer]:
    port = _local_infra_module().free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield MailServer("127.0.0.1", port, "")
    finally:
        controller.stop()


async def test_temporary_refusals_are_retried_and_a_permanent_one_is_recorded(
    infra: Infra, mailpit: MailServer
) -> None:
    bad = f"gone-{uuid.uuid4().hex[:6]}@customer.example.com"
    handler = Refusing(temporary=2, refused={bad})
    async with (
        refusing_server(handler) as smtp,
        running_notify(infra, smtp, notify_smtp_connections=1) as notify,
    ):
        org = await notify.org()
        admin, _gone = await notify.users(org, [{"role": "admin"}, {"role": "admin", "email": bad}])
        await notify.publish(
            c.METER_EVENTS,
            "dev-1",
            c.ReadingAnomaly(
                device_id="dev-1",
                org_id=org,
                serial="SN-2",
                counters={"total": [100, 90]},
                read_at=NOW,
            ),
        )
        await eventually(lambda: settled(notify, 3), timeout=60, what="3 deliveries settled")
        agent = {"_id": "agent", "org_id": None, "role": "agent"}
        async with httpx.AsyncClient(base_url=notify.url) as client:
            rows = (
                await client.get("/notify/deliveries", headers=auth(notify.token(agent)))
            ).json()
            by_address = {r["recipient"]: r for r in rows}
            assert by_address[bad]["status"] == "failed"
            assert by_address[bad]["answer"].startswith("550")
            assert by_address[admin["email"]]["status"] == "sent"
            assert sorted(handler.accepted) == sorted(
                [admin["email"], notify.settings.notify_agents_address]
            )
            failed = await client.get(
                "/notify/deliveries",
                params={"status": "failed", "recipient": bad},
                headers=auth(notify.token(agent)),
            )
            assert [r["recipient"] for r in failed.json()] == [bad]
            forbidden = await client.get("/notify/deliveries", headers=auth(notify.token(admin)))
            assert forbidden.status_code == 403
        assert handler.temporary == 0  # the two refusals were used up and retried past


# --- a digest -------------------------------------------------------------------------------


async def test_a_burst_of_escalations_becomes_one_digest(infra: Infra, mailpit: MailServer) -> None:
    async with running_notify(infra, mailpit, notify_digest_window_seconds=10) as notify:
        org = await notify.org()
        fired = datetime.now(UTC)
        for i in range(15):
            await notify.publish(
                c.TICKET_EVENTS,
                f"T-{i}",
                c.SlaEscalation(
                    ticket_id=f"T-{i}",
                    org_id=org,
                    device_id=None,
                    kind=c.SlaKind.BREACH if i % 2 else c.SlaKind.WARNING,
                    due_at=fired,
                    fired_at=fired,
                ),
            )
        agents = notify.settings.notify_agents_address
        got = await eventually(lambda: delivered(mailpit, agents), timeout=60)
        await eventually(
            lambda: _count(notify.db[DIGEST_ITEMS], {}, 15), timeout=30, what="15 items"
        )
        await eventually(lambda: settled(notify, 1), timeout=30)
        got = await delivered(mailpit, agents)
        assert [m["Subject"] for m in got] == ["SLA: 15 escalations (7 breaches)"]
        body = await message(mailpit, got[0]["ID"])
        assert all(f"T-{i} " in body["Text"] for i in range(15))


async def _count(collection: Any, query: dict[str, Any], n: int) -> bool:
    return int(await collection.count_documents(query)) >= n


# --- live updates ---------------------------------------------------------------------------


class SseReader:
    """Reads a server-sent event stream into a list, in the background."""

    def __init__(self, url: str, token: str, last_event_id: str | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        headers = auth(token)
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        self._task = asyncio.create_task(self._read(url, headers))

    async def _read(self, url: str, headers: dict[str, str]) -> None:
        async with (
            httpx.AsyncClient(timeout=None) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            assert response.status_code == 200
            current: dict[str, Any] = {}
            async for line in response.aiter_lines():
                if not line:
                    if "event" in current:
                        self.events.append(current)
                    current = {}
                elif line.startswith(":"):
                    continue
                else:
                    field, _, value = line.partition(": ")
                    current[field] = json.loads(value) if field == "data" else value

    def tickets(self) -> list[str]:
        return [e["data"]["ticket_id"] for e in self.events if "ticket_id" in e.get("data", {})]

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass


async def test_the_live_stream_shows_only_what_the_user_may_see(
    infra: Infra, mailpit: MailServer
) -> None:
    async with running_notify(infra, mailpit) as notify:
        org, other_org = await notify.org(), await notify.org()
        (manager,) = await notify.users(org, [{"role": "device_manager", "device_ids": ["dev-1"]}])
        (foreign,) = await notify.users(other_org, [{"role": "admin"}])
        url = f"{notify.url}/notify/stream"
        mine = SseReader(url, notify.token(manager))
        theirs = SseReader(url, notify.token(foreign))

        def change(ticket: str, org_id: str, device: str) -> c.TicketStatusChanged:
            return c.TicketStatusChanged(
                ticket_id=ticket,
                org_id=org_id,
                device_id=device,
                created_by=None,
                old_status=c.TicketStatus.NEW,
                new_status=c.TicketStatus.IN_PROGRESS,
                changed_by=None,
            )

        try:
            # The stream group starts from the newest offset: probe until it is assigned.
            async def probe() -> bool:
                await notify.publish(c.TICKET_EVENTS, "probe", change("probe", org, "dev-1"))
                await asyncio.sleep(0.5)
                return "probe" in mine.tickets()

            await eventually(probe, timeout=60, interval=0.1, what="stream assigned")
            sent_at = asyncio.get_running_loop().time()
            await notify.publish(c.TICKET_EVENTS, "T-mine", change("T-mine", org, "dev-1"))
            await notify.publish(
                c.TICKET_EVENTS, "T-other-dev", change("T-other-dev", org, "dev-2")
            )
            await notify.publish(
                c.TICKET_EVENTS, "T-foreign", change("T-foreign", other_org, "dev-9")
            )
            await eventually(lambda: _has(theirs, "T-foreign"), timeout=10)
            await eventually(lambda: _has(mine, "T-mine"), timeout=10)
            latency = asyncio.get_running_loop().time() - sent_at
            assert latency < 5, latency
            assert "T-other-dev" not in mine.tickets() and "T-foreign" not in mine.tickets()
            assert "T-mine" not in theirs.tickets()
            # Reconnect with Last-Event-ID: what happened in between is delivered, once.
            last_id = mine.events[-1]["id"]
            await mine.close()
            await notify.publish(
                c.TICKET_EVENTS, "T-while-away", change("T-while-away", org, "dev-1")
            )
            await eventually(lambda: _has(theirs, "T-foreign"), timeout=5)
            resumed = SseReader(url, notify.token(manager), last_event_id=last_id)
            try:
                await eventually(lambda: _has(resumed, "T-while-away"), timeout=10)
                assert resumed.tickets().count("T-while-away") == 1
                assert "T-mine" not in resumed.tickets()
            finally:
                await resumed.close()
            stale = SseReader(url, notify.token(manager), last_event_id="another-instance-1")
            try:
                await eventually(
                    lambda: _async(any(e["event"] == "reset" for e in stale.events)), timeout=10
                )
            finally:
                await stale.close()
        finally:
            await mine.close()
            await theirs.close()


async def _has(reader: SseReader, ticket: str) -> bool:
    return ticket in reader.tickets()


async def _async(value: bool) -> bool:
    return value


# --- a crash in the middle of a fan-out -----------------------------------------------------


async def test_sigkill_mid_fanout_resumes_without_gaps_or_duplicates(
    infra: Infra, mailpit: MailServer, tmp_path: Path
) -> None:
    """1,000 admins of one organisation hear of an anomaly; notify is killed mid-way.

    After the restart every admin has the message. A message whose sending was cut between the
    server's acceptance and the ledger's record may go out twice (at-least-once for that window
    only, at most one per SMTP connection); both copies carry the same Message-ID."""
    settings = notify_settings(infra, mailpit)
    topics = await throwaway_topics(infra.kafka_bootstrap)
    proc = NotifyProcess(settings, topics, tmp_path / "notify.log")
    n = 1000
    proc.start()
    try:
        async with connected(settings, topics, mailpit) as helper:
            org = await helper.org()
            users = await helper.users(org, [{"role": "admin"} for _ in range(n)])
            domain = users[0]["email"].split("@")[1]
            await helper.publish(
                c.METER_EVENTS,
                "dev-1",
                c.ReadingAnomaly(
                    device_id="dev-1",
                    org_id=org,
                    serial="SN-3",
                    counters={"total": [10, 9]},
                    read_at=NOW,
                ),
            )
            await eventually(
                lambda: _at_least(mailpit, domain, 150), timeout=120, what="fan-out under way"
            )
            proc.kill()
            before = len(await mails(mailpit, f"to:@{domain}"))
            assert before < n, "the fan-out finished before the kill; the test proves nothing"
            proc.start()
            await eventually(lambda: _distinct(mailpit, domain, n), timeout=240, interval=1)
            got = await mails(mailpit, f"to:@{domain}")
            per_address = Counter(m["To"][0]["Address"] for m in got)
            ids_per_address: dict[str, set[str]] = {}
            for m in got:
                ids_per_address.setdefault(m["To"][0]["Address"], set()).add(m["MessageID"])
            assert set(per_address) == {u["email"] for u in users}  # no gaps
            assert all(len(ids) == 1 for ids in ids_per_address.values())  # one message each
            copies = sum(per_address.values()) - n
            assert copies <= settings.notify_smtp_connections, copies
    finally:
        proc.stop()


async def _at_least(mail: MailServer, domain: str, n: int) -> bool:
    return len(await mails(mail, f"to:@{domain}")) >= n


async def _distinct(mail: MailServer, domain: str, n: int) -> bool:
    return len({m["To"][0]["Address"] for m in await mails(mail, f"to:@{domain}")}) >= n
