"""The servers a bench runs against: the ones named by ``FLEETDESK_TEST_*``, else local ones.

Every bench under ``tests/perf`` calls :func:`run_bench` with its coroutine; local servers
(``deploy/local/infra.py``: Kafka with SASL, FerretDB on PostgreSQL) are started in a fresh
temporary folder and stopped afterwards, and the bench connects to Kafka as the super user.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from pymongo import AsyncMongoClient

from shared.config import KafkaSettings
from shared.service import use_uvloop

ROOT = Path(__file__).resolve().parents[2]


def bench_line(name: str, value: float, unit: str) -> None:
    """One figure as every bench prints it: ``BENCH <name> <value> <unit>``. Counts as they
    are; ratios with two decimals (0.26 is not 0.3); other figures with one decimal from 10
    up, below that with three significant digits (a lateness of 0.020 s is not 0.0)."""
    if isinstance(value, int):
        shown = str(value)
    elif unit == "ratio":
        shown = f"{value:.2f}"
    elif abs(value) >= 10:
        shown = f"{value:.1f}"
    else:
        shown = f"{value:.3g}"
    print(f"BENCH {name} {shown} {unit}", flush=True)


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative CPU seconds per process (pid: (name, seconds)), the machine's busy seconds
    over all its cores, and the clock."""

    processes: dict[int, tuple[str, float]]
    machine: float
    wall: float


class CpuMeter:
    """CPU seconds used by this process (named ``bench``) and by the servers it started (its
    descendants: ``java`` is Kafka, ``ferretdb``, ``postgres``), and by the whole machine.
    With servers named by ``FLEETDESK_TEST_*`` only this process is measured."""

    def __init__(self) -> None:
        self._me = psutil.Process()

    def snapshot(self) -> CpuSnapshot:
        times = self._me.cpu_times()
        processes = {self._me.pid: ("bench", times.user + times.system)}
        for child in self._me.children(recursive=True):
            try:
                t = child.cpu_times()
                processes[child.pid] = (child.name(), t.user + t.system)
            except psutil.Error:
                continue  # gone meanwhile
        cores = psutil.cpu_times()
        busy = cores.user + cores.system + cores.nice + cores.irq + cores.softirq
        return CpuSnapshot(processes, busy, time.perf_counter())

    @staticmethod
    def report(prefix: str, before: CpuSnapshot, after: CpuSnapshot, items: int) -> None:
        """Microseconds of CPU per item for each process name, and how busy the machine's
        cores were (percent of all of them). A process that ended in between is not counted
        (a PostgreSQL backend of a closed connection); one that started is counted whole."""
        spent: dict[str, float] = {}
        for pid, (name, seconds) in after.processes.items():
            earlier = before.processes.get(pid, (name, 0.0))[1]
            spent[name] = spent.get(name, 0.0) + seconds - earlier
        for name in sorted(spent):
            if spent[name] > 0:
                bench_line(f"{prefix}_cpu_{name}", spent[name] / items * 1e6, "us/report")
        cores = psutil.cpu_count() or 1
        busy = (after.machine - before.machine) / ((after.wall - before.wall) * cores)
        bench_line(f"{prefix}_cpu_machine_busy", busy * 100, "percent")


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh temporary folder, removed when the block ends well; kept (and its path printed)
    when it fails, for its logs. Local servers keep their data here: a run of the meters bench
    leaves some hundreds of megabytes, and kept runs once filled the disk."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    except BaseException:
        print(f"kept for inspection: {path}", file=sys.stderr, flush=True)
        raise
    shutil.rmtree(path, ignore_errors=True)


def local_infra_module() -> Any:
    """``deploy/local/infra.py`` imported by path (``deploy`` is not a package)."""
    name = "fleetdesk_local_infra"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "deploy/local/infra.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


