"""A meters ingestion worker as its own process, for the crash and scale-out tests.

    python -m tests.integration.meters_worker   # settings from FLEETDESK_* and METERS_TEST_*

Runs until SIGTERM (a graceful stop) or SIGKILL (a crash).
"""

from __future__ import annotations

import asyncio
import os
import signal

from services.meters.config import MetersSettings
from services.meters.inject import ingestion
from shared.bus import Publisher
from shared.store import Mongo


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
    asyncio.run(main())
