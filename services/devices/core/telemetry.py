"""Process one batch of eMaintenance reports: the ``ProcessTelemetry`` use case.

Per batch: map serials to devices from memory, coalesce per device, fold the levels
(:mod:`.replenishment`), raise each need's order once, close needs of replaced cartridges,
count the units taken from stock, and store the changed devices in one bulk write. The
in-memory levels are updated only after everything is stored, so a failed batch is simply
tried again from the same state (and re-raising an order is refused by its unique id).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from services.devices.core.ports import (
    DeviceDirectory,
    DeviceRef,
    LevelChange,
    LevelStore,
    Stock,
    SupplyOrders,
)
from services.devices.core.replenishment import (
    CartridgeReplaced,
    DeviceLevels,
    NeedRaised,
    Policy,
    fold_reports,
    mark_ordered,
)
from shared.contracts import SupplyAction, SupplyOrderRaised, TelemetryReport


def order_id(device_id: str, consumable: str, generation: int) -> str:
    """The unique key of one need: a device's consumable in one cartridge cycle."""
    return f"{device_id}:{consumable}:{generation}"


class LevelsProjection:
    """The latest levels of every device in memory, rebuilt from the store when stale."""

    def __init__(self, store: LevelStore) -> None:
        self._store = store
        self._states: dict[str, DeviceLevels] = {}
        self._loaded = False

    def invalidate(self) -> None:
        """Another consumer may have written meanwhile (a partition moved): reload first."""
        self._loaded = False

    async def ensure_loaded(self) -> None:
        if not self._loaded:
            self._states = await self._store.load_all()
            self._loaded = True

    def get(self, device_id: str) -> DeviceLevels:
        return self._states.get(device_id) or DeviceLevels()

    def put(self, device_id: str, state: DeviceLevels) -> None:
        self._states[device_id] = state

    def __len__(self) -> int:
        return len(self._states)


@dataclass
class TelemetryOutcome:
    """What one batch did, for metrics and tests."""

    counts: Counter[str] = field(default_factory=Counter)
    orders: list[SupplyOrderRaised] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TelemetryDeps:
    directory: DeviceDirectory
    levels: LevelsProjection
    store: LevelStore
    orders: SupplyOrders
    stock: Stock
    policy: Policy


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


async def process_telemetry(
    reports: Sequence[TelemetryReport], deps: TelemetryDeps, now: datetime
) -> TelemetryOutcome:
    outcome = TelemetryOutcome()
    await deps.directory.ready()
    await deps.levels.ensure_loaded()

    by_device: dict[str, tuple[DeviceRef, list[tuple[float, dict[str, int]]]]] = {}
    for report in reports:
        ref = deps.directory.by_serial(report.serial)
        if ref is None:
            outcome.counts["unknown_device"] += 1
            continue
        if ref.removed:
            outcome.counts["removed_device"] += 1
            continue
        outcome.counts["accepted"] += 1
        entry = by_device.setdefault(ref.device_id, (ref, []))
        entry[1].append((report.sent_at.timestamp(), dict(report.supplies)))

    folded: dict[str, tuple[DeviceRef, DeviceLevels, DeviceLevels]] = {}
    needs: list[tuple[DeviceRef, NeedRaised]] = []
    replaced: list[tuple[DeviceRef, CartridgeReplaced]] = []
    for device_id, (ref, device_reports) in by_device.items():
        before = deps.levels.get(device_id)
        after, effects, skipped = fold_reports(
            before, device_reports, deps.policy, may_order=ref.auto_replenishment
        )
        outcome.counts["duplicate"] += skipped
        for effect in effects:
            if isinstance(effect, NeedRaised):
                needs.append((ref, effect))
            else:
                replaced.append((ref, effect))
        folded[device_id] = (ref, before, after)

    # Units used first: an order in the same batch must see the stock without them.
    if replaced:
        closing = [
            order_id(ref.device_id, r.consumable, r.closed_generation)
            for ref, r in replaced
            if r.was_ordered
        ]
        if closing:
            await deps.orders.close(closing, now)
            outcome.closed.extend(closing)
        uses = [
            (ref.device_id, r.consumable, r.closed_generation, _utc(r.at))
            for ref, r in replaced
            if r.order_action == SupplyAction.INSTALL_ON_HAND.value
        ]
        if uses:
            await deps.stock.use_units(uses)
        outcome.counts["replaced"] += len(replaced)

    if needs:
        on_hand = await deps.stock.on_hand((ref.device_id, n.consumable) for ref, n in needs)
        orders = [
            SupplyOrderRaised(
                order_id=order_id(ref.device_id, need.consumable, need.generation),
                device_id=ref.device_id,
                org_id=ref.org_id,
                serial=ref.serial,
                consumable=need.consumable,
                level=need.level,
                days_to_empty=None if need.days_to_empty is None else round(need.days_to_empty, 2),
                action=SupplyAction.INSTALL_ON_HAND
                if on_hand.get((ref.device_id, need.consumable), 0) > 0
                else SupplyAction.SHIPMENT,
                raised_at=now,
            )
            for ref, need in needs
        ]
        standing = await deps.orders.raise_once(orders)
        for order in orders:
            ref, before, after = folded[order.device_id]
            action, inserted = standing.get(order.order_id, (order.action.value, False))
            tracks = dict(after.tracks)
            tracks[order.consumable] = mark_ordered(tracks[order.consumable], action)
            folded[order.device_id] = (ref, before, replace(after, tracks=tracks))
            if inserted:
                outcome.orders.append(order)
        outcome.counts["orders"] += len(outcome.orders)

    changes: list[LevelChange] = []
    for device_id, (_ref, before, after) in folded.items():
        if after.tracks == before.tracks:
            deps_state = after
        else:
            deps_state = replace(after, seq=before.seq + 1)
            changed = {
                c: (t.pending_level if t.pending_level is not None else t.level)
                for c, t in after.tracks.items()
                if before.tracks.get(c) != t
            }
            changes.append(
                LevelChange(device_id, deps_state.seq, _utc(after.last_at), changed, deps_state)
            )
        folded[device_id] = (_ref, before, deps_state)
    if changes:
        await deps.store.append(changes)
    outcome.counts["stored"] += len(changes)

    # Only now, with everything durable, does memory move on.
    for device_id, (_ref, _before, after) in folded.items():
        deps.levels.put(device_id, after)
    return outcome
