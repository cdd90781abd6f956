"""Memory and throughput of password hashing under a flood, bounded against unbounded.

    uv run python tests/perf/bench_password_hashing.py [requests]

Each configuration runs in a fresh process: ``requests`` concurrent verifications (a flood of
``/identity/token``) through ``services.identity.adapters.passwords.Passwords`` with the
production Argon2id costs (64 MiB each), and prints the process's peak resident memory
(``VmHWM``) and the hashes per second. ``unbounded`` gives every request its own thread, as a
pool as large as the flood would.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.perf.servers import bench_line as bench  # noqa: E402


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def flood(concurrency: int, requests: int) -> None:
    from services.identity.adapters.passwords import Passwords

    passwords = Passwords(concurrency, queue=requests)
    baseline = peak_rss_mib()
    started = time.perf_counter()
    await asyncio.gather(*(passwords.verify(None, f"guess-{i}") for i in range(requests)))
    elapsed = time.perf_counter() - started
    passwords.close()
    name = f"concurrency_{concurrency}"
    bench(f"hash_flood_{name}_peak_rss", peak_rss_mib(), "MiB")
    bench(f"hash_flood_{name}_rss_above_start", peak_rss_mib() - baseline, "MiB")
    bench(f"hash_flood_{name}_throughput", requests / elapsed, "hashes/s")
    bench(f"hash_flood_{name}_peak_hashes", passwords.peak, "hashes")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        concurrency, requests = int(sys.argv[2]), int(sys.argv[3])
        asyncio.run(flood(concurrency, requests))
        return
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 24
    for concurrency in (2, 4, requests):  # the last one: no bound at all
        subprocess.run(
            [sys.executable, __file__, "--one", str(concurrency), str(requests)],
            check=True,
            timeout=600,
        )


if __name__ == "__main__":
    main()
