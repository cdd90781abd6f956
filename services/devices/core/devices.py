"""The device use cases, one handler per command: register, locate, contract, stock, remove,
and the assignment changes learnt from identity.

Each change reads the device, checks the caller's scope (:mod:`.access`), computes the new
device and its history entry, and saves both with the state event in one write, guarded by
the revision it read (a concurrent change makes it read again, a bounded number of times).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.devices.core.access import Action, Caller, Decision, decide
from services.devices.core.model import (
    Contract,
    Device,
    DeviceCreate,
    HistoryEntry,
    Location,
    StockUpdate,
)
from services.devices.core.ports import DeviceRepository
from shared.contracts import DeviceStatus

SAVE_ATTEMPTS = 5


class DeviceNotFound(Exception):
    """No such device, or not one the caller may see."""


class NotAllowed(Exception):
    """The caller sees the device but may not do this."""


class UnknownOrganisation(Exception):
    """No organisation has this id (as far as the identity projection knows)."""


class ConcurrentChange(Exception):
    """The device kept changing under us."""


class ReplenishmentOff(Exception):
    """Stock is kept only for devices with automatic replenishment."""


@dataclass(frozen=True)
class RegisterDevice:
    data: DeviceCreate
    by: str


@dataclass(frozen=True)
class UpdateLocation:
    device_id: str
    location: Location
    caller: Caller


@dataclass(frozen=True)
class UpdateContract:
    device_id: str
    contract: Contract
    caller: Caller


@dataclass(frozen=True)
class UpdateStock:
    device_id: str
    stock: StockUpdate
    caller: Caller


class OrganisationMismatch(Exception):
    """A command names the device with another organisation than the device's."""


@dataclass(frozen=True)
class RemoveDevice:
    device_id: str
    caller: Caller
    org_id: str | None = None
    """When set (a command from another service), the device must belong to it."""
    ticket_id: str | None = None
    """The ticket that asked for the removal (recorded on the history)."""
    reason: str = ""
    key: str | None = None
    """Idempotency key of a command (its event id), recorded on the history entry."""


@dataclass(frozen=True)
class ApplyAssignment:
    """Identity changed which devices a user manages (from ``identity.users.state``)."""

    user_id: str
    org_id: str | None
    device_id: str
    assigned: bool
    role: str | None
    key: str
    """Idempotency key (user and revision): a re-delivered change is recorded once."""


def new_device(data: DeviceCreate) -> Device:
    return Device(device_id=uuid.uuid4().hex, **data.model_dump())


def created_entry(device: Device, by: str, now: datetime) -> HistoryEntry:
    changes = device.model_dump(
        mode="json", exclude={"device_id", "revision", "stock", "stock_set_at", "manager_ids"}
    )
    return HistoryEntry(at=now, by=by, action="created", changes=changes, revision=1)


async def register_device(cmd: RegisterDevice, repo: DeviceRepository, now: datetime) -> Device:
    if not await repo.known_organisations([cmd.data.org_id]):
        raise UnknownOrganisation(cmd.data.org_id)
    device = new_device(cmd.data)
    await repo.create(device, created_entry(device, cmd.by, now))
    return device


Mutation = Callable[[Device], tuple[dict[str, Any], dict[str, Any]] | None]
"""Returns (fields to set, changes for the history), or None when nothing changes."""


def _check(caller: Caller | None, action: Action, device: Device) -> None:
    if device.removed:
        raise DeviceNotFound(device.device_id)
    if caller is None:
        return
    decision = decide(caller, action, device.org_id, device.device_id)
    if decision is Decision.NOT_FOUND:
        raise DeviceNotFound(device.device_id)
    if decision is Decision.FORBIDDEN:
        raise NotAllowed(action.value)


async def _change(
    repo: DeviceRepository,
    device_id: str,
    caller: Caller | None,
    action: Action,
    history_action: str,
    mutate: Mutation,
    now: datetime,
    *,
    key: str | None = None,
) -> Device:
    for _ in range(SAVE_ATTEMPTS):
        before = await repo.get(device_id)
        if before is None:
            raise DeviceNotFound(device_id)
        _check(caller, action, before)
        result = mutate(before)
        if result is None:
            return before
        fields, changes = result
        after = Device.model_validate(
            {**before.model_dump(), **fields, "revision": before.revision + 1}
        )
        entry = HistoryEntry(
            at=now,
            by=caller.user_id if caller is not None else None,
            action=history_action,
            changes=changes,
            revision=after.revision,
            key=key,
        )
        if await repo.save(before, after, entry):
            return after
    raise ConcurrentChange(device_id)


