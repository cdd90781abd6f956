"""In-memory fakes of the devices core's ports, for the domain tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from services.devices.core.model import Device, HistoryEntry
from services.devices.core.ports import DeviceRef, LevelChange, SerialTaken
from services.devices.core.replenishment import DeviceLevels, Policy
from services.devices.core.telemetry import LevelsProjection, TelemetryDeps
from shared.contracts import SupplyOrderRaised, TelemetryReport

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


class FakeDirectory:
    def __init__(self, *refs: DeviceRef) -> None:
        self.refs = {r.serial: r for r in refs}

    async def ready(self) -> None:
        return None

    def by_serial(self, serial: str) -> DeviceRef | None:
        return self.refs.get(serial)


@dataclass
class FakeLevelStore:
    docs: dict[tuple[str, int], LevelChange] = field(default_factory=dict)
    appends: list[int] = field(default_factory=list)
    fail_next: bool = False

    async def load_all(self) -> dict[str, DeviceLevels]:
        latest: dict[str, LevelChange] = {}
        for change in self.docs.values():
            if change.device_id not in latest or change.seq > latest[change.device_id].seq:
                latest[change.device_id] = change
        return {d: c.state for d, c in latest.items()}

    async def append(self, changes: Sequence[LevelChange]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("database went away")
        self.appends.append(len(changes))
        for c in changes:
            self.docs.setdefault((c.device_id, c.seq), c)


@dataclass
class FakeOrders:
    orders: dict[str, SupplyOrderRaised] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)

    async def raise_once(self, orders: Sequence[SupplyOrderRaised]) -> dict[str, tuple[str, bool]]:
        result = {}
        for o in orders:
            inserted = o.order_id not in self.orders
            self.orders.setdefault(o.order_id, o)
            result[o.order_id] = (self.orders[o.order_id].action.value, inserted)
        return result

    async def close(self, order_ids: Iterable[str], at: datetime) -> None:
        self.closed |= set(order_ids)


@dataclass
class FakeStock:
    on_hand_units: dict[tuple[str, str], int] = field(default_factory=dict)
    used: set[tuple[str, str, int]] = field(default_factory=set)

    async def on_hand(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        return {
            k: max(0, self.on_hand_units.get(k, 0) - sum(1 for u in self.used if u[:2] == k))
            for k in keys
        }

    async def use_units(self, uses: Sequence[tuple[str, str, int, datetime]]) -> None:
        self.used |= {(d, c, g) for d, c, g, _ in uses}


@dataclass
class World:
    directory: FakeDirectory
    store: FakeLevelStore
    orders: FakeOrders
    stock: FakeStock
    policy: Policy
    levels: LevelsProjection

    def deps(self) -> TelemetryDeps:
        return TelemetryDeps(
            self.directory, self.levels, self.store, self.orders, self.stock, self.policy
        )

    def restart(self) -> None:
        """A new process: memory gone, the store kept."""
        self.levels = LevelsProjection(self.store)


def world(*refs: DeviceRef, policy: Policy | None = None) -> World:
    store = FakeLevelStore()
    return World(
        FakeDirectory(*refs),
        store,
        FakeOrders(),
        FakeStock(),
        policy or Policy(),
        LevelsProjection(store),
    )


def ref(n: int = 1, *, auto: bool = True, removed: bool = False) -> DeviceRef:
    return DeviceRef(f"dev{n}", "org1", f"SN{n}", auto, removed)


def report(serial: str, hours: float, **supplies: int) -> TelemetryReport:
    return TelemetryReport(serial=serial, sent_at=T0 + timedelta(hours=hours), supplies=supplies)


@dataclass
class FakeDevices:
    """:class:`DeviceRepository` in memory (revision-guarded like the real one)."""

    devices: dict[str, Device] = field(default_factory=dict)
    histories: dict[str, list[HistoryEntry]] = field(default_factory=dict)
    orgs: set[str] = field(default_factory=lambda: {"org1", "org2"})
    states: list[tuple[str, int]] = field(default_factory=list)
    interfere: int = 0  # how many next saves lose to a concurrent writer

    async def get(self, device_id: str) -> Device | None:
        return self.devices.get(device_id)

    async def create(self, device: Device, entry: HistoryEntry) -> None:
        if any(d.serial == device.serial for d in self.devices.values()):
            raise SerialTaken(device.serial)
        self.devices[device.device_id] = device
        self.histories[device.device_id] = [entry]
        self.states.append((device.device_id, device.revision))

    async def create_many(self, devices: Sequence[tuple[Device, HistoryEntry]]) -> set[int]:
        refused = set()
        for i, (d, e) in enumerate(devices):
            try:
                await self.create(d, e)
            except SerialTaken:
                refused.add(i)
        return refused

    async def save(self, before: Device, after: Device, entry: HistoryEntry) -> bool:
        if self.interfere:
            self.interfere -= 1
            current = self.devices[before.device_id]
            self.devices[before.device_id] = current.model_copy(
                update={"revision": current.revision + 1}
            )
            return False
        if self.devices[before.device_id].revision != before.revision:
            return False
        self.devices[after.device_id] = after
        self.histories[after.device_id].append(entry)
        self.states.append((after.device_id, after.revision))
        return True

    async def history(self, device_id: str) -> list[HistoryEntry] | None:
        return self.histories.get(device_id)

    async def known_organisations(self, org_ids: Iterable[str]) -> set[str]:
        return set(org_ids) & self.orgs
