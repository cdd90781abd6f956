"""faust, delivering each fetched record without four tasks per record.

faust's fetcher hands every record to the streams with
``await self.wait_first(callback(record), self.suspend_flow.wait())``: ``wait_first`` wraps
each argument (and the consumer's stopped and crashed events) in a task and waits for the
first to finish. That is four tasks and an ``asyncio.wait`` per record, though the callback
almost always finishes without waiting for anything (it puts the record into a stream's
buffer, which has room: faust pauses a partition well before its buffer fills). Measured here:
it was the largest single cost of the meters ingestion worker after deciding the report.

:class:`EagerConsumer` runs the callback at once, up to its first suspension, as Python 3.12's
eager tasks do (``asyncio.eager_task_factory``; this is Python 3.11). If it finishes there, that
is the result, with no task made. If it has to wait (a full buffer, a lock held by a
resubscription), the started coroutine is finished by a task under faust's own ``wait_first``,
so a flow suspension (a rebalance) still abandons it exactly as before.

Delivering faster makes one hazard of faust's likelier: records cleared from the buffers by a
rebalance while later ones of the same partition are still decided. The worker guards against
that itself (``Ingestor``'s per-partition watermark), whichever consumer delivers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TransportT
from mode.services import WaitArgT, WaitResults
from mode.utils.times import Seconds


async def finish(coro: Coroutine[Any, Any, Any], waiting: Any) -> Any:
    """Run ``coro`` to its end as a task would, after ``coro.send(None)`` returned ``waiting``
    (the future it waits for, or None for a bare yield): wait, resume, until it returns."""
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                waiting._asyncio_future_blocking = False  # as Task.__step does
                await asyncio.wait([waiting])
        except asyncio.CancelledError:
            # Cancelled while it waits (faust abandons a delivery when the flow is suspended):
            # what it waits for is cancelled and it gets the cancellation where it waits, as
            # under a task, and cleans up.
            if waiting is not None:
                waiting.cancel()
            try:
                coro.throw(asyncio.CancelledError())
            except (StopIteration, asyncio.CancelledError):
                pass
            else:
                coro.close()
            raise
        try:
            waiting = coro.send(None)
        except StopIteration as done:
            return done.value


class EagerConsumer(faust_kafka.Consumer):
    """faust's aiokafka consumer whose per-record ``wait_first`` starts the callback eagerly."""

    async def wait_first(self, *coros: WaitArgT, timeout: Seconds = None) -> WaitResults:  # type: ignore[assignment]
        first = coros[0] if coros else None
        if not asyncio.iscoroutine(first) or self._stopped.is_set() or self._crashed.is_set():
            return await super().wait_first(*coros, timeout=timeout)
        try:
            waiting = first.send(None)
        except BaseException as outcome:  # done (StopIteration), or raised: faust's raises too
            for other in coros[1:]:  # never awaited: closed, as a cancelled task's would be
                if asyncio.iscoroutine(other):
                    other.close()
            if isinstance(outcome, StopIteration):
                return WaitResults([first], [outcome.value], False)
            raise
        return await super().wait_first(finish(first, waiting), *coros[1:], timeout=timeout)


class EagerTransport(faust_kafka.Transport):
    Consumer = EagerConsumer


class App(faust.App):
    """A faust app on :class:`EagerTransport` (the broker is always Kafka here)."""

    def _new_transport(self) -> TransportT:
        return EagerTransport(self.conf.broker_consumer, self)
