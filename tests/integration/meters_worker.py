"""A meters ingestion worker as its own process, for the crash and scale-out tests.

    python -m tests.integration.meters_worker   # settings from FLEETDESK_* and METERS_TEST_*

Runs until SIGTERM (a graceful stop) or SIGKILL (a crash).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from services.meters.config import MetersSettings
from services.meters.inject import ingestion
from shared.bus import Publisher
from shared.service import use_uvloop
from shared.store import Mongo

ROOT = Path(__file__).resolve().parents[2]


def spawn(env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """This worker as its own process in its own session (so a test can signal the whole
    group), its output appended to ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.meters_worker"],
        cwd=ROOT,
        env=dict(env),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def main() -> None:
    settings = MetersSettings()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with (
        Mongo(settings.mongo, "meters") as mongo,
        Publisher(settings.kafka, "meters") as publisher,
        ingestion(
            settings,
            mongo.db,
            publisher,
            app_id=os.environ["METERS_TEST_APP_ID"],
            telemetry_topic=os.environ["METERS_TEST_TELEMETRY"],
            commands_topic=os.environ["METERS_TEST_COMMANDS"],
        ),
    ):
        print("worker started", flush=True)
        await stop.wait()
    print("worker stopped", flush=True)


if __name__ == "__main__":
    use_uvloop()  # as the service runs it (shared.service.serve)
    asyncio.run(main())
