"""What a page of a device's reading history costs, by the length of that history.

    python tests/perf/bench_meters_history.py            # 1,000,000 readings in the collection
    BENCH_HISTORY_DOCS=200000 python tests/perf/bench_meters_history.py

One ``deploy/local`` database server (patched FerretDB on PostgreSQL, no Kafka). The readings
collection, with the history's index, gets ``BENCH_HISTORY_DOCS`` readings: three devices with 50,
500 and 5,000 readings four a day (12 days, 4 months and 3.4 years of them), the rest spread over
300,000 other devices. For each of the three, the median of 9 requests of:
- ``page``: the newest 50 readings as the history reads them (``ReadingStore.page``: windows of
  time going back until the page is full);
- ``single_query``: the same page as one query over the device's whole history sorted by
  ``read_at`` (what the history did before; the baseline);
- ``page_offset``: the 50 readings after the first 450 (``offset=450``, the tenth page), and
  ``single_query_offset``, the same as one query (``skip``);
- ``billing_12_months``: the readings of the last 12 months the billing snapshot reads.
Each on a ``BENCH <name> <value> <unit>`` line, and the ratio of ``single_query`` to ``page``.
The statistics are brought up to date after the load (``ANALYZE``, what autovacuum does in a
running system): measured right after it, before autovacuum had run, PostgreSQL estimated a
device's readings at 15% of the collection and read a window without an upper bound with a
parallel sequential scan (373 ms for a device with 50 readings in 1,000,000).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import DESCENDING

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.meters.adapters.store import INDEXES, READINGS, ReadingStore  # noqa: E402
from tests.perf.servers import bench_line as bench  # noqa: E402
from tests.perf.servers import insert_side_by_side, median_ms, run_on_loaded_database  # noqa: E402

DOCS = int(os.environ.get("BENCH_HISTORY_DOCS", "1000000"))
SIZES = (50, 500, 5000)
REPEATS = 9
NOW = datetime.now(UTC).replace(microsecond=0)


def progress(text: str) -> None:
    print(f"[bench_meters_history] {text}", file=sys.stderr, flush=True)


def reading(n: int, device_id: str, read_at: datetime) -> dict[str, Any]:
    return {
        "_id": f"emaintenance.telemetry:{n % 6}:{n}",
        "device_id": device_id,
        "org_id": f"org-{n % 500}",
        "serial": f"S-{device_id}",
        "source": "emaintenance",
        "counters": {"total": 100_000 + n, "colour": 40_000 + n, "scan": n % 1000},
        "read_at": read_at,
        "accepted_at": NOW,
    }


def plan() -> list[tuple[str, datetime]]:
    """(device, read_at) of the measured devices' readings, four a day back from now."""
    return [
        (f"dev-history-{size}", NOW - timedelta(hours=6 * k)) for size in SIZES for k in range(size)
    ]


def readings() -> Iterator[dict[str, Any]]:
    """The measured devices' readings first, then the rest over 300,000 other devices."""
    measured = plan()
    for n in range(DOCS):
        if n < len(measured):
            device_id, at = measured[n]
        else:
            device_id, at = f"dev-{n % 300_000}", NOW - timedelta(seconds=n)
        yield reading(n, device_id, at)


async def load(db: Any) -> None:
    collection = db[READINGS]
    await collection.create_indexes(INDEXES[READINGS])
    await insert_side_by_side(
        collection,
        readings(),
        progress=lambda n, rate: progress(f"{n:,}/{DOCS:,} readings ({rate:,.0f} docs/s)"),
    )


async def measure_device(db: Any, history: ReadingStore, size: int) -> None:
    device_id = f"dev-history-{size}"
    progress(f"a device with {size:,} readings")

    async def page(offset: int = 0) -> None:
        found = await history.page(
            device_id, source=None, since=None, until=None, limit=50, offset=offset
        )
        assert len(found) == min(50, max(0, size - offset)), len(found)

    async def single_query(offset: int = 0) -> None:
        cursor = (
            db[READINGS]
            .find({"device_id": device_id})
            .sort([("read_at", DESCENDING), ("_id", DESCENDING)])
            .skip(offset)
            .limit(50)
        )
        assert len([d async for d in cursor]) == min(50, max(0, size - offset))

    async def billing() -> None:
        await history.since(device_id, NOW - timedelta(days=372))

    windowed = await median_ms(page, REPEATS)
    single = await median_ms(single_query, REPEATS)
    bench(f"meters_history_{size}_page", windowed, "ms")
    bench(f"meters_history_{size}_single_query", single, "ms")
    bench(f"meters_history_{size}_single_query_vs_page", single / windowed, "ratio")
    bench(f"meters_history_{size}_page_offset", await median_ms(lambda: page(450), REPEATS), "ms")
    single_offset = await median_ms(lambda: single_query(450), REPEATS)
    bench(f"meters_history_{size}_single_query_offset", single_offset, "ms")
    bench(f"meters_history_{size}_billing_12_months", await median_ms(billing, REPEATS), "ms")


async def measure(db: Any) -> None:
    history = ReadingStore(db)
    for size in SIZES:
        await measure_device(db, history, size)


def main() -> int:
    progress(f"{DOCS:,} readings; devices with {', '.join(map(str, SIZES))} of them")
    return run_on_loaded_database(
        "fleetdesk-bench-history-", "bench_meters_history", load, measure, progress
    )


if __name__ == "__main__":
    sys.exit(main())
