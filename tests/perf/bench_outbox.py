"""Benchmark of the outbox relay: documents whose outbox entries wait to be published.

    uv run python tests/perf/bench_outbox.py          # part of `make bench`
    BENCH_OUTBOX_DOCS=2000 BENCH_OUTBOX_CONCURRENCY=1,16 ...

For each concurrency (documents claimed and published at once), ``BENCH_OUTBOX_DOCS`` new
documents each carrying one event (a device state, as an import writes them) are inserted with
``insert_many``, then one relay publishes them all (``publish_pending``), timed; the count
published is checked. Prints ``BENCH outbox_publish_c<n> <docs/s>`` per concurrency and the
ratio of the largest to the smallest. Bounded: fixed counts and a time limit.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shared.bus import Publisher, ensure_topics  # noqa: E402
from shared.config import KafkaSettings, MongoSettings  # noqa: E402
from shared.contracts import DEVICES, DeviceState  # noqa: E402
from shared.store import OUTBOX_INDEX, Mongo, OutboxRelay, new_with_outbox  # noqa: E402
from tests.perf.servers import bench_line as bench  # noqa: E402
from tests.perf.servers import run_bench  # noqa: E402

DOCS = int(os.environ.get("BENCH_OUTBOX_DOCS", "2000"))
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_OUTBOX_CONCURRENCY", "1,16").split(",")]
LIMIT_SECONDS = 900


async def run(kafka: KafkaSettings, mongo_url: str) -> None:
    await ensure_topics(kafka)
    settings = MongoSettings(url=mongo_url, database_prefix="bench" + secrets.token_hex(3))
    rates: dict[int, float] = {}
    async with Mongo(settings, "outbox") as mongo, Publisher(kafka, "devices") as publisher:
        for concurrency in CONCURRENCY:
            collection = mongo.db[f"devices_c{concurrency}"]
            await collection.create_indexes([OUTBOX_INDEX])
            org = "org-" + secrets.token_hex(4)
            docs = []
            for i in range(DOCS):
                state = DeviceState(
                    device_id=f"{org}-{i}", org_id=org, serial=f"S{org}{i}", model="m", revision=1
                )
                docs.append(
                    new_with_outbox(
                        {"_id": state.device_id, "serial": state.serial},
                        (DEVICES, state.device_id, state),
                    )
                )
            for start in range(0, DOCS, 1000):
                await collection.insert_many(docs[start : start + 1000])
            relay = OutboxRelay(mongo.db, (collection.name,), publisher, concurrency=concurrency)
            started = time.perf_counter()
            published = await relay.publish_pending()
            elapsed = time.perf_counter() - started
            assert published == DOCS, (published, DOCS)
            rates[concurrency] = DOCS / elapsed
            bench(f"outbox_publish_c{concurrency}", rates[concurrency], "docs/s")
    if len(rates) > 1:
        low, high = min(rates), max(rates)
        bench(f"outbox_publish_c{high}_vs_c{low}", rates[high] / rates[low], "ratio")


def main() -> int:
    return run_bench(run, LIMIT_SECONDS, prefix="fleetdesk-bench-outbox-")


if __name__ == "__main__":
    sys.exit(main())