async def insert_side_by_side(
    collection: Any,
    docs: Iterable[Any],
    *,
    chunk: int = 1000,
    side_by_side: int = 4,
    progress: Callable[[int, float], None] | None = None,
) -> float:
    """Insert ``docs`` with ``insert_many`` in chunks, ``side_by_side`` chunks at a time (as the
    meters worker writes); ``progress(inserted, docs per second)`` after every 100,000 and at
    the end. Returns the seconds it took."""
    started, done, every = time.perf_counter(), 0, 100_000
    it = iter(docs)
    while batch := list(itertools.islice(it, chunk * side_by_side)):
        await asyncio.gather(
            *(
                collection.insert_many(batch[s : s + chunk], ordered=False)
                for s in range(0, len(batch), chunk)
            )
        )
        before, done = done, done + len(batch)
        if progress is not None and done // every > before // every:
            progress(done, done / (time.perf_counter() - started))
    elapsed = time.perf_counter() - started
    if progress is not None and done % every:
        progress(done, done / elapsed)
    return elapsed


# New local servers are not settled for their first minute or so: two baselines of the meters
# bench right after start cost PostgreSQL 14-15 µs a document, the same after 75 s of quiet 7.5
# (cause not found; not only autovacuum, not statistics, not new connections). A bench that
# compares two runs on the same servers waits this long before the first.
SETTLE_SECONDS = float(os.environ.get("BENCH_SETTLE_SECONDS", "75"))


async def let_servers_settle() -> None:
    """Wait ``BENCH_SETTLE_SECONDS`` (75 by default) with the servers quiet, saying so."""
    print(f"letting the servers settle for {SETTLE_SECONDS:.0f} s", flush=True)
    await asyncio.sleep(SETTLE_SECONDS)


async def median_ms(fn: Callable[[], Awaitable[Any]], repeats: int) -> float:
    """The median of ``repeats`` awaits of ``fn()``, in milliseconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def start_local_infra(stack: contextlib.ExitStack, prefix: str, **options: Any) -> Any:
    """``deploy/local/infra.py``'s servers (``LocalInfra`` with ``options``, free ports) started
    in a :func:`scratch_dir`; when ``stack`` closes they are stopped, then their folder goes."""
    module = local_infra_module()
    infra = module.LocalInfra(
        stack.enter_context(scratch_dir(prefix)), module.free_port(), module.free_port(), **options
    )
    stack.callback(infra.stop)  # stopped before its folder goes
    infra.start()
    return infra


def run_on_loaded_database(
    prefix: str,
    database: str,
    load: Callable[[Any], Awaitable[None]],
    measure: Callable[[Any], Awaitable[None]],
    progress: Callable[[str], None],
    limit_seconds: float = 1800,
) -> int:
    """A bench of queries on a large collection: local PostgreSQL and FerretDB (no Kafka) in a
    :func:`scratch_dir`, ``load(db)``, PostgreSQL's statistics brought up to date (as its
    autovacuum would soon after a large load), then ``measure(db)``, all within
    ``limit_seconds``; returns an exit code."""

    async def run(infra: Any) -> None:
        client: AsyncMongoClient[Any] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
        try:
            db = client[database]
            await load(db)
            progress("statistics (ANALYZE, as autovacuum would)")
            await asyncio.to_thread(infra.analyze)
            await measure(db)
        finally:
            await client.close()

    with contextlib.ExitStack() as stack:
        infra = start_local_infra(stack, prefix, kafka=False)
        asyncio.run(asyncio.wait_for(run(infra), limit_seconds))
    return 0


def run_bench(
    bench: Callable[[KafkaSettings, str], Awaitable[None]],
    limit_seconds: float,
    *,
    prefix: str = "fleetdesk-bench-",
) -> int:
    """Run ``bench(kafka settings, mongo url)`` within ``limit_seconds``; return an exit code."""
    bootstrap = os.environ.get("FLEETDESK_TEST_KAFKA_BOOTSTRAP")
    mongo_url = os.environ.get("FLEETDESK_TEST_MONGO_URL")
    # Named servers: security as FLEETDESK_KAFKA_* say; local ones: SASL, as the super user.
    kafka = KafkaSettings(bootstrap_servers=bootstrap) if bootstrap else None
    with contextlib.ExitStack() as stack:
        if not (kafka and mongo_url):
            infra = start_local_infra(stack, prefix)
            kafka, mongo_url = infra.kafka_admin(), infra.mongo_url
        use_uvloop()  # as the services run (shared.service.serve)
        asyncio.run(asyncio.wait_for(bench(kafka, mongo_url), limit_seconds))
    return 0
