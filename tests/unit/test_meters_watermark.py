"""The ingestion worker never decides an input past a hole in its partition: it refuses it,
seeks the partition back once, and passes a hole only when it is still there after the grace
time (then it is in the log itself). Checked on the worker's own logic with a fake consumer."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from services.meters.adapters import stream
from services.meters.config import IngestSettings


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[str, int, int]] = []

    async def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp.topic, tp.partition, offset))


def ingestor(grace: float = 10.0) -> Any:
    ing: Any = stream.Ingestor.__new__(stream.Ingestor)  # its state only: no faust, no servers
    ing.settings = IngestSettings(hole_grace_seconds=grace)
    ing.stats = stream.IngestStats()
    ing._batch = stream.Batch()
    ing._flushing = {}
    ing._holes = {}
    ing._watermark_keys = {}
    ing._seeks = set()
    ing.table = SimpleNamespace(data={})
    ing.app = SimpleNamespace(consumer=FakeConsumer())
    return ing


def event(offset: int, partition: int = 0, topic: str = "telemetry") -> Any:
    return SimpleNamespace(message=SimpleNamespace(topic=topic, partition=partition, offset=offset))


def take(ing: Any, offset: int, partition: int = 0) -> bool:
    """The agent's first step for one input: admitted (its watermark advanced) or refused."""
    return bool(ing._admit(event(offset, partition).message))


async def test_an_input_past_a_hole_is_refused_and_its_partition_sought_back_once() -> None:
    ing = ingestor()
    assert [take(ing, o) for o in (0, 1, 2)] == [True, True, True]
    assert take(ing, 5) is False  # 3 and 4 were never decided
    assert take(ing, 6) is False  # fetched before the seek took effect: no second seek
    await asyncio.sleep(0)
    assert ing.app.consumer.seeks == [("telemetry", 0, 3)]
    assert ing.stats.holes == 1
    assert [take(ing, o) for o in (3, 4, 5, 6)] == [True, True, True, True]  # fetched again
    assert take(ing, 5) is True  # a re-delivery at or below the watermark goes on as before
    assert ing._state(stream._watermark_key("telemetry", 0))["offset"] == 6


async def test_the_watermark_comes_back_from_the_table_after_a_handover() -> None:
    ing = ingestor()
    ing.table.data[stream._watermark_key("telemetry", 3)] = b'{"offset":41}'  # the last owner's
    assert take(ing, 40, partition=3) is True  # re-delivered: at or below the watermark
    assert take(ing, 42, partition=3) is True
    assert take(ing, 50, partition=3) is False
    await asyncio.sleep(0)
    assert ing.app.consumer.seeks == [("telemetry", 3, 43)]


async def test_a_hole_still_there_after_the_grace_time_is_in_the_log_and_is_passed() -> None:
    ing = ingestor(grace=0.05)
    assert take(ing, 0) is True
    assert take(ing, 3) is False  # offsets 1-2: sought back once
    await asyncio.sleep(0.1)
    assert take(ing, 3) is True  # the log has no 1 or 2 (transaction markers, retention)
    assert take(ing, 4) is True
    assert len(ing.app.consumer.seeks) == 1


async def test_partitions_and_topics_have_their_own_watermarks() -> None:
    ing = ingestor()
    assert take(ing, 10, partition=0) is True
    assert take(ing, 500, partition=1) is True  # a partition seen first sets its own
    assert take(ing, 12, partition=0) is False
    assert take(ing, 501, partition=1) is True  # a hole elsewhere does not stop it
    commands = event(7, 0, topic="commands")
    assert ing._admit(commands.message) is True


async def test_a_rebalance_while_a_poll_is_decided_drops_the_rest_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker yields to the loop every few inputs; when faust has stopped the flow (a
    revocation) or the generation moved on, the rest of the poll is neither decided nor
    acknowledged: it is fetched again from the committed offsets."""
    monkeypatch.setattr(stream, "YIELD_EVERY", 2)
    ing = ingestor()
    ing.directory = SimpleNamespace(caught_up=asyncio.Event())
    ing.directory.caught_up.set()
    ing.app.consumer.flow_active = True
    ing.app.consumer_generation_id = 1
    ing._due = asyncio.Event()
    decided: list[int] = []
    ing._decide = lambda m: decided.append(m.offset)

    async def revoke_soon() -> None:
        ing.app.consumer.flow_active = False  # runs at the worker's first yield

    revocation = asyncio.create_task(revoke_soon())
    await ing.receive([event(o).message for o in range(6)])
    await revocation
    assert decided == [0, 1]
    assert [m.offset for m in ing._batch.inputs] == [0, 1]  # to be acknowledged once durable

    ing.app.consumer.flow_active = True
    ing.app.consumer_generation_id = 2  # a new generation: faust sought back to offset 2
    await ing.receive([event(o).message for o in range(2, 6)])
    assert decided == [0, 1, 2, 3, 4, 5]
