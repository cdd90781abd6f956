"""Notify under test: the real app (its Kafka consumers, MongoDB, SMTP) on throw-away topics.

Each test gets topics of its own for every topic notify reads, consumer groups of its own and a
database of its own, so nothing it publishes reaches another test's notify (or the e2e
platform's), and nothing of theirs reaches it. Directory data (users, organisations) is
written straight into notify's projection collections: the projection code is shared and
tested on its own, and a fan-out to a thousand users needs them in one bulk insert.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo import AsyncMongoClient

from services.identity.adapters.keys import Signer
from services.notify.adapters.stream import STREAM_TOPICS
from services.notify.config import NotifySettings
from services.notify.inject import PEOPLE_TOPICS, build_app
from shared import contracts, projections
from shared.bus import Publisher
from shared.config import AuthSettings, Environment, MongoSettings
from shared.contracts import Topic
from shared.events import Event, new_event_id
from shared.sealing import SealingKey
from shared.store import Document
from tests.conftest import Infra, MailServer, _local_infra_module
from tests.support import client_options, eventually

ROOT = Path(__file__).resolve().parents[2]
NOTIFY_TOPICS = tuple(
    {
        t.name: t
        for t in (
            contracts.ORGANISATIONS,
            contracts.USERS,
            contracts.DEVICES,
            contracts.IDENTITY_NOTIFICATIONS,
            *PEOPLE_TOPICS,
            *STREAM_TOPICS,
        )
    }.values()
)


async def throwaway_topics(bootstrap: str) -> dict[str, str]:
    """A fresh topic for each topic notify reads: catalogue name -> test topic name."""
    mapping = {t.name: f"test.{t.name}.{uuid.uuid4().hex[:12]}" for t in NOTIFY_TOPICS}
    admin = AIOKafkaAdminClient(**client_options(bootstrap))
    await admin.start()
    try:
        await asyncio.wait_for(
            admin.create_topics([NewTopic(n, 3, 1) for n in mapping.values()]), 60
        )
    finally:
        await admin.close()
    return mapping


def notify_settings(infra: Infra, mail: MailServer, **overrides: Any) -> NotifySettings:
    values: dict[str, Any] = {
        "environment": Environment.TEST,
        # Test code is Kafka's super user (the throw-away topics have no ACLs of their own).
        "kafka": infra.kafka_admin.model_copy(
            update={"handler_attempts": 3, "retry_backoff_ms": 20, "retry_backoff_max_ms": 100}
        ),
        "mongo": MongoSettings(url=infra.mongo_url, database_prefix="n" + secrets.token_hex(4)),
        "notify_sealing_private_key": SealingKey.generate().private_key_b64(),
        "notify_smtp_host": mail.smtp_host,
        "notify_smtp_port": mail.smtp_port,
        "notify_agents_address": f"agents-{uuid.uuid4().hex[:10]}@service.example.com",
        "notify_portal_url": "https://portal.example.com",
        "notify_consumer_group_suffix": "." + uuid.uuid4().hex[:10],
        "notify_retry_backoff_ms": 50,
        "notify_retry_backoff_max_ms": 200,
        "notify_sweep_seconds": 0.5,
        "notify_lease_seconds": 10.0,
        "notify_digest_window_seconds": 3,
    }
    values.update(overrides)
    return NotifySettings(**values)


@dataclass
class Notify:
    """A running notify and what a test needs around it."""

    settings: NotifySettings
    topics: dict[str, str]
    publisher: Publisher
    db: Any
    mail: MailServer
    url: str = ""
    signer: Signer = field(
        default_factory=lambda: Signer.from_pem("", Environment.DEVELOPMENT, AuthSettings(), 900)
    )

    @property
    def key(self) -> SealingKey:
        return SealingKey(self.settings.notify_sealing_private_key.get_secret_value())

    def topic(self, topic: Topic) -> Topic:
        return replace(topic, name=self.topics[topic.name])

    async def publish(
        self, topic: Topic, key: str, event: Event, event_id: str | None = None
    ) -> str:
        env = self.publisher.envelope(event, event_id=event_id or new_event_id())
        await self.publisher.publish(self.topic(topic), key, event, envelope=env)
        return env.event_id

    async def org(self, timezone: str = "Europe/Helsinki", language: str = "fi") -> str:
        org_id = uuid.uuid4().hex
        await self.db[projections.ORGANISATIONS].insert_one(
            {
                "_id": org_id,
                "org_id": org_id,
                "timezone": timezone,
                "language": language,
                "revision": 1,
            }
        )
        return org_id

    async def users(self, org_id: str | None, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert users (role, language, device_ids, status) with unique addresses."""
        domain = f"{uuid.uuid4().hex[:10]}.example.com"
        docs = []
        for i, spec in enumerate(specs):
            user_id = uuid.uuid4().hex
            docs.append(
                {
                    "_id": user_id,
                    "user_id": user_id,
                    "org_id": org_id,
                    "email": spec.get("email", f"u{i}-{spec.get('role')}@{domain}"),
                    "name": f"User {i}",
                    "language": spec.get("language", "en"),
                    "role": spec.get("role"),
                    "device_ids": spec.get("device_ids", []),
                    "status": spec.get("status", "active"),
                    "revision": 1,
                }
            )
        for start in range(0, len(docs), 500):
            await self.db[projections.USERS].insert_many(docs[start : start + 500])
        return docs

    async def signing_key(self) -> None:
        key = self.signer.public_key()
        await self.db[projections.SIGNING_KEYS].update_one(
            {"_id": key.kid}, {"$set": key.model_dump(mode="json")}, upsert=True
        )

    def token(self, user: dict[str, Any]) -> str:
        return self.signer.issue(user["_id"], user.get("org_id"), user.get("role"))


