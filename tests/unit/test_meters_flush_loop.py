"""The worker's flusher: a partial batch is flushed once the interval has passed since the last
flush began, so a slow flush is followed at once (waiting a whole interval after it added that
interval to every report's latency), and a quick one does not turn into a busy loop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from services.meters.adapters import stream
from services.meters.config import IngestSettings


def flusher(interval_ms: int, flush_seconds: float) -> tuple[Any, list[tuple[float, float]]]:
    """An ingestor's state only (no faust, no servers) whose flush takes ``flush_seconds`` and
    leaves a new partial batch behind, as a stream that goes on deciding would."""
    ing: Any = stream.Ingestor.__new__(stream.Ingestor)
    ing.settings = IngestSettings(flush_interval_ms=interval_ms)
    ing._due = asyncio.Event()
    ing._batch = stream.Batch(inputs=[object()])
    flushes: list[tuple[float, float]] = []  # (began, ended), loop time

    async def flush() -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.sleep(flush_seconds)
        flushes.append((began, loop.time()))
        ing._batch = stream.Batch(inputs=[object()])  # decided meanwhile

    ing.flush = flush
    return ing, flushes


async def run_for(ing: Any, seconds: float) -> None:
    task = asyncio.create_task(ing._flush_loop())
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_flush_longer_than_the_interval_is_followed_at_once() -> None:
    ing, flushes = flusher(interval_ms=500, flush_seconds=0.6)
    await run_for(ing, 1.9)
    assert len(flushes) >= 2
    gaps = [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(flushes)]
    assert max(gaps) < 0.25, gaps  # waiting another interval after each flush: 0.5 s


async def test_a_quick_flush_waits_for_the_rest_of_the_interval() -> None:
    ing, flushes = flusher(interval_ms=300, flush_seconds=0.0)
    await run_for(ing, 1.0)
    assert 2 <= len(flushes) <= 4, flushes  # every 0.3 s, not back to back
    starts = [began for began, _ in flushes]
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.25
