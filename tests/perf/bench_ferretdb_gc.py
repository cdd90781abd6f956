"""What FerretDB's Go garbage collector costs under the meters worker's inserts, by GOGC.

    python tests/perf/bench_ferretdb_gc.py                  # GOGC 100 (Go's default) and 400
    BENCH_GOGC=100,400,1000 BENCH_DOCS=60000 python tests/perf/bench_ferretdb_gc.py

One ``deploy/local`` database server (PostgreSQL + patched FerretDB, no Kafka) per GOGC value,
started as ``make run`` starts it (``FLEETDESK_LOCAL_FERRETDB_GOGC``), all running at once. In
each round every server gets, in turn, ``BENCH_DOCS`` readings shaped as the worker stores them
(eight fields, the history's index) in ``insert_many`` chunks of 1,000, four side by side (the
worker's defaults). Printed per GOGC: FerretDB's CPU per document (its process, all rounds),
documents per second, and its peak resident memory; and the CPU ratio of each value to the
first. Rounds alternate the servers, so the machine's noise falls on all of them alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.meters.adapters.store import INDEXES, READINGS  # noqa: E402
from tests.perf.servers import bench_line as bench  # noqa: E402
from tests.perf.servers import (  # noqa: E402
    insert_side_by_side,
    local_infra_module,
    start_local_infra,
)

VALUES = [v.strip() for v in os.environ.get("BENCH_GOGC", "100,400").split(",") if v.strip()]
DOCS = int(os.environ.get("BENCH_DOCS", "60000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def readings(n: int, tag: str) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        {
            "_id": f"emaintenance.telemetry:{i % 6}:{tag}{i}",
            "device_id": f"dev-{secrets.token_hex(8)}",
            "org_id": f"org-{i % 50}",
            "serial": f"BENCH-{i}",
            "source": "emaintenance",
            "counters": {"total": 10_000 + i, "colour": 4_000 + i, "scan": i % 500},
            "read_at": now - timedelta(seconds=i),
            "accepted_at": now,
        }
        for i in range(n)
    ]


async def insert_round(client: AsyncMongoClient[Any], name: str, docs: list[Any]) -> float:
    """Seconds to insert ``docs`` into a new indexed collection as the worker does."""
    collection = client["bench_gc"][name]
    await collection.create_indexes(INDEXES[READINGS])
    return await insert_side_by_side(collection, docs)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def measure(servers: dict[str, tuple[str, psutil.Process]]) -> None:
    clients: dict[str, AsyncMongoClient[Any]] = {
        v: AsyncMongoClient(url, maxPoolSize=16) for v, (url, _) in servers.items()
    }
    cpu = dict.fromkeys(servers, 0.0)
    elapsed = dict.fromkeys(servers, 0.0)
    try:
        for n in range(ROUNDS):
            for value, (_, process) in servers.items():
                docs = readings(DOCS, secrets.token_hex(2))
                before = cpu_seconds(process)
                seconds = await insert_round(clients[value], f"r{n}", docs)
                cpu[value] += cpu_seconds(process) - before
                elapsed[value] += seconds
                print(
                    f"round {n + 1}/{ROUNDS} GOGC={value}: {DOCS / seconds:,.0f} docs/s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for client in clients.values():
            await client.close()
    total = DOCS * ROUNDS
    first = VALUES[0]
    for value, (_, process) in servers.items():
        bench(f"ferretdb_gogc_{value}_cpu_per_doc", cpu[value] / total * 1e6, "us")
        bench(f"ferretdb_gogc_{value}_insert_rate", total / elapsed[value], "docs/s")
        peak = _peak_rss_mb(process)
        if peak is not None:
            bench(f"ferretdb_gogc_{value}_peak_rss", peak, "MB")
        if value != first:
            bench(f"ferretdb_gogc_{value}_vs_{first}_cpu", cpu[value] / cpu[first], "ratio")


def _peak_rss_mb(process: psutil.Process) -> float | None:
    """VmHWM (Linux): the most the process held resident since it started."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def main() -> int:
    print(
        f"GOGC {', '.join(VALUES)}: {ROUNDS} rounds of {DOCS:,} readings each",
        file=sys.stderr,
        flush=True,
    )
    with contextlib.ExitStack() as stack:
        servers: dict[str, tuple[str, psutil.Process]] = {}
        infra_module = local_infra_module()
        for value in VALUES:
            os.environ[infra_module.GOGC_VARIABLE] = value  # read when FerretDB starts
            infra = start_local_infra(stack, f"fleetdesk-bench-gogc{value}-", kafka=False)
            servers[value] = (infra.mongo_url, psutil.Process(infra.procs["ferretdb"].pid))
        asyncio.run(asyncio.wait_for(measure(servers), 1800))
    return 0


if __name__ == "__main__":
    sys.exit(main())
