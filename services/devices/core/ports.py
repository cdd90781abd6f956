"""The ports of the devices core: what it needs from storage and the outside, as Protocols.

Adapters (MongoDB, Kafka) implement them; the domain tests implement them with fakes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from services.devices.core.model import Device, HistoryEntry
from services.devices.core.replenishment import DeviceLevels
from shared.contracts import SupplyOrderRaised

Document = dict[str, Any]


@dataclass(frozen=True)
class DeviceRef:
    """What the telemetry consumer needs to know of a device (an in-memory projection)."""

    device_id: str
    org_id: str
    serial: str
    auto_replenishment: bool
    removed: bool


class DeviceDirectory(Protocol):
    """Serial -> device, answered from memory (never a query per message)."""

    async def ready(self) -> None:
        """Return once the directory has caught up with what existed at start."""
        ...

    def by_serial(self, serial: str) -> DeviceRef | None: ...


@dataclass(frozen=True)
class LevelChange:
    """One stored change of a device's levels (the level history; one per device and batch)."""

    device_id: str
    seq: int
    at: datetime
    levels: dict[str, int]
    state: DeviceLevels


class LevelStore(Protocol):
    """The level history and the latest levels per device (which it is rebuilt from)."""

    async def load_all(self) -> dict[str, DeviceLevels]:
        """The latest stored state of every device (after a start or a partition move)."""
        ...

    async def append(self, changes: Sequence[LevelChange]) -> None:
        """Store the changes of one batch in one bulk write; a re-delivered one is ignored."""
        ...


class SupplyOrders(Protocol):
    async def raise_once(self, orders: Sequence[SupplyOrderRaised]) -> dict[str, tuple[str, bool]]:
        """Insert each order unless its id exists (once per need, with its event in the
        outbox). Returns order id -> (action of the order that stands, inserted just now)."""
        ...

    async def close(self, order_ids: Iterable[str], at: datetime) -> None:
        """Mark needs closed (a new cartridge); once-only, re-delivery changes nothing."""
        ...


class Stock(Protocol):
    async def on_hand(self, keys: Iterable[tuple[str, str]]) -> Mapping[tuple[str, str], int]:
        """Units on hand per (device_id, consumable)."""
        ...

    async def use_units(self, uses: Sequence[tuple[str, str, int, datetime]]) -> None:
        """Record that a unit on hand was installed: (device, consumable, generation, at);
        once per generation."""
        ...


class SerialTaken(Exception):
    """A device with this serial number exists."""


class DeviceRepository(Protocol):
    """The devices, each written together with its state event and its history entry."""

    async def get(self, device_id: str) -> Device | None: ...

    async def create(self, device: Device, entry: HistoryEntry) -> None:
        """Insert; raises :class:`SerialTaken` when the serial exists."""
        ...

    async def create_many(self, devices: Sequence[tuple[Device, HistoryEntry]]) -> set[int]:
        """Insert many (one bulk write); the positions refused because the serial exists."""
        ...

    async def save(self, before: Device, after: Device, entry: HistoryEntry) -> bool:
        """Write ``after`` if the device is still at ``before.revision``; False otherwise."""
        ...

    async def history(self, device_id: str) -> list[HistoryEntry] | None: ...

    async def known_organisations(self, org_ids: Iterable[str]) -> set[str]: ...
