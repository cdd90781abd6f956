"""What the meters worker's table costs at fleet scale: memory and a full garbage collection.

    python tests/perf/bench_meters_state.py            # 1,000,000 device states
    BENCH_STATES=200000 python tests/perf/bench_meters_state.py

Each device's validation state is built the way the worker builds it (``DeviceMemory`` to its
dict, then JSON for the changelog) and kept in one of three ways, each in its own process:
- ``dicts``: the decoded dict (what the table held until it kept bytes);
- ``orjson``: the bytes ``orjson.dumps`` returns, kept as they are;
- ``bytes``: a copy of those bytes of exactly their size (what the table keeps now).
For each: the resident memory the states added and the time of one full collection
(``gc.collect()``). Each figure on a ``BENCH <name> <value> <unit>`` line. No servers.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.meters.core.model import DeviceMemory  # noqa: E402
from tests.perf.servers import bench_line as bench  # noqa: E402

STATES = int(os.environ.get("BENCH_STATES", "1000000"))
WAYS = ("dicts", "orjson", "bytes")


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def keep(way: str) -> None:
    """Build and keep STATES states one way; print the figures."""
    before = resident_mb()
    table: dict[bytes, object] = {}
    for i in range(STATES):
        memory = DeviceMemory(
            counters={"total": 1000 + i, "colour": i // 3, "scan": i % 97},
            read_at="2026-11-27T10:00:00.123456+00:00",
            last_seen=1764237600.123,
            positions={"t": i},
        )
        value = orjson.dumps(memory.to_dict())
        key = f"SN-{i:08d}".encode()
        if way == "dicts":
            table[key] = orjson.loads(value)
        elif way == "orjson":
            table[key] = value
        else:
            table[key] = memoryview(value).tobytes()
        if i and i % 250_000 == 0:
            print(f"  {way}: {i:,} states", flush=True)
    added = resident_mb() - before
    started = time.perf_counter()
    gc.collect()
    collection = (time.perf_counter() - started) * 1000
    bench(f"meters_state_{way}_memory", added, "MB")
    bench(f"meters_state_{way}_full_collection", collection, "ms")


def main() -> int:
    if len(sys.argv) > 1:
        keep(sys.argv[1])
        return 0
    print(f"states: {STATES:,}", flush=True)
    for way in WAYS:  # each in a fresh process: memory one way does not hide the next
        subprocess.run([sys.executable, __file__, way], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
