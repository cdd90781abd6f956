"""faust, handing each poll's records of chosen topics to one coroutine, in one call.

faust delivers every fetched record on its own: its fetcher awaits
``wait_first(callback(record), suspend_flow.wait())`` (four tasks and an ``asyncio.wait``), the
conductor's callback decodes the record and puts an event into the agent's buffer, and the
stream takes it out again (sensors, an event object, an ``asyncio.sleep(0)``). Measured here with
``py-spy --gil`` on the meters bench: that path held the GIL for about a third of the worker's
time, more than deciding the reports did.

:class:`DirectConsumer` keeps faust's consumer as it is (group membership, the table's
co-partitioned assignment, recovery, commits of acknowledged offsets, seeks after a rebalance)
and changes one thing: the records of a topic with a *sink* (``consumer.sinks[topic] = sink``)
are collected while the poll is drained and handed to ``await sink(messages)`` at its end, in
fetched order. The sink acknowledges them itself (``consumer.ack``) once their outputs are
durable. A poll fetched before a rebalance is dropped, as faust clears its stream buffers then:
faust seeks the partitions back to their committed offsets, and the meters worker's watermark
refuses any record past a hole it would leave.

The faust agent on those topics stays: faust subscribes its topics and co-partitions the table
with them. Its stream only receives records when the app runs on faust's own consumer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TransportT
from faust.types.tuples import Message
from mode import Service

Sink = Callable[[Sequence[Message]], Awaitable[None]]


class DirectConsumer(faust_kafka.Consumer):
    """faust's aiokafka consumer that hands the records of the topics in ``sinks`` to their
    sink a poll at a time; the other topics are delivered as faust does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sinks: dict[str, Sink] = {}

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs a broker
        """faust's ``Consumer._drain_messages`` (faust-streaming 0.15.3), with the sinks' records
        collected instead of delivered one by one (the sinks are read at each poll: an agent
        registers its sink when it starts). The read offsets, the gaps (offsets absent
        from the log, acknowledged for faust's commit) and the periodic commit are as there."""
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        sink_for = self.sinks.get
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                generation = self.app.consumer_generation_id
                polled: dict[Sink, list[Message]] = {}
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in getmany(timeout=1.0):
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is not None and offset < r_offset:
                            continue  # before a seek's position: faust drops it too
                        if r_offset and offset - r_offset > 1 and acks_enabled_for(tp.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        sink = sink_for(tp.topic)
                        if sink is None:
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        else:
                            polled.setdefault(sink, []).append(message)
                        set_read_offset(tp, offset)
                self.diag.unset_flag(CONSUMER_FETCHING)
                for sink, messages in polled.items():
                    if not self.flow_active or generation != self.app.consumer_generation_id:
                        break  # fetched for the old assignment: read again from the commits
                    await sink(messages)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


class DirectTransport(faust_kafka.Transport):
    Consumer = DirectConsumer


class App(faust.App):
    """A faust app on :class:`DirectTransport` (the broker is always Kafka here)."""

    def _new_transport(self) -> TransportT:
        return DirectTransport(self.conf.broker_consumer, self)
