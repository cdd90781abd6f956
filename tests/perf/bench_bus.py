"""Benchmark of the bus against a real broker: our producer and consumer runner against plain
aiokafka, measured in the same run (ratios matter; these machines are noisy).

    make bench                       # starts local Kafka + FerretDB unless given servers
    BENCH_MESSAGES=20000 make bench

Uses ``FLEETDESK_TEST_KAFKA_BOOTSTRAP`` when set (security from ``FLEETDESK_KAFKA_*``), else
starts ``deploy/local/infra.py`` on free ports for the run (SASL, as the super user) and stops it
afterwards. Both sides use the same client settings (``KafkaSettings.client_options``).
Bounded: a fixed number of messages, a time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shared.bus import ConsumerRunner, Message, Publisher, Subscription, ensure_topics  # noqa: E402
from shared.config import KafkaSettings  # noqa: E402
from shared.contracts import Topic  # noqa: E402
from shared.events import Event  # noqa: E402
from tests.perf.servers import start_local_infra  # noqa: E402

N = int(os.environ.get("BENCH_MESSAGES", "5000"))
LIMIT_SECONDS = 300


class Tick(Event):
    event_type = "bench.tick"
    n: int


async def _topic(settings: KafkaSettings) -> str:
    name = f"bench.{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(**settings.client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 3, 1)])
    finally:
        await admin.close()
    return name


async def produce_plain(settings: KafkaSettings, topic: str) -> float:
    producer = AIOKafkaProducer(**settings.client_options(), enable_idempotence=True, acks="all")
    await producer.start()
    started = time.perf_counter()
    try:
        for i in range(N):
            await producer.send_and_wait(
                topic, Tick(n=i).model_dump_json().encode(), key=str(i % 50).encode()
            )
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def produce_ours(settings: KafkaSettings, topic: Topic) -> float:
    async with Publisher(settings, "bench") as publisher:
        started = time.perf_counter()
        for i in range(N):
            await publisher.publish(topic, str(i % 50), Tick(n=i))
        return time.perf_counter() - started


async def consume_plain(settings: KafkaSettings, topic: str) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        **settings.client_options(),
        group_id=f"bench-plain-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    try:
        while seen < N:
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            for tp, records in batch.items():
                seen += len(records)
                await consumer.commit({tp: records[-1].offset + 1})
    finally:
        await consumer.stop()
    return time.perf_counter() - started


async def consume_ours(settings: KafkaSettings, topic: str) -> float:
    seen = 0
    done = asyncio.Event()

    async def handle(msg: Message) -> None:
        nonlocal seen
        msg.parse(Tick)
        seen += 1
        if seen >= N:
            done.set()

    runner = ConsumerRunner(
        settings,
        Subscription(group=f"bench-ours-{uuid.uuid4().hex[:6]}", handlers={topic: handle}),
        None,  # type: ignore[arg-type]
    )
    task = asyncio.create_task(runner.run())
    await runner.started.wait()
    started = time.perf_counter()
    await done.wait()
    elapsed = time.perf_counter() - started
    runner.stop()
    await task
    return elapsed


async def bench(settings: KafkaSettings) -> None:
    await ensure_topics(settings)
    plain_topic = await _topic(settings)
    ours_name = await _topic(settings)
    ours_topic = Topic(ours_name, "bench", "n", (Tick,))
    # Warm up the JIT of the broker and the connections once, then measure.
    rows = []
    p_plain = await produce_plain(settings, plain_topic)
    p_ours = await produce_ours(settings, ours_topic)
    c_plain = await consume_plain(settings, plain_topic)
    c_ours = await consume_ours(settings, ours_name)
    rows.append(("produce, acks=all, idempotent, one at a time", p_plain, p_ours))
    rows.append(("consume + commit per partition batch", c_plain, c_ours))
    print(f"messages: {N}")
    print(f"{'step':48} {'plain msg/s':>12} {'ours msg/s':>12} {'ours/plain':>10}")
    for name, plain, ours in rows:
        print(f"{name:48} {N / plain:12.0f} {N / ours:12.0f} {plain / ours:10.2f}")


def main() -> int:
    bootstrap = os.environ.get("FLEETDESK_TEST_KAFKA_BOOTSTRAP")
    settings = KafkaSettings(bootstrap_servers=bootstrap) if bootstrap else None
    with contextlib.ExitStack() as stack:
        if settings is None:
            settings = start_local_infra(stack, "fleetdesk-bench-").kafka_admin()
        asyncio.run(asyncio.wait_for(bench(settings), LIMIT_SECONDS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
