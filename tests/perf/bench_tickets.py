"""Benchmark of the SLA timers against real Kafka + FerretDB (or MongoDB).

    uv run python tests/perf/bench_tickets.py          # part of `make bench`
    BENCH_TICKETS=50000 BENCH_WINDOW_SECONDS=60 ...

1. Stores ``BENCH_TICKETS`` open tickets whose breach deadlines fall due, evenly spread, within
   one window (default 50,000 within 60 s), a bulk insert as a migration would do it.
2. Starts a timer owner (consumer group on ``tickets.timers``): the heap rebuild on assignment
   is timed (``BENCH tickets_timer_rebuild``).
3. Waits for every deadline to fire and prints the delay from deadline to the event being on
   Kafka (p50, p99, max) and the count read back from ``tickets.events`` (each exactly once).
4. Ticket creation through the handler and the store (routing and outbox included), one at a
   time: ``BENCH tickets_create`` (``BENCH_CREATE_HANDLER``, default 300): the cost without HTTP.
5. Ticket creation over HTTP: the real tickets service (``python -m services.tickets``, its own
   process and database, on 127.0.0.1) and ``BENCH_CREATE`` tickets (default 1,000) filed by an
   organisation's admin with a signed token, ``BENCH_CONCURRENCY`` (16) requests at a time:
   ``BENCH tickets_create_http`` and the latency per request (p50, p99).

Uses ``FLEETDESK_TEST_KAFKA_BOOTSTRAP`` (security from ``FLEETDESK_KAFKA_*``) and
``FLEETDESK_TEST_MONGO_URL`` when set, else starts ``deploy/local/infra.py`` on free ports (SASL,
as the super user) and stops it afterwards. Bounded: a time limit.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.identity.adapters.keys import Signer, generate_private_pem  # noqa: E402
from services.tickets import handlers  # noqa: E402
from services.tickets.adapters.store import INDEXES, TICKETS, MongoTicketStore  # noqa: E402
from services.tickets.adapters.timers import TimerService  # noqa: E402
from services.tickets.core.model import DeviceInfo  # noqa: E402
from services.tickets.inject import Partitions  # noqa: E402
from shared import projections  # noqa: E402
from shared.bus import ConsumerRunner, Publisher, ensure_topics  # noqa: E402
from shared.config import AuthSettings, Environment, KafkaSettings, MongoSettings  # noqa: E402
from shared.contracts import (  # noqa: E402
    DEVICES,
    SIGNING_KEYS,
    TICKET_EVENTS,
    USERS,
    DeviceState,
    Role,
    TicketCategory,
    UserState,
    UserStatus,
)
from shared.events import utcnow  # noqa: E402
from shared.kafka_security import kafka_client_environment  # noqa: E402
from shared.store import Mongo  # noqa: E402
from tests.perf.servers import bench_line, local_infra_module, run_bench  # noqa: E402

N = int(os.environ.get("BENCH_TICKETS", "50000"))
WINDOW = float(os.environ.get("BENCH_WINDOW_SECONDS", "60"))
CREATE_HANDLER = int(os.environ.get("BENCH_CREATE_HANDLER", "300"))
CREATE = int(os.environ.get("BENCH_CREATE", "1000"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "16"))
LIMIT_SECONDS = 900


async def wait_until(condition: Callable[[], bool], limit: float = LIMIT_SECONDS) -> None:
    give_up = time.monotonic() + limit
    while True:
        if condition() or time.monotonic() > give_up:
            return
        await asyncio.sleep(0.1)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def count_escalations(kafka: KafkaSettings, prefix: str, parts: set[int]) -> Counter[str]:
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(TICKET_EVENTS.name, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        seen: Counter[str] = Counter()
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for r in records:
                    if r.key and r.key.decode().startswith(prefix):
                        seen[r.key.decode()] += 1
        return seen
    finally:
        await consumer.stop()


async def bench(kafka: KafkaSettings, mongo_url: str) -> None:
    await ensure_topics(kafka)
    run = secrets.token_hex(3)
    prefix = f"bench-{run}-"
    mongo_settings = MongoSettings(url=mongo_url, database_prefix=f"bench{run}")
    async with Mongo(mongo_settings, "tickets") as mongo, Publisher(kafka, "tickets") as pub:
        await mongo.ensure_indexes(INDEXES)
        partitions = Partitions(pub)
        await partitions.load()
        deps = handlers.Deps(MongoTicketStore(mongo.db), handlers.Policy(), utcnow, partitions)

        # 1. The open tickets, deadlines spread over the window (which starts once they are in).
        docs = []
        for i in range(N):
            ticket_id = f"{prefix}{i}"
            docs.append(
                {
                    "_id": ticket_id,
                    "partition": partitions(ticket_id),
                    "revision": 1,
                    "org_id": "bench-org",
                    "device_id": f"bench-dev-{i % 1000}",
                    "status": "new",
                    "timers_active": True,
                    "timers": {
                        "warn_at": None,
                        "due_at": None,
                        "offer_id": None,
                        "offer_expires_at": None,
                    },
                }
            )
        # The window opens after storing and the rebuild (reading is about as slow as writing
        # on FerretDB 1.24): estimated from storing the first tenth.
        tenth = max(1, N // 10)
        t0 = time.perf_counter()
        await mongo.db[TICKETS].insert_many(docs[:tenth], ordered=False)
        per_doc = (time.perf_counter() - t0) / tenth
        margin = 15 + 5 * per_doc * N
        window_start = utcnow() + timedelta(seconds=margin)
        print(f"window opens in {margin:.0f} s")
        for i, doc in enumerate(docs):
            doc["timers"]["due_at"] = window_start + timedelta(seconds=WINDOW * i / N)
        # The first tenth got no deadline: give it one by storing it again under new ids.
        for i, doc in enumerate(docs[:tenth]):
            doc["_id"] = f"{prefix}{N + i}"
            doc["partition"] = partitions(doc["_id"])
        await mongo.db[TICKETS].delete_many({"_id": {"$regex": f"^{prefix}"}})
        t0 = time.perf_counter()
        for chunk in range(0, N, 5000):
            await mongo.db[TICKETS].insert_many(docs[chunk : chunk + 5000], ordered=False)
        insert_s = time.perf_counter() - t0
        bench_line("tickets_bulk_store", N / insert_s, "tickets/s")
        if utcnow() > window_start - timedelta(seconds=5):
            print("note: storing took longer than planned; the first deadlines may be late")

        # 2. The timer owner: assignment -> heap rebuild.
        timers = TimerService(mongo.db, pub, deps, keep_lateness=True)
        runner = ConsumerRunner(kafka, timers.subscription(f"tickets.timers-bench-{run}"), pub)
        tasks = [asyncio.create_task(runner.run()), asyncio.create_task(timers.run())]
        try:
            await wait_until(lambda: bool(timers.rebuilds))
            rebuild = timers.rebuilds[0]
            bench_line("tickets_timer_rebuild", rebuild.seconds, "s")
            bench_line("tickets_timer_rebuild_rate", rebuild.tickets / rebuild.seconds, "tickets/s")
            print(f"rebuilt partitions {rebuild.partitions} with {rebuild.tickets} tickets")
            # 3. Every deadline fires.
            await wait_until(lambda: len(timers.lateness) >= N)
        finally:
            runner.stop()
            timers.stop()
            await asyncio.gather(*tasks)
        late = timers.lateness
        bench_line("tickets_timer_lateness_p50", pct(late, 50), "s")
        bench_line("tickets_timer_lateness_p99", pct(late, 99), "s")
        bench_line("tickets_timer_lateness_max", max(late), "s")
        bench_line("tickets_timer_lateness_mean", statistics.fmean(late), "s")
        event_parts = await pub.producer.partitions_for(TICKET_EVENTS.name)
        seen = await count_escalations(kafka, prefix, set(event_parts))
        bench_line("tickets_escalations_published", sum(seen.values()), "events")
        bench_line("tickets_escalations_distinct", len(seen), "tickets")
        twice = sum(1 for c in seen.values() if c > 1)
        bench_line("tickets_escalations_duplicated", twice, "tickets")

        # 4. Creation through the handler and the store, one at a time.
        device = DeviceInfo(device_id=f"{prefix}device", org_id="bench-org")
        await mongo.db[projections.DEVICES].insert_one(
            {"_id": device.device_id, "org_id": device.org_id, "revision": 1}
        )
        t0 = time.perf_counter()
        for _ in range(CREATE_HANDLER):
            cmd = handlers.CreateTicket(device.device_id, TicketCategory.OTHER, "bench")
            await handlers.create_ticket(cmd, deps, device)
        bench_line("tickets_create", CREATE_HANDLER / (time.perf_counter() - t0), "tickets/s")

    # 5. Creation over HTTP, through the real service.
    await bench_http_create(kafka, mongo_url, run)
    if sum(seen.values()) != N or len(seen) != N:
        raise SystemExit(f"expected {N} escalations exactly once, saw {sum(seen.values())}")


async def bench_http_create(kafka: KafkaSettings, mongo_url: str, run: str) -> None:
    """``CREATE`` tickets over HTTP against ``python -m services.tickets`` in its own process."""
    port = local_infra_module().free_port()
    signer = Signer.from_pem(generate_private_pem(), Environment.TEST, AuthSettings(), 3600)
    org_id, device_id, admin_id = f"bench-org-{run}", f"bench-dev-{run}", f"bench-admin-{run}"
    # What identity and devices would have published: the key, the admin and the device.
    async with Publisher(kafka, "identity") as identity, Publisher(kafka, "devices") as devices:
        await identity.publish(SIGNING_KEYS, signer.kid, signer.public_key())
        await identity.publish(
            USERS,
            admin_id,
            UserState(
                user_id=admin_id,
                org_id=org_id,
                email=f"{admin_id}@bench.example.com",
                name="Bench Admin",
                language="en",
                role=Role.ADMIN,
                device_ids=[],
                status=UserStatus.ACTIVE,
                revision=1,
            ),
        )
        state = DeviceState(
            device_id=device_id, org_id=org_id, serial=f"SN-{run}", model="C300i", revision=1
        )
        await devices.publish(DEVICES, device_id, state)
    token = signer.issue(admin_id, org_id, Role.ADMIN.value)
    logs = Path(tempfile.mkdtemp(prefix="fleetdesk-bench-tickets-"))
    env = {
        **os.environ,
        **kafka_client_environment(kafka),
        # Development: the local broker's super user has a development password.
        "FLEETDESK_ENVIRONMENT": "development",
        "FLEETDESK_MONGO_URL": mongo_url,
        "FLEETDESK_MONGO_DATABASE_PREFIX": f"benchhttp{run}",
        "FLEETDESK_TICKETS_PORT": str(port),
        "FLEETDESK_HTTP_HOST": "127.0.0.1",
        "FLEETDESK_LOG_LEVEL": "WARNING",
    }
    proc = start_service(env, logs)
    url = f"http://127.0.0.1:{port}/tickets"
    body = {"device_id": device_id, "category": "other", "description": "bench ticket"}
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    try:
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            # Ready, and the key, the admin and the device projected (401/404 until then).
            give_up = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    tail = (logs / "tickets.log").read_text()[-3000:]
                    raise SystemExit(f"the tickets service exited: {tail}")
                try:
                    response = await client.post(url, json=body, headers=headers)
                    if response.status_code == 201:
                        break
                    if response.status_code not in (401, 404, 503):
                        raise SystemExit(
                            f"unexpected answer: {response.status_code} {response.text}"
                        )
                except httpx.TransportError:
                    pass  # not listening yet
                if time.monotonic() > give_up:
                    raise SystemExit("the tickets service did not get ready within 120 s")
                await asyncio.sleep(0.2)
            latencies: list[float] = []
            failures: Counter[int] = Counter()
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one() -> None:
                async with gate:
                    started = time.perf_counter()
                    response = await client.post(url, json=body, headers=headers)
                    latencies.append(time.perf_counter() - started)
                    if response.status_code != 201:
                        failures[response.status_code] += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(CREATE)))
            elapsed = time.perf_counter() - t0
    finally:
        stop_service(proc)
    bench_line("tickets_create_http", CREATE / elapsed, "tickets/s")
    bench_line("tickets_create_http_p50", pct(latencies, 50) * 1000, "ms")
    bench_line("tickets_create_http_p99", pct(latencies, 99) * 1000, "ms")
    print(f"{CREATE} tickets over HTTP, {CONCURRENCY} at a time, in {elapsed:.1f} s")
    if failures:
        raise SystemExit(f"tickets not created over HTTP: {dict(failures)}")


def start_service(env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    with open(logs / "tickets.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.tickets"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> int:
    return run_bench(bench, LIMIT_SECONDS, prefix="fleetdesk-bench-")


if __name__ == "__main__":
    sys.exit(main())
