"""Serial -> device in memory, for the telemetry consumer (no lookup per message).

Filled at start from the service's own ``devices`` collection (one read), then kept current by
every write of this process (``apply``) and, for writes of other instances, by following the
compacted ``devices.devices.state`` topic from the end it had at start (a group-less reader:
every instance needs every device). The highest revision of a device wins, so the three
sources can arrive in any order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiokafka import TopicPartition

from services.devices.core.ports import DeviceRef
from shared.bus import new_consumer
from shared.config import KafkaSettings
from shared.contracts import DEVICES, DeviceState
from shared.events import parse_json
from shared.logging import get_logger

log = get_logger(__name__)


class Directory:
    """:class:`services.devices.core.ports.DeviceDirectory` in memory."""

    def __init__(self) -> None:
        self._by_serial: dict[str, DeviceRef] = {}
        self._revision: dict[str, int] = {}
        self._ready = asyncio.Event()

    def apply(
        self,
        *,
        device_id: str,
        org_id: str,
        serial: str,
        auto_replenishment: bool,
        removed: bool,
        revision: int,
    ) -> None:
        if self._revision.get(device_id, 0) > revision:
            return
        self._revision[device_id] = revision
        self._by_serial[serial] = DeviceRef(device_id, org_id, serial, auto_replenishment, removed)

    def apply_state(self, state: DeviceState) -> None:
        self.apply(
            device_id=state.device_id,
            org_id=state.org_id,
            serial=state.serial,
            auto_replenishment=state.auto_replenishment,
            removed=state.removed,
            revision=state.revision,
        )

    def mark_ready(self) -> None:
        self._ready.set()

    async def ready(self) -> None:
        await self._ready.wait()

    def by_serial(self, serial: str) -> DeviceRef | None:
        return self._by_serial.get(serial)

    def __len__(self) -> int:
        return len(self._by_serial)


async def follow_state_topic(
    directory: Directory,
    settings: KafkaSettings,
    load: Callable[[], Awaitable[None]],
    stopping: asyncio.Event,
) -> None:
    """Load from the database, then follow the state topic from where it stood before."""
    consumer = new_consumer(
        settings,
        group_id=None,
        client_id="devices-directory",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        partitions: set[int] | None = None
        while not partitions and not stopping.is_set():
            await consumer.topics()
            partitions = consumer.partitions_for_topic(DEVICES.name)
            if not partitions:
                await asyncio.sleep(0.5)
        tps = [TopicPartition(DEVICES.name, p) for p in sorted(partitions or ())]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, ends[tp])
        await load()
        directory.mark_ready()
        while not stopping.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=1000)
            for records in batch.values():
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        directory.apply_state(parse_json(DeviceState, record.value))
                    except ValueError as exc:
                        log.warning("unreadable device state", error=str(exc)[:200])
    finally:
        await consumer.stop()


async def run_follower(
    directory: Directory,
    settings: KafkaSettings,
    load: Callable[[], Awaitable[None]],
    stopping: asyncio.Event,
) -> None:
    """Keep following; restart with backoff when the broker goes away."""
    delay = 0.5
    while not stopping.is_set():
        try:
            await follow_state_topic(directory, settings, load, stopping)
        except Exception as exc:
            log.error("device directory follower failed; restarting", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            delay = min(delay * 2, 30.0)
