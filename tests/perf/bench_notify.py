"""Benchmark of notify's fan-out: one event to N recipients through a real SMTP server.

    make bench                                   # part of the bench target
    BENCH_NOTIFY_RECIPIENTS=2000 python tests/perf/bench_notify.py

Measured in the same run, against the same Mailpit and MongoDB-wire server:
* ``notify``: ``notify_people`` with the real adapters (projection lookup, opt-outs, ledger
  records in bulk, rendering in the recipient's language, SMTP pool, outcome per message);
* ``plain``: the same number of messages sent straight with aiosmtplib over the same number of
  connections, with nothing recorded (the ceiling);
* ``sequential``: notify with one connection (what "one message at a time" costs), on a
  tenth of the recipients;
* ``remote``: notify with 8 connections and with 1 against an in-process SMTP sink that takes
  ``BENCH_NOTIFY_SINK_MS`` (20) per message, as a relay across a network does: what the
  bounded pool buys when the server is not the bottleneck (Mailpit on a busy 2-core machine is).
Uses ``FLEETDESK_TEST_MONGO_URL`` and ``FLEETDESK_TEST_SMTP_HOST``/``_PORT``/``_API`` when set,
else starts ``deploy/local/infra.py`` (FerretDB, Kafka, Mailpit) on free ports and stops them.
Bounded: a fixed number of recipients and a time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.notify.adapters.smtp import SmtpMailer, build_message  # noqa: E402
from services.notify.adapters.store import INDEXES  # noqa: E402
from services.notify.config import NotifySettings  # noqa: E402
from services.notify.core.handlers import NotifyPeople, notify_people  # noqa: E402
from services.notify.core.model import Category, Mail, Notification, Recipient  # noqa: E402
from services.notify.inject import make_deps  # noqa: E402
from shared import contracts as c  # noqa: E402
from shared import projections  # noqa: E402
from shared.config import MongoSettings  # noqa: E402
from shared.store import Mongo  # noqa: E402
from tests.perf.servers import (  # noqa: E402
    bench_line,
    local_infra_module,
    scratch_dir,
    start_local_infra,
)

N = int(os.environ.get("BENCH_NOTIFY_RECIPIENTS", "10000"))
CONNECTIONS = int(os.environ.get("BENCH_NOTIFY_CONNECTIONS", "8"))
REMOTE_N = int(os.environ.get("BENCH_NOTIFY_REMOTE_RECIPIENTS", "1000"))
LIMIT_SECONDS = 2400


async def users(mongo: Mongo, org_id: str, n: int) -> str:
    domain = f"{uuid.uuid4().hex[:10]}.example.com"
    await mongo.db[projections.ORGANISATIONS].insert_one(
        {
            "_id": org_id,
            "org_id": org_id,
            "timezone": "Europe/Helsinki",
            "language": "fi",
            "revision": 1,
        }
    )
    docs = [
        {
            "_id": f"{org_id}-{i}",
            "user_id": f"{org_id}-{i}",
            "org_id": org_id,
            "email": f"admin{i}@{domain}",
            "name": f"Admin {i}",
            "language": ("fi", "sv", "en")[i % 3],
            "role": "admin",
            "device_ids": [],
            "status": "active",
            "revision": 1,
        }
        for i in range(n)
    ]
    for start in range(0, n, 1000):
        await mongo.db[projections.USERS].insert_many(docs[start : start + 1000])
    return domain


def anomaly(org_id: str) -> c.ReadingAnomaly:
    return c.ReadingAnomaly(
        device_id="dev-1",
        org_id=org_id,
        serial="SN-BENCH",
        counters={"total": [1000, 900]},
        read_at=datetime.now(UTC),
    )


async def plain(settings: NotifySettings, mails: list[Mail]) -> float:
    """The same messages straight with aiosmtplib, over the same number of connections."""
    queue = iter(mails)

    async def worker() -> None:
        client = aiosmtplib.SMTP(
            hostname=settings.notify_smtp_host, port=settings.notify_smtp_port, start_tls=False
        )
        await client.connect()
        try:
            for mail in queue:
                await client.send_message(build_message(mail, settings.notify_mail_from))
        finally:
            await client.quit()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(settings.notify_smtp_connections)))
    return time.perf_counter() - started


async def count(api: str, domain: str) -> int:
    async with httpx.AsyncClient(base_url=api, timeout=60) as client:
        r = await client.get("/api/v1/search", params={"query": f"to:@{domain}", "limit": 1})
        r.raise_for_status()
        return int(r.json()["messages_count"])


class Sink:
    """aiosmtpd handler: accepts every message after a fixed delay (a remote relay)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay)
        self.count += len(envelope.rcpt_tos)
        return "250 OK"


async def remote(settings: NotifySettings, n: int) -> tuple[float, float]:
    """(rate with the pool, rate with one connection) against a sink with latency."""
    from aiosmtpd.controller import Controller

    sink = Sink(int(os.environ.get("BENCH_NOTIFY_SINK_MS", "20")) / 1000)
    port = local_infra_module().free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        rates = []
        for connections in (settings.notify_smtp_connections, 1):
            sink.count = 0
            s = settings.model_copy(
                update={
                    "notify_smtp_host": "127.0.0.1",
                    "notify_smtp_port": port,
                    "notify_smtp_connections": connections,
                }
            )
            elapsed, sent = await fan_out(s, None, n)
            assert sink.count == sent, (sink.count, sent)
            rates.append(sent / elapsed)
        return rates[0], rates[1]
    finally:
        controller.stop()


