"""What ``GET /devices`` costs at fleet scale: the store's query, by how many devices it selects.

    python tests/perf/bench_devices_list.py              # 1,000,000 devices
    BENCH_DEVICES_LIST=200000 python tests/perf/bench_devices_list.py

One ``deploy/local`` database server (patched FerretDB on PostgreSQL, no Kafka). The devices
collection, with the devices service's indexes, gets ``BENCH_DEVICES_LIST`` devices as the
service stores them (``Device`` documents with a history entry): organisations of 50, 500 and
5,000 devices, the rest in organisations of 20. Statistics are brought up to date after the load
(``ANALYZE``, as autovacuum would). For each of the three organisations, the median of 5
requests of ``MongoDevices.find`` with the list's default limit (100), sorted by serial: what
``GET /devices`` runs for its admin; and that time per device of the organisation. FerretDB sorts
only after reading every document the filter selects, so the time grows with that count, not
with the limit. An agent's list without an organisation filter selects every device; it is not
timed here (at 1,000,000 devices one request would take minutes). Each figure on a
``BENCH <name> <value> <unit>`` line.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.devices.adapters.store import DEVICES, INDEXES, MongoDevices  # noqa: E402
from services.devices.core.model import Device, HistoryEntry  # noqa: E402
from tests.perf.servers import bench_line as bench  # noqa: E402
from tests.perf.servers import insert_side_by_side, median_ms, run_on_loaded_database  # noqa: E402

DOCS = int(os.environ.get("BENCH_DEVICES_LIST", "1000000"))
SIZES = (50, 500, 5000)
LIMIT = 100
REPEATS = 5
NOW = datetime.now(UTC)


def progress(text: str) -> None:
    print(f"[bench_devices_list] {text}", file=sys.stderr, flush=True)


def org_of(n: int) -> str:
    """Organisations of SIZES first, then of 20 devices each."""
    first = 0
    for size in SIZES:
        if n < first + size:
            return f"org-{size}"
        first += size
    return f"org-small-{(n - first) // 20}"


def device_doc(n: int) -> dict[str, Any]:
    device = Device(
        device_id=f"dev-{n:07d}",
        org_id=org_of(n),
        serial=f"SN{(n * 7919) % 10_000_000:07d}",  # not in insertion order
        model="bizhub C300i",
        model_family="mfp",
        name=f"Printer {n}",
        manager_ids=[f"user-{n % 1000}"],
    )
    doc = device.model_dump(exclude={"device_id"})
    doc["_id"] = device.device_id
    doc["history"] = [HistoryEntry(at=NOW, by=None, action="created", revision=1).model_dump()]
    return doc


async def load(db: Any) -> None:
    collection = db[DEVICES]
    await collection.create_indexes(INDEXES[DEVICES])
    await insert_side_by_side(
        collection,
        (device_doc(n) for n in range(DOCS)),
        progress=lambda n, rate: progress(f"{n:,}/{DOCS:,} devices ({rate:,.0f} docs/s)"),
    )


async def measure(db: Any) -> None:
    devices = MongoDevices(db, lambda _: None)
    for size in SIZES:
        progress(f"an organisation with {size:,} devices")

        async def one_org(org_id: str = f"org-{size}", size: int = size) -> None:
            found = await devices.find({"org_id": org_id}, LIMIT)
            assert len(found) == min(LIMIT, size), len(found)

        taken = await median_ms(one_org, REPEATS)
        bench(f"devices_list_org_{size}", taken, "ms")
        bench(f"devices_list_org_{size}_per_device", taken / size * 1000, "us")


def main() -> int:
    progress(f"{DOCS:,} devices; organisations of {', '.join(map(str, SIZES))} and of 20")
    return run_on_loaded_database(
        "fleetdesk-bench-devices-list-", "bench_devices_list", load, measure, progress
    )


if __name__ == "__main__":
    sys.exit(main())
