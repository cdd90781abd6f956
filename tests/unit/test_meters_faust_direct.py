"""The meters worker's faust consumer hands a poll's records of the sink topics to the sink in
one call, and the rest as faust does; checked without a broker (faust's consumer is built but
never started, its poll replaced by a list of polls)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from services.meters.adapters import faust_direct

T0, T1, OTHER = TP("telemetry", 0), TP("telemetry", 1), TP("other", 0)


def msg(tp: TP, offset: int) -> Any:
    return SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=offset, tp=tp)


class Harness:
    """A real DirectConsumer whose polls come from a list; ``between`` runs after each poll."""

    def __init__(self, consumer: faust_direct.DirectConsumer) -> None:
        self.consumer = consumer
        self.sunk: list[list[tuple[int, int]]] = []
        self.called: list[tuple[str, int]] = []
        self.fetcher = SimpleNamespace(_stopped=asyncio.Event())

        async def sink(messages: Sequence[Any]) -> None:
            self.sunk.append([(m.partition, m.offset) for m in messages])

        async def callback(message: Any) -> None:
            self.called.append((message.topic, message.offset))

        consumer.sinks["telemetry"] = sink
        consumer.callback = callback

    async def drain(self, polls: list[list[Any]], during: Any = None) -> None:
        """Each poll's records as faust's fetch returns them (by partition, each in order);
        ``during`` sees each record as it becomes a message."""
        remaining = list(polls)

        async def wait_next_records(timeout: float) -> tuple[dict[TP, list[Any]] | None, None]:
            if not remaining:
                self.fetcher._stopped.set()
                return None, None
            by_partition: dict[TP, list[Any]] = {}
            for m in remaining.pop(0):
                by_partition.setdefault(m.tp, []).append(m)
            return by_partition, None

        def to_message(tp: TP, record: Any) -> Any:
            if during is not None:
                during(record)
            return record

        consumer: Any = self.consumer
        consumer._wait_next_records = wait_next_records
        consumer._to_message = to_message
        consumer.highwater = lambda tp: 0
        await asyncio.wait_for(self.consumer._drain_messages(self.fetcher), 5)


@pytest.fixture
async def harness() -> Harness:
    app = faust_direct.App("meters.unit-direct", broker="kafka://127.0.0.1:1", web_enabled=False)
    consumer = app.consumer
    assert isinstance(consumer, faust_direct.DirectConsumer)  # the app really uses it
    consumer.loop = asyncio.get_running_loop()
    consumer.flow_active = True
    return Harness(consumer)


async def test_a_polls_sink_records_arrive_in_one_call_in_order_and_the_rest_one_by_one(
    harness: Harness,
) -> None:
    """In one call per poll: partition by partition, each partition's records in order."""
    await harness.drain(
        [
            [msg(T0, 0), msg(T1, 5), msg(OTHER, 9), msg(T0, 1), msg(T1, 6)],
            [msg(T0, 2)],
        ]
    )
    assert harness.sunk == [[(0, 0), (0, 1), (1, 5), (1, 6)], [(0, 2)]]
    assert harness.called == [("other", 9)]


async def test_records_before_a_seeks_position_are_dropped(harness: Harness) -> None:
    harness.consumer._read_offset[T0] = 3  # sought back to 3 (faust sets the read offset)
    await harness.drain([[msg(T0, 2), msg(T0, 3), msg(T0, 4)]])
    assert harness.sunk == [[(0, 3), (0, 4)]]


async def test_a_gap_in_the_offsets_is_registered_for_faust_s_commit(harness: Harness) -> None:
    harness.consumer.app.topics._acking_topics.add("telemetry")  # type: ignore[attr-defined]
    harness.consumer._read_offset[T0] = 4
    await harness.drain([[msg(T0, 8)]])
    gap = harness.consumer._gap[T0]
    assert all(gap.overlaps(o) for o in (5, 6, 7))  # never came: faust's commit passes them
    assert not gap.overlaps(4)
    assert harness.sunk == [[(0, 8)]]


async def test_a_poll_fetched_before_a_rebalance_is_not_handed_over(harness: Harness) -> None:
    consumer = harness.consumer
    seen: list[int] = []

    def rebalance(m: Any) -> None:
        seen.append(m.offset)
        if len(seen) == 2:
            consumer.app.consumer_generation_id += 1  # the group moved on during the poll
        if len(seen) == 3:
            consumer._read_offset[T0] = 10  # faust seeks back to the committed offset

    await harness.drain([[msg(T0, 10), msg(T0, 11)], [msg(T0, 10), msg(T0, 11)]], rebalance)
    assert harness.sunk == [[(0, 10), (0, 11)]]  # once: the poll fetched in the new generation


async def test_a_poll_is_dropped_when_the_flow_stops(harness: Harness) -> None:
    def revoke(m: Any) -> None:
        harness.consumer.flow_active = False  # faust's on_partitions_revoked: stop_flow()

    await harness.drain([[msg(T0, 0)]], revoke)
    assert harness.sunk == []
