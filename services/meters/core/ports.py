"""What the meters core needs from the outside world: small Protocols, real or fake."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from services.meters.core.model import Device, Reading
from shared.contracts import ReadingSource, ReadingSubmitted


class DeviceDirectory(Protocol):
    """Devices by id and by serial, with their organisation's time zone (in memory)."""

    def device(self, device_id: str) -> Device | None: ...

    def by_serial(self, serial: str) -> Device | None: ...


class CommandBus(Protocol):
    """Routes a submission to the owner of the device's partition."""

    async def submit(self, cmd: ReadingSubmitted) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """The partition owner's decision on one submission."""

    command_id: str
    accepted: bool
    reading: dict[str, Any] | None = None
    refusals: list[dict[str, Any]] = field(default_factory=list)


class Decisions(Protocol):
    """Where the HTTP side waits for the partition owner's decision."""

    async def wait(self, command_id: str, timeout: float) -> Outcome | None: ...


class ReadingHistory(Protocol):
    async def page(
        self,
        device_id: str,
        *,
        source: ReadingSource | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        offset: int,
    ) -> list[Reading]: ...

    async def since(self, device_id: str, since: datetime | None) -> list[Reading]: ...
