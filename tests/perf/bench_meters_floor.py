"""The meters worker's Python floor: what the libraries it stands on cost for one report.

    python tests/perf/bench_meters_floor.py          # BENCH_REPORTS=200000 by default

Each report the worker decides passes through library code it cannot leave out: the
consumer's record batch turned into records (aiokafka's fetcher, ``PartitionRecords``) and into
faust messages (as faust's consumer builds them); the report validated against its contract
(pydantic); the device's state read and written as JSON (orjson); the accepted reading encoded
as BSON (pymongo's encoder, as ``insert_many`` sends it); its ``ReadingAccepted`` event and the
state's changelog record appended to producer batches (aiokafka). Each step is timed here on
the simulator's reports, in memory (no servers, no worker logic in between), and printed as
microseconds a report, with their sum. Compare the sum with ``meters_ingest_cpu_bench`` of
``bench_meters.py`` (the worker's whole Python a report): the difference is the worker's own
logic and the event loop. Bounded: a fixed count.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bson
import orjson
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
from faust.types.tuples import Message

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.meters.adapters.stream import accepted_payload  # noqa: E402
from services.meters.core.model import Reading  # noqa: E402
from services.meters.simulator import Odds, Simulator  # noqa: E402
from shared.contracts import ReadingAccepted, ReadingSource, TelemetryReport  # noqa: E402
from shared.events import envelope_headers, parse_json  # noqa: E402
from tests.perf.servers import bench_line as bench  # noqa: E402

REPORTS = int(os.environ.get("BENCH_REPORTS", "200000"))
DEVICES = 100_000
RECORDS_PER_BATCH = 500  # about what the simulator's producer puts in one batch of a partition


def _builder() -> DefaultRecordBatchBuilder:
    return DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1024 * 1024,
    )


def _timed(name: str, step: Callable[[], int], expected: int) -> float:
    """Runs ``step`` (which returns how many reports it handled: ``expected``, else the run
    fails) and prints its cost a report. Without garbage collection, as the worker runs
    (``freeze_what_is_loaded``, a young threshold of 200,000): here the steps keep their
    results, which the collector would otherwise traverse again and again."""
    gc.collect()
    gc.freeze()
    gc.disable()
    started = time.perf_counter()
    done = step()
    cost = (time.perf_counter() - started) / max(done, 1) * 1e6
    gc.enable()
    if done != expected or not done:
        raise SystemExit(f"{name} handled {done} reports, not {expected}")
    bench(f"meters_floor_{name}", cost, "us/report")
    return cost


def main() -> int:
    serials = [f"FLOOR-{i}" for i in range(DEVICES)]
    sim = Simulator(serials, Odds(duplicate=0.01, lower=0.001, malformed=0.001, error=0.01))
    pairs = [(serial.encode(), value) for serial, value in sim.stream(REPORTS)]
    del sim
    print(f"reports: {len(pairs)} over {DEVICES} devices, in memory", flush=True)
    batches: list[bytes] = []
    for start in range(0, len(pairs), RECORDS_PER_BATCH):
        builder = _builder()
        for offset, (key, value) in enumerate(pairs[start : start + RECORDS_PER_BATCH]):
            builder.append(
                offset, timestamp=int(time.time() * 1000), key=key, value=value, headers=[]
            )
        batches.append(bytes(builder.build()))
    tp = TopicPartition("emaintenance.telemetry", 0)

    messages: list[Message] = []

    def consume() -> int:
        for raw in batches:
            records = PartitionRecords(
                tp, MemoryRecords(raw), [], 0, None, None, True, READ_UNCOMMITTED
            )
            for r in records:
                messages.append(
                    Message(
                        r.topic, r.partition, r.offset, r.timestamp / 1000.0, r.timestamp_type,
                        r.headers, r.key, r.value, r.checksum, r.serialized_key_size,
                        r.serialized_value_size, tp, generation_id=1,
                    )
                )  # fmt: skip
        return len(messages)

    reports: list[TelemetryReport] = []

    def validate() -> int:
        for msg in messages:
            try:
                reports.append(parse_json(TelemetryReport, msg.value or b""))
            except ValueError:
                pass  # the simulator's malformed ones: the worker dead-letters them
        return len(messages)

    now = datetime.now(UTC)
    state: dict[str, Any] = {
        "counters": {"total": 123456, "colour": 23456, "scan": 3456},
        "manual_day": None,
        "manual_at": None,
        "last_seen": time.time(),
        "errors": [],
        "stale": False,
        "positions": {"t": 123456},
    }
    state_json = orjson.dumps(state)

    def state_read_and_written() -> int:
        for _ in reports:
            memoryview(orjson.dumps(orjson.loads(state_json))).tobytes()
        return len(reports)

    readings: list[dict[str, Any]] = []
    accepted: list[Reading] = []  # the same readings, as the worker's rules return them

    def reading_bson() -> int:
        for doc in readings:
            bson.encode(doc)
        return len(readings)

    def event_and_changelog_records() -> int:
        events, changelog = _builder(), _builder()
        for n, (doc, reading) in enumerate(zip(readings, accepted, strict=True)):
            payload = accepted_payload(reading)
            headers = envelope_headers(
                reading.reading_id, ReadingAccepted.event_type, "meters", occurred_at=now
            )
            key = str(doc["device_id"]).encode()
            while events.append(n, timestamp=None, key=key, value=payload, headers=headers) is None:
                events = _builder()
            while (
                changelog.append(n, timestamp=None, key=key, value=state_json, headers=[]) is None
            ):
                changelog = _builder()
        return len(readings)

    total = _timed("consume_records_to_faust_messages", consume, len(pairs))
    total += _timed("validate_report", validate, len(messages))
    readings.extend(
        {
            "_id": f"emaintenance.telemetry:3:{n}",
            "device_id": f"0b7e6f4c-8a51-4c2e-9d1b-{n % DEVICES:012d}",
            "org_id": "5d2c1a8e-3f4b-4e6a-8c7d-1a2b3c4d5e6f",
            "serial": report.serial,
            "source": "emaintenance",
            "counters": report.counters,
            "read_at": report.sent_at,
            "accepted_at": now,
        }
        for n, report in enumerate(reports)
    )
    accepted.extend(
        Reading(
            doc["_id"], doc["device_id"], doc["org_id"], doc["serial"],
            ReadingSource.EMAINTENANCE, doc["counters"], doc["read_at"],
        )
        for doc in readings
    )  # fmt: skip
    total += _timed("state_json_read_and_written", state_read_and_written, len(reports))
    total += _timed("reading_bson", reading_bson, len(reports))
    total += _timed("event_and_changelog_records", event_and_changelog_records, len(reports))
    bench("meters_floor_libraries_total", total, "us/report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
