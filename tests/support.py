"""Helpers for tests: a bounded probe instead of sleeps, throw-away topics, reading a topic."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord

from shared.config import KafkaSettings

T = TypeVar("T")


def client_options(kafka: str | KafkaSettings) -> dict[str, Any]:
    """aiokafka keyword arguments for ``kafka``: settings, or a bootstrap address reached with
    the security of ``FLEETDESK_KAFKA_*`` (the test harness sets the super user's there)."""
    if isinstance(kafka, str):
        kafka = KafkaSettings(bootstrap_servers=kafka)
    return kafka.client_options()


def kafka_environment(kafka: KafkaSettings) -> dict[str, str]:
    """``FLEETDESK_KAFKA_*`` that give a process the security of ``kafka`` (the test harness
    and the benches: the super user's); the bootstrap address is the caller's to set."""
    env = {"FLEETDESK_KAFKA_SECURITY_PROTOCOL": kafka.security_protocol.value}
    if kafka.uses_sasl:
        assert kafka.sasl_username is not None and kafka.sasl_password is not None
        env["FLEETDESK_KAFKA_SASL_MECHANISM"] = kafka.sasl_mechanism.value
        env["FLEETDESK_KAFKA_SASL_USERNAME"] = kafka.sasl_username
        env["FLEETDESK_KAFKA_SASL_PASSWORD"] = kafka.sasl_password.get_secret_value()
    return env


async def eventually(
    probe: Callable[[], Awaitable[T]],
    timeout: float = 15.0,
    interval: float = 0.1,
    *,
    what: str | None = None,
) -> T:
    """Await ``probe`` until it returns something truthy and return it; fail after ``timeout``.

    The only place tests wait for an asynchronous effect: a bounded, repeated look, never a
    bare sleep that hopes the effect has happened by then.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            name = what or getattr(probe, "__name__", repr(probe))
            raise AssertionError(
                f"{name} did not become true within {timeout}s (last value: {value!r})"
            )
        await asyncio.sleep(interval)


async def create_topic(
    bootstrap: str | KafkaSettings, *, partitions: int = 1, timeout: float = 30.0
) -> str:
    """Create a unique throw-away topic ``test.<uuid hex>`` and return its name."""
    if partitions not in (1, 3):
        raise ValueError("test topics have 1 or 3 partitions")
    name = f"test.{uuid.uuid4().hex}"
    admin = AIOKafkaAdminClient(**client_options(bootstrap))
    await admin.start()
    try:
        await asyncio.wait_for(admin.create_topics([NewTopic(name, partitions, 1)]), timeout)
    finally:
        await admin.close()
    return name


async def read_topic(
    bootstrap: str | KafkaSettings, topic: str, *, timeout: float = 15.0
) -> list[ConsumerRecord]:
    """Every record on ``topic`` right now, read from the beginning (no consumer group)."""

    async def read() -> list[ConsumerRecord]:
        partitions = await eventually(
            lambda: topic_partitions(bootstrap, topic),
            timeout=timeout,
            what=f"partitions of {topic}",
        )
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer = AIOKafkaConsumer(
            **client_options(bootstrap),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
            records: list[ConsumerRecord] = []
            remaining = {tp for tp in tps if ends[tp] > 0}
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=200)
                for tp, recs in batch.items():
                    records.extend(r for r in recs if r.offset < ends[tp])
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
            return records
        finally:
            await consumer.stop()

    return await asyncio.wait_for(read(), timeout)


async def topic_partitions(bootstrap: str | KafkaSettings, topic: str) -> list[int]:
    """The partition numbers of ``topic``; empty while the broker does not know it."""
    admin = AIOKafkaAdminClient(**client_options(bootstrap))
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    for t in described:
        if t["topic"] == topic and t["error_code"] == 0:
            return sorted(p["partition"] for p in t["partitions"])
    return []


def header(record: Any, name: str) -> str | None:
    """A header of a consumed record, decoded; None when absent."""
    for key, value in record.headers or ():
        if key == name:
            return bytes(value).decode()
    return None


def uses_index(plan: str) -> bool:
    """Whether an ``explain`` query plan (as text) reads through an index and never scans the
    whole collection: PostgreSQL's plans under FerretDB, or MongoDB's."""
    scans = ("Seq Scan", "COLLSCAN")
    index_stages = ("Index Scan", "Bitmap Index Scan", "IXSCAN", "IDHACK", "EXPRESS_IXSCAN")
    return not any(s in plan for s in scans) and any(s in plan for s in index_stages)
