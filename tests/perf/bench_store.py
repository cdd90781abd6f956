"""Benchmark of the embedded MongoDB-wire server at fleet scale, with stock FerretDB beside it.

    make bench                                  # part of it
    uv run python tests/perf/bench_store.py     # alone
    BENCH_STORE_DOCS=200000 BENCH_STORE_STOCK_DOCS=20000 uv run python tests/perf/bench_store.py
    BENCH_STORE_BACKENDS=sqlite uv run python tests/perf/bench_store.py   # the baseline only

Starts two servers of its own (``deploy/local/infra.py``, temporary folders, free ports): the
platform's server (patched FerretDB on PostgreSQL) and stock FerretDB 1.24.2 on SQLite, and runs
the same steps on each: ``insert_many`` (batches of 5,000) into a collection with the indexes a
service would have; ``find_one`` by ``_id`` and by an indexed field; bulk upserts by ``_id`` of
existing documents; a range query on an indexed date field returning 100 documents. Stock
FerretDB is too slow for a million documents and thousands of lookups in minutes, so it gets
fewer of both (10,000 documents; 50 lookups by ``_id``, 20 by the indexed field, 20 upserts,
20 range queries): each of its lines names its document count (``stock-sqlite-10k``).

Prints ``BENCH <name> <value> <unit>`` lines (and progress on stderr).
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import ASCENDING, IndexModel, MongoClient, UpdateOne

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.perf.servers import bench_line as bench  # noqa: E402
from tests.perf.servers import start_local_infra  # noqa: E402

BASE = datetime(2026, 1, 1, tzinfo=UTC)
BATCH = 5000
RANGE = 100  # documents a range query returns


@dataclass(frozen=True)
class Plan:
    label: str
    docs: int
    id_lookups: int
    field_lookups: int
    upserts: int
    ranges: int


def progress(msg: str) -> None:
    print(f"[bench_store] {msg}", file=sys.stderr, flush=True)


def doc(i: int) -> dict[str, Any]:
    return {
        "_id": f"dev{i:08d}",
        "serial": f"SN{i:08d}",
        "org_id": f"org{i % 5000:05d}",
        "model_family": ("laser", "inkjet", "mfp")[i % 3],
        "at": BASE + timedelta(seconds=i),
        "counters": {"mono": i % 100000, "colour": i % 7000},
        "status": "active",
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(fn: Any, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return times


def run(url: str, plan: Plan) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(url, tz_aware=True)
    try:
        coll = client["bench_store"]["devices"]
        coll.create_indexes(
            [
                IndexModel([("serial", ASCENDING)], name="serial", unique=True),
                IndexModel([("at", ASCENDING)], name="at"),
            ]
        )
        rng = random.Random(7)
        prefix = f"store.{plan.label}"

        started = time.perf_counter()
        step = max(plan.docs // 10, BATCH)
        for first in range(0, plan.docs, BATCH):
            coll.insert_many([doc(i) for i in range(first, min(first + BATCH, plan.docs))])
            done = min(first + BATCH, plan.docs)
            if done % step == 0 or done == plan.docs:
                rate = done / (time.perf_counter() - started)
                progress(f"{plan.label}: {done:,}/{plan.docs:,} documents ({rate:,.0f} docs/s)")
        bench(f"{prefix}.insert_many", plan.docs / (time.perf_counter() - started), "docs/s")

        for field, key, count in (
            ("_id", "dev", plan.id_lookups),
            ("serial", "SN", plan.field_lookups),
        ):
            progress(f"{plan.label}: {count} find_one by {field}")
            times = timed(
                lambda f=field, k=key: coll.find_one({f: f"{k}{rng.randrange(plan.docs):08d}"}),
                count,
            )
            name = "id" if field == "_id" else "indexed_field"
            bench(f"{prefix}.find_one_{name}.p50", statistics.median(times), "ms")
            bench(f"{prefix}.find_one_{name}.p99", percentile(times, 0.99), "ms")

        upserts = min(plan.upserts, plan.docs)  # each an existing document, none twice
        progress(f"{plan.label}: bulk_write of {upserts} upserts by _id")
        ids = rng.sample(range(plan.docs), upserts)
        ops = [
            UpdateOne({"_id": f"dev{i:08d}"}, {"$set": {"status": "seen", "v": i}}, upsert=True)
            for i in ids
        ]
        started = time.perf_counter()
        result = coll.bulk_write(ops, ordered=False)
        elapsed = time.perf_counter() - started
        assert result.matched_count == upserts, result.bulk_api_result
        bench(f"{prefix}.bulk_upserts", upserts / elapsed, "ops/s")

        progress(f"{plan.label}: {plan.ranges} range queries on the date field")

        def range_query() -> None:
            start = rng.randrange(plan.docs - RANGE)
            query = {
                "at": {
                    "$gte": BASE + timedelta(seconds=start),
                    "$lt": BASE + timedelta(seconds=start + RANGE),
                }
            }
            found = list(coll.find(query, {"_id": 1}))
            assert len(found) == RANGE, len(found)

        times = timed(range_query, plan.ranges)
        bench(f"{prefix}.range_100.p50", statistics.median(times), "ms")
        bench(f"{prefix}.range_100.p99", percentile(times, 0.99), "ms")
    finally:
        client.close()


def count_label(n: int) -> str:
    """``10k`` for 10,000 documents, ``500`` for 500."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def main() -> int:
    docs = int(os.environ.get("BENCH_STORE_DOCS", "1000000"))
    stock_docs = int(os.environ.get("BENCH_STORE_STOCK_DOCS", "10000"))
    for name, value in (("BENCH_STORE_DOCS", docs), ("BENCH_STORE_STOCK_DOCS", stock_docs)):
        if value <= RANGE:
            print(f"{name} must be more than {RANGE} (a range query returns {RANGE} documents)")
            return 2
    plans = {
        "postgresql": Plan("patched-pg", docs, 2000, 2000, 5000, 500),
        "sqlite": Plan(f"stock-sqlite-{count_label(stock_docs)}", stock_docs, 50, 20, 20, 20),
    }
    backends = os.environ.get("BENCH_STORE_BACKENDS", "postgresql,sqlite").split(",")
    for backend, plan in plans.items():
        if backend not in backends:
            continue
        with contextlib.ExitStack() as stack:
            progress(f"starting {backend} server")
            local = start_local_infra(stack, "fleetdesk-bench-store-", backend=backend, kafka=False)
            run(local.mongo_url, plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
