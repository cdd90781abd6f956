"""The servers a bench runs against: the ones named by ``FLEETDESK_TEST_*``, else local ones.

Every bench under ``tests/perf`` calls :func:`run_bench` with its coroutine; local servers
(``deploy/local/infra.py``: Kafka with SASL, FerretDB on PostgreSQL) are started in a fresh
temporary folder and stopped afterwards, and the bench connects to Kafka as the super user.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

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


def run_bench(
    bench: Callable[[KafkaSettings, str], Awaitable[None]],
    limit_seconds: float,
    *,
    prefix: str = "fleetdesk-bench-",
) -> int:
    """Run ``bench(kafka settings, mongo url)`` within ``limit_seconds``; return an exit code."""
    bootstrap = os.environ.get("FLEETDESK_TEST_KAFKA_BOOTSTRAP")
    mongo_url = os.environ.get("FLEETDESK_TEST_MONGO_URL")
    infra = None
    # Named servers: security as FLEETDESK_KAFKA_* say; local ones: SASL, as the super user.
    kafka = KafkaSettings(bootstrap_servers=bootstrap) if bootstrap else None
    if not (kafka and mongo_url):
        module = local_infra_module()
        infra = module.LocalInfra(
            Path(tempfile.mkdtemp(prefix=prefix)), module.free_port(), module.free_port()
        )
        infra.start()
        kafka, mongo_url = infra.kafka_admin(), infra.mongo_url
    use_uvloop()  # as the services run (shared.service.serve)
    try:
        asyncio.run(asyncio.wait_for(bench(kafka, mongo_url), limit_seconds))
    finally:
        if infra is not None:
            infra.stop()
    return 0