async def update_location(cmd: UpdateLocation, repo: DeviceRepository, now: datetime) -> Device:
    def mutate(device: Device) -> tuple[dict[str, Any], dict[str, Any]] | None:
        if device.location == cmd.location:
            return None
        return {"location": cmd.location}, {
            "before": device.location.model_dump(),
            "after": cmd.location.model_dump(),
        }

    return await _change(repo, cmd.device_id, cmd.caller, Action.LOCATION, "location", mutate, now)


async def update_contract(cmd: UpdateContract, repo: DeviceRepository, now: datetime) -> Device:
    def mutate(device: Device) -> tuple[dict[str, Any], dict[str, Any]] | None:
        new = cmd.contract.model_dump()
        old = {k: getattr(device, k) for k in new}
        if new == old:
            return None
        diff = {k: {"before": old[k], "after": v} for k, v in new.items() if old[k] != v}
        return new, diff

    return await _change(repo, cmd.device_id, cmd.caller, Action.CONTRACT, "contract", mutate, now)


async def update_stock(cmd: UpdateStock, repo: DeviceRepository, now: datetime) -> Device:
    def mutate(device: Device) -> tuple[dict[str, Any], dict[str, Any]] | None:
        if not device.auto_replenishment:
            raise ReplenishmentOff(device.device_id)
        stock = cmd.stock
        fields: dict[str, Any] = {
            "stock": {
                "delivery_instructions": stock.delivery_instructions,
                "on_hand": stock.on_hand,
            },
            "stock_set_at": now,
        }
        changes: dict[str, Any] = {
            "delivery_instructions": stock.delivery_instructions,
            "on_hand": stock.on_hand,
        }
        if stock.name is not None and stock.name != device.name:
            fields["name"] = stock.name
            changes["name"] = {"before": device.name, "after": stock.name}
        return fields, changes

    return await _change(repo, cmd.device_id, cmd.caller, Action.STOCK_WRITE, "stock", mutate, now)


async def remove_device(cmd: RemoveDevice, repo: DeviceRepository, now: datetime) -> Device:
    """Remove a device (agents). A removed or unknown one raises :class:`DeviceNotFound`."""

    def mutate(device: Device) -> tuple[dict[str, Any], dict[str, Any]]:
        if cmd.org_id is not None and device.org_id != cmd.org_id:
            raise OrganisationMismatch(
                f"device {device.device_id} is not of organisation {cmd.org_id}"
            )
        changes: dict[str, Any] = {"status": "removed"}
        if cmd.ticket_id is not None:
            changes["ticket_id"] = cmd.ticket_id
        if cmd.reason:
            changes["reason"] = cmd.reason
        return {"removed": True, "status": DeviceStatus.REMOVED}, changes

    return await _change(
        repo, cmd.device_id, cmd.caller, Action.REMOVE, "removed", mutate, now, key=cmd.key
    )


async def apply_assignment(
    cmd: ApplyAssignment, repo: DeviceRepository, now: datetime
) -> Device | None:
    """Keep the device's managers as identity says; recorded once per user revision."""
    device = await repo.get(cmd.device_id)
    if device is None or device.removed or device.org_id != cmd.org_id:
        return None

    def mutate(device: Device) -> tuple[dict[str, Any], dict[str, Any]] | None:
        managers = set(device.manager_ids)
        if (cmd.user_id in managers) == cmd.assigned:
            return None
        if cmd.assigned:
            managers.add(cmd.user_id)
        else:
            managers.discard(cmd.user_id)
        return {"manager_ids": sorted(managers)}, {
            "user_id": cmd.user_id,
            "assigned": cmd.assigned,
            "role": cmd.role,
        }

    return await _change(
        repo, cmd.device_id, None, Action.VIEW, "assignment", mutate, now, key=cmd.key
    )
