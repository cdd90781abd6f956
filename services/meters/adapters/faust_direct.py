"""faust, handing each poll's records of chosen topics to one coroutine, in one call.

faust delivers every fetched record on its own: its fetcher awaits
``wait_first(callback(record), suspend_flow.wait())`` (four tasks and an ``asyncio.wait``), the
conductor's callback decodes the record and puts an event into the agent's buffer, and the
stream takes it out again (sensors, an event object, an ``asyncio.sleep(0)``). Measured here with
``py-spy --gil`` on the meters bench: that path held the GIL for about a third of the worker's
time, more than deciding the reports did.

:class:`DirectConsumer` keeps faust's consumer as it is (group membership, the table's
co-partitioned assignment, recovery, commits of acknowledged offsets, seeks after a rebalance)
and changes two things: the records of a topic with a *sink* (``consumer.sinks[topic] = sink``)
are collected while the poll is drained and handed to ``await sink(messages)`` at its end,
partition by partition, each in fetched order; and a poll is turned into messages in one pass
(``_poll``), without faust's per-record generator steps. The sink acknowledges them itself
(``consumer.ack``) once their outputs are durable. A poll fetched before a rebalance is dropped,
as faust clears its stream buffers then: faust seeks the partitions back to their committed
offsets, and the meters worker's watermark refuses any record past a hole it would leave.

The faust agent on those topics stays: faust subscribes its topics and co-partitions the table
with them. Its stream only receives records when the app runs on faust's own consumer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import faust
import faust.tables
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TP, TransportT
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
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        sink_for = self.sinks.get
        app = self.app
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                generation = app.consumer_generation_id
                polled: dict[Sink, list[Message]] = {}
                await self.sleep(0)
                if not self.should_stop:
                    fetched_in, records = await self._poll(timeout=1.0)
                    for tp, message in records:
                        # As faust's getmany: a rebalance or a stop during the poll ends it.
                        if not self.flow_active or app.consumer_generation_id != fetched_in:
                            break
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
                    if not self.flow_active or generation != app.consumer_generation_id:
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

    async def _poll(self, timeout: float) -> tuple[int, list[tuple[TP, Message]]]:
        """faust's ``Consumer.getmany`` (faust-streaming 0.15.3) as one list, without its work
        per record: it walked the partitions round-robin through a generator, read the
        partition's high-water mark and told the monitor for each record, and handed each over
        through an async generator (about 3 µs a record, measured with the records of a poll
        in memory; ``_to_message`` itself is 1.7). Here the high-water mark is read once per
        partition and poll, and the records come partition by partition, each in its order
        (a poll's partitions are independent: one writer per key, keys never share two).
        Returns the records and the consumer generation they were fetched in."""
        records, active = await self._wait_next_records(timeout)
        generation = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return generation, []
        if not self.flow_active:
            try:  # as faust: a poll while the flow is stopped seeks back to the commits
                await self.perform_seek()
            except Exception as exc:
                self.log.warning(f"exception performing seek when flow not active {exc}")
            return generation, []
        to_message = self._to_message
        buffered = self._buffered_partitions
        track = self.app.monitor.track_tp_end_offset
        polled: list[tuple[TP, Message]] = []
        for tp, tp_records in records.items():
            if active is not None and tp not in active and tp not in buffered:
                continue
            track(tp, self.highwater(tp))
            polled.extend([(tp, to_message(tp, record)) for record in tp_records])
        return generation, polled


class TableManager(faust.tables.TableManager):
    """faust's table manager without the second it sleeps when it starts.

    faust-streaming 0.15.3 (``TableManager.on_start``) waits a fixed 1.0 s so that agents
    starting beside it may still declare tables, and its conductor subscribes the inputs only
    after that: every start of the worker, a restart after a crash included, decided nothing for
    that second (seen in faust's log on the bench: "Waiting for tables to be registered" at
    7.45 s, the table starting at 8.36 s). An app on this manager declares its tables before it
    starts (the meters worker: ``Ingestor.__init__``); a table declared later is refused, as faust
    refuses one after the wait ("Too late to add tables at this point")."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class DirectTransport(faust_kafka.Transport):
    Consumer = DirectConsumer


class App(faust.App):
    """A faust app on :class:`DirectTransport` (the broker is always Kafka here) and
    :class:`TableManager`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("TableManager", TableManager)
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> TransportT:
        return DirectTransport(self.conf.broker_consumer, self)
