"""The worker's records go out one producer batch per partition at a time: a full batch is sent
and the record that did not fit opens the next one; every record goes out once, in order, on
its own partition (aiokafka's real batch builder, a producer that only records what it is
given)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from services.meters.adapters import stream


class RecordingProducer:
    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes]]]] = []

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_size, 0, is_transactional=False)

    async def send_batch(self, builder: BatchBuilder, topic: str, *, partition: int) -> Any:
        buffer = builder._build()  # what the producer would put on the wire
        records = [(bytes(r.key), bytes(r.value)) for r in DefaultRecordBatch(bytes(buffer))]
        self.sent.append((topic, partition, records))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def ingestor(producer: RecordingProducer) -> Any:
    ing: Any = stream.Ingestor.__new__(stream.Ingestor)
    ing._producer = producer
    return ing


def records(topic: str, partition: int, count: int, size: int) -> list[stream.Record]:
    return [
        (topic, partition, f"k{partition}-{i}".encode(), bytes([65 + i % 26]) * size, [])
        for i in range(count)
    ]


async def test_full_batches_are_sent_and_every_record_goes_out_once_in_order() -> None:
    producer = RecordingProducer(batch_size=1024)
    given = records("t", 0, 25, 200) + records("t", 1, 3, 200) + records("u", 0, 7, 200)
    await ingestor(producer)._send_records(given)

    assert len(producer.sent) > 3  # 25 records of 200 bytes do not fit one batch of 1 KB
    for topic, partition, batch in producer.sent:
        expected = [(key, value) for t, p, key, value, _ in given if (t, p) == (topic, partition)]
        assert batch and all(pair in expected for pair in batch)
    for topic, partition in {("t", 0), ("t", 1), ("u", 0)}:
        sent = [
            pair for t, p, batch in producer.sent if (t, p) == (topic, partition) for pair in batch
        ]
        expected = [(key, value) for t, p, key, value, _ in given if (t, p) == (topic, partition)]
        assert sent == expected


async def test_a_record_larger_than_a_batch_goes_alone() -> None:
    producer = RecordingProducer(batch_size=512)
    given = records("t", 0, 1, 100) + records("t", 0, 1, 4000) + records("t", 0, 1, 100)
    given = [(t, p, f"{i}".encode(), v, h) for i, (t, p, _, v, h) in enumerate(given)]
    await ingestor(producer)._send_records(given)

    keys = [[key for key, _ in batch] for _, _, batch in producer.sent]
    assert keys == [[b"0"], [b"1"], [b"2"]]