async def fan_out(settings: NotifySettings, api: str | None, n: int) -> tuple[float, int]:
    async with Mongo(settings.mongo, "notify") as mongo, SmtpMailer(settings) as mailer:
        await mongo.ensure_indexes(INDEXES)
        deps = make_deps(mongo.db, mailer, settings)
        org_id = uuid.uuid4().hex
        domain = await users(mongo, org_id, n)
        started = time.perf_counter()
        sent = await notify_people(NotifyPeople(uuid.uuid4().hex, anomaly(org_id)), deps)
        elapsed = time.perf_counter() - started
        assert sent == n + 1, sent  # the admins and the agents' shared address
        if api is not None:
            delivered = await count(api, domain)
            assert delivered == n, delivered
        return elapsed, sent


async def bench(mongo_url: str, smtp_host: str, smtp_port: int, api: str) -> None:
    settings = NotifySettings(
        mongo=MongoSettings(url=mongo_url, database_prefix="bench" + uuid.uuid4().hex[:6]),
        notify_smtp_host=smtp_host,
        notify_smtp_port=smtp_port,
        notify_smtp_connections=CONNECTIONS,
    )
    # Baseline messages: what notify renders for these recipients (rendering not timed).
    from services.notify.core.render import Renderer

    renderer = Renderer()
    domain = f"{uuid.uuid4().hex[:10]}.example.com"
    note = Notification(
        "bench",
        c.ReadingAnomaly.event_type,
        Category.READING_ANOMALY,
        "reading_anomaly",
        anomaly("org").model_dump(mode="json"),
    )
    mails = []
    for i in range(N):
        subject, text, html = renderer.render(note, Recipient(f"p{i}@{domain}", "fi"))
        mails.append(
            Mail(f"d{i}", f"<bench-{uuid.uuid4().hex}@x>", f"p{i}@{domain}", subject, text, html)
        )
    if os.environ.get("BENCH_NOTIFY_ONLY_REMOTE"):
        pooled, single = await remote(settings, REMOTE_N)
        bench_line("notify_remote_recipients", REMOTE_N, "recipients")
        bench_line("notify_remote_pool_rate", pooled, "msg/s")
        bench_line("notify_remote_sequential_rate", single, "msg/s")
        bench_line("notify_remote_pool_vs_sequential", pooled / single, "ratio")
        return
    plain_s = await plain(settings, mails)
    notify_s, sent = await fan_out(settings, api, N)
    small = max(N // 10, 1)
    seq_settings = settings.model_copy(update={"notify_smtp_connections": 1})
    seq_s, _ = await fan_out(seq_settings, api, small)
    bench_line("notify_fanout_recipients", N, "recipients")
    bench_line("notify_smtp_connections", CONNECTIONS, "connections")
    bench_line("notify_plain_aiosmtplib_rate", N / plain_s, "msg/s")
    bench_line("notify_fanout_rate", sent / notify_s, "msg/s")
    bench_line("notify_fanout_time_to_last", notify_s, "s")
    bench_line("notify_fanout_vs_plain", (sent / notify_s) / (N / plain_s), "ratio")
    bench_line("notify_sequential_rate", (small + 1) / seq_s, "msg/s")
    bench_line(
        "notify_concurrent_vs_sequential", (sent / notify_s) / ((small + 1) / seq_s), "ratio"
    )
    pooled, single = await remote(settings, REMOTE_N)
    bench_line("notify_remote_recipients", REMOTE_N, "recipients")
    bench_line("notify_remote_pool_rate", pooled, "msg/s")
    bench_line("notify_remote_sequential_rate", single, "msg/s")
    bench_line("notify_remote_pool_vs_sequential", pooled / single, "ratio")


def main() -> int:
    mongo_url = os.environ.get("FLEETDESK_TEST_MONGO_URL")
    smtp_host = os.environ.get("FLEETDESK_TEST_SMTP_HOST")
    with contextlib.ExitStack() as stack:  # each server stopped before its folder goes
        if not mongo_url:
            mongo_url = start_local_infra(stack, "bench-notify-").mongo_url
        if smtp_host:
            port = int(os.environ["FLEETDESK_TEST_SMTP_PORT"])
            api = os.environ["FLEETDESK_TEST_SMTP_API"]
        else:
            module = local_infra_module()
            mailpit = module.LocalMailpit(
                stack.enter_context(scratch_dir("bench-mailpit-")),
                module.free_port(),
                module.free_port(),
            )
            stack.callback(mailpit.stop)
            mailpit.start()
            smtp_host, port, api = "127.0.0.1", mailpit.smtp_port, mailpit.api_url
        asyncio.run(asyncio.wait_for(bench(mongo_url, smtp_host, port, api), LIMIT_SECONDS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