@asynccontextmanager
async def running_notify(infra: Infra, mail: MailServer, **overrides: Any) -> AsyncIterator[Notify]:
    """Notify on its own topics, served by uvicorn on a free port (HTTP and SSE for real)."""
    settings = notify_settings(infra, mail, **overrides)
    topics = await throwaway_topics(infra.kafka_bootstrap)
    async with serve(settings, topics, mail) as notify:
        yield notify


@asynccontextmanager
async def serve(
    settings: NotifySettings, topics: dict[str, str], mail: MailServer
) -> AsyncIterator[Notify]:
    port = _local_infra_module().free_port()
    app = build_app(settings, topics=topics)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        settings.mongo.url.get_secret_value(), tz_aware=True
    )
    try:
        async with Publisher(settings.kafka, "notify-test") as publisher:
            await eventually(lambda: _started(server, task), timeout=60, what="notify started")
            notify = Notify(
                settings,
                topics,
                publisher,
                client[f"{settings.mongo.database_prefix}_notify"],
                mail,
                url=f"http://127.0.0.1:{port}",
            )
            await notify.signing_key()
            yield notify
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        await client.close()


@asynccontextmanager
async def connected(
    settings: NotifySettings, topics: dict[str, str], mail: MailServer
) -> AsyncIterator[Notify]:
    """Notify's database and topics, without running notify (it runs as a process)."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        settings.mongo.url.get_secret_value(), tz_aware=True
    )
    try:
        async with Publisher(settings.kafka, "notify-test") as publisher:
            db = client[f"{settings.mongo.database_prefix}_notify"]
            yield Notify(settings, topics, publisher, db, mail)
    finally:
        await client.close()


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()  # raises what stopped it
        raise RuntimeError("notify stopped during start-up")
    return server.started


# --- notify as a separate process (killed with SIGKILL by a test) ---------------------------


class NotifyProcess:
    def __init__(self, settings: NotifySettings, topics: dict[str, str], logs: Path) -> None:
        self.port = _local_infra_module().free_port()
        s = settings
        self.env = {
            **os.environ,
            "FLEETDESK_ENVIRONMENT": "test",
            "FLEETDESK_KAFKA_BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
            "FLEETDESK_MONGO_URL": s.mongo.url.get_secret_value(),
            "FLEETDESK_MONGO_DATABASE_PREFIX": s.mongo.database_prefix,
            "FLEETDESK_NOTIFY_PORT": str(self.port),
            "FLEETDESK_NOTIFY_SEALING_PRIVATE_KEY": s.notify_sealing_private_key.get_secret_value(),
            "FLEETDESK_NOTIFY_SMTP_HOST": s.notify_smtp_host,
            "FLEETDESK_NOTIFY_SMTP_PORT": str(s.notify_smtp_port),
            "FLEETDESK_NOTIFY_AGENTS_ADDRESS": s.notify_agents_address,
            "FLEETDESK_NOTIFY_CONSUMER_GROUP_SUFFIX": s.notify_consumer_group_suffix,
            "FLEETDESK_NOTIFY_LEASE_SECONDS": str(s.notify_lease_seconds),
            "FLEETDESK_NOTIFY_SWEEP_SECONDS": str(s.notify_sweep_seconds),
            "FLEETDESK_TEST_NOTIFY_TOPICS": json.dumps(topics),
        }
        self.logs = logs
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.logs, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.notify_process"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while not _local_infra_module().service_ready(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"notify exited: {self.logs.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("notify not ready")
            time.sleep(0.2)

    def kill(self) -> None:
        """A crash: SIGKILL, nothing recorded or committed on the way out."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


# --- reading the mail server ----------------------------------------------------------------


async def mails(mail: MailServer, query: str) -> list[dict[str, Any]]:
    """Every message in Mailpit matching ``query`` (Mailpit's search syntax)."""
    found: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=mail.api_url, timeout=30) as client:
        while True:
            response = await client.get(
                "/api/v1/search", params={"query": query, "start": len(found), "limit": 1000}
            )
            response.raise_for_status()
            page = response.json()["messages"]
            found.extend(page)
            if len(page) < 1000:
                return found


async def message(mail: MailServer, mailpit_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=mail.api_url, timeout=30) as client:
        response = await client.get(f"/api/v1/message/{mailpit_id}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body
