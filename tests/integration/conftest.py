"""Fixtures of the bus tests: a publisher, a database, consumer runners run as tasks."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.bus import ConsumerRunner, Handler, Message, Publisher, Subscription, ensure_topics
from shared.config import KafkaSettings, MongoSettings
from shared.contracts import DEAD_LETTER, Topic
from shared.events import Event
from shared.store import OUTBOX, Mongo
from tests.conftest import Infra
from tests.support import client_options, read_topic

STOP_TIMEOUT = 20.0


class Ping(Event):
    event_type = "test.ping"

    n: int


def ping_topic(name: str) -> Topic:
    return Topic(name=name, description="test", key="n", events=(Ping,))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
async def catalogue_topics(infra: Infra) -> None:
    # The dead-letter topic (and the rest of the catalogue) must exist before anyone writes.
    await ensure_topics(KafkaSettings(bootstrap_servers=infra.kafka_bootstrap))


@pytest.fixture
async def publisher(
    kafka_settings: KafkaSettings, catalogue_topics: None
) -> AsyncIterator[Publisher]:
    async with Publisher(kafka_settings, "bus-test") as pub:
        yield pub


@pytest.fixture
async def mongo(mongo_settings: MongoSettings) -> AsyncIterator[Mongo]:
    async with Mongo(mongo_settings, "bus") as m:
        yield m


async def outbox_emptied(collection: Any, doc_id: str) -> bool:
    current = await collection.find_one({"_id": doc_id})
    return current is not None and current[OUTBOX] == {}


class Running:
    """A ConsumerRunner running as a task, stopped (bounded) by the test."""

    def __init__(self, runner: ConsumerRunner) -> None:
        self.runner = runner
        self.task = asyncio.create_task(runner.run())

    async def started(self) -> None:
        started = asyncio.create_task(self.runner.started.wait())
        done, _ = await asyncio.wait(
            {started, self.task}, timeout=STOP_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if self.task in done:
            self.task.result()  # re-raise why the runner ended
        assert started in done, "consumer runner did not start in time"

    async def stop(self) -> None:
        self.runner.stop()
        await asyncio.wait_for(self.task, STOP_TIMEOUT)


RunConsumer = Callable[..., Awaitable[Running]]


@pytest.fixture
async def run_consumer(
    kafka_settings: KafkaSettings, publisher: Publisher
) -> AsyncIterator[RunConsumer]:
    """Start a runner: ``run_consumer(group, {topic: handler})`` or with a Subscription."""
    running: list[Running] = []

    async def start(
        group: str | Subscription,
        handlers: dict[str, Handler] | None = None,
        *,
        settings: KafkaSettings | None = None,
    ) -> Running:
        sub = group if isinstance(group, Subscription) else Subscription(group, handlers or {})
        r = Running(ConsumerRunner(settings or kafka_settings, sub, publisher))
        running.append(r)
        await r.started()
        return r

    yield start
    for r in running:
        if not r.task.done():
            await r.stop()


async def dead_letters(bootstrap: str, original_topic: str) -> list[dict[str, Any]]:
    records = await read_topic(bootstrap, DEAD_LETTER.name)
    letters = [json.loads(r.value) for r in records]
    return [d for d in letters if d["original_topic"] == original_topic]


async def committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    consumer = AIOKafkaConsumer(
        **client_options(bootstrap), group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        offset: int | None = await consumer.committed(tp)
        return offset
    finally:
        await consumer.stop()


async def ready(value: bool) -> bool:
    return value


def ping_handler(seen: list[int]) -> Callable[[Message], Awaitable[None]]:
    async def handle(msg: Message) -> None:
        seen.append(msg.parse(Ping).n)

    return handle
