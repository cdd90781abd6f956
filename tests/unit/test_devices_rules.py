"""Scope rules, device commands and the CSV import on fakes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from services.devices.core.access import Action, Decision, ListScope, decide, list_scope
from services.devices.core.devices import (
    ApplyAssignment,
    ConcurrentChange,
    DeviceNotFound,
    NotAllowed,
    RegisterDevice,
    RemoveDevice,
    ReplenishmentOff,
    UnknownOrganisation,
    UpdateLocation,
    UpdateStock,
    apply_assignment,
    register_device,
    remove_device,
    update_location,
    update_stock,
)
from services.devices.core.importing import (
    BadFile,
    ImportDevices,
    ImportProgress,
    import_devices,
    parse_csv,
)
from services.devices.core.model import DeviceCreate, Location, StockUpdate
from shared.contracts import Role
from tests.unit.devices_fakes import T0, FakeDevices


@dataclass(frozen=True)
class Caller:
    role: Role | None
    org_id: str | None = "org1"
    device_ids: frozenset[str] = field(default_factory=frozenset)
    user_id: str = "u1"


MINE = frozenset({"d1"})
A, F, N = Decision.ALLOW, Decision.FORBIDDEN, Decision.NOT_FOUND
# Expected decision per role, on an assigned device of the caller's organisation (d1), an
# unassigned one of the same organisation (d2) and one of another organisation (x1).
TABLE: dict[Action, dict[Role, tuple[Decision, Decision, Decision]]] = {
    Action.VIEW: {
        Role.ADMIN: (A, A, N),
        Role.DEVICE_MANAGER: (A, N, N),
        Role.STOCK_MANAGER: (A, N, N),
        Role.DEVICE_STOCK_MANAGER: (A, N, N),
        Role.KB_VIEWER: (N, N, N),
        Role.AGENT: (A, A, A),
        Role.TECHNICIAN: (N, N, N),
    },
    Action.LOCATION: {
        Role.ADMIN: (A, A, N),
        Role.DEVICE_MANAGER: (A, N, N),
        Role.STOCK_MANAGER: (F, N, N),
        Role.DEVICE_STOCK_MANAGER: (A, N, N),
        Role.KB_VIEWER: (N, N, N),
        Role.AGENT: (A, A, A),
        Role.TECHNICIAN: (N, N, N),
    },
    Action.STOCK_READ: {
        Role.ADMIN: (A, A, N),
        Role.DEVICE_MANAGER: (F, N, N),
        Role.STOCK_MANAGER: (A, N, N),
        Role.DEVICE_STOCK_MANAGER: (A, N, N),
        Role.KB_VIEWER: (N, N, N),
        Role.AGENT: (A, A, A),
        Role.TECHNICIAN: (N, N, N),
    },
    Action.STOCK_WRITE: {
        Role.ADMIN: (F, F, N),
        Role.DEVICE_MANAGER: (F, N, N),
        Role.STOCK_MANAGER: (A, N, N),
        Role.DEVICE_STOCK_MANAGER: (A, N, N),
        Role.KB_VIEWER: (N, N, N),
        Role.AGENT: (F, F, F),
        Role.TECHNICIAN: (N, N, N),
    },
    Action.HISTORY: {
        Role.ADMIN: (A, A, N),
        Role.DEVICE_MANAGER: (F, N, N),
        Role.STOCK_MANAGER: (F, N, N),
        Role.DEVICE_STOCK_MANAGER: (F, N, N),
        Role.KB_VIEWER: (N, N, N),
        Role.AGENT: (A, A, A),
        Role.TECHNICIAN: (N, N, N),
    },
    Action.REMOVE: {
        Role.ADMIN: (F, F, N),
        Role.DEVICE_MANAGER: (F, N, N),
        Role.STOCK_MANAGER: (F, N, N),
        Role.DEVICE_STOCK_MANAGER: (F, N, N),
        Role.KB_VIEWER: (N, N, N),
        Role.AGENT: (A, A, A),
        Role.TECHNICIAN: (N, N, N),
    },
}


@pytest.mark.parametrize(
    ("action", "role"), [(a, r) for a in TABLE for r in TABLE[a]], ids=lambda v: str(v)
)
def test_scope_rules_every_cell(action: Action, role: Role) -> None:
    org = None if role in (Role.AGENT, Role.TECHNICIAN) else "org1"
    caller = Caller(role, org, MINE)
    got = (
        decide(caller, action, "org1", "d1"),
        decide(caller, action, "org1", "d2"),
        decide(caller, action, "org2", "x1"),
    )
    assert got == TABLE[action][role]


def test_list_scope_per_role() -> None:
    assert list_scope(Caller(Role.AGENT, None)) is ListScope.ALL
    assert list_scope(Caller(Role.ADMIN)) is ListScope.ORGANISATION
    for role in (Role.DEVICE_MANAGER, Role.STOCK_MANAGER, Role.DEVICE_STOCK_MANAGER):
        assert list_scope(Caller(role)) is ListScope.ASSIGNED
    assert list_scope(Caller(Role.KB_VIEWER)) is ListScope.NONE
    assert list_scope(Caller(Role.TECHNICIAN, None)) is ListScope.NONE
    assert list_scope(Caller(None)) is ListScope.NONE


# --- commands ---------------------------------------------------------------------------------


def _create(serial: str = "SN1", org: str = "org1", **extra: object) -> DeviceCreate:
    return DeviceCreate.model_validate({"org_id": org, "serial": serial, "model": "C300i", **extra})


async def test_register_then_change_location_keeps_history_with_who_and_when() -> None:
    repo = FakeDevices()
    device = await register_device(RegisterDevice(_create(), "agent1"), repo, T0)
    manager = Caller(Role.DEVICE_MANAGER, "org1", frozenset({device.device_id}), "m1")
    place = Location(site="HQ", postal_code="00100", region="Uusimaa")
    after = await update_location(UpdateLocation(device.device_id, place, manager), repo, T0)
    assert after.location == place and after.revision == 2
    history = repo.histories[device.device_id]
    assert [(h.action, h.by, h.revision) for h in history] == [
        ("created", "agent1", 1),
        ("location", "m1", 2),
    ]
    assert history[1].changes["after"]["postal_code"] == "00100"
    assert repo.states == [(device.device_id, 1), (device.device_id, 2)]


async def test_a_manager_of_another_device_cannot_change_the_location() -> None:
    repo = FakeDevices()
    device = await register_device(RegisterDevice(_create(), "agent1"), repo, T0)
    other = Caller(Role.DEVICE_MANAGER, "org1", frozenset({"another"}), "m2")
    with pytest.raises(DeviceNotFound):
        await update_location(UpdateLocation(device.device_id, Location(), other), repo, T0)
    stock_manager = Caller(Role.STOCK_MANAGER, "org1", frozenset({device.device_id}), "s1")
    with pytest.raises(NotAllowed):
        await update_location(
            UpdateLocation(device.device_id, Location(site="x"), stock_manager), repo, T0
        )
    assert len(repo.histories[device.device_id]) == 1


async def test_unknown_organisation_refused() -> None:
    with pytest.raises(UnknownOrganisation):
        await register_device(RegisterDevice(_create(org="nope"), "a"), FakeDevices(), T0)


async def test_a_concurrent_change_is_retried_then_given_up() -> None:
    repo = FakeDevices()
    device = await register_device(RegisterDevice(_create(), "a"), repo, T0)
    agent = Caller(Role.AGENT, None)
    repo.interfere = 2
    after = await update_location(
        UpdateLocation(device.device_id, Location(site="B"), agent), repo, T0
    )
    assert after.location.site == "B" and after.revision == 4
    repo.interfere = 99
    with pytest.raises(ConcurrentChange):
        await update_location(UpdateLocation(device.device_id, Location(site="C"), agent), repo, T0)


async def test_removal_publishes_removed_state_and_hides_the_device() -> None:
    repo = FakeDevices()
    device = await register_device(RegisterDevice(_create(), "a"), repo, T0)
    agent = Caller(Role.AGENT, None)
    removed = await remove_device(RemoveDevice(device.device_id, agent), repo, T0)
    assert removed.state().removed and removed.state().status == "removed"
    with pytest.raises(DeviceNotFound):
        await update_location(UpdateLocation(device.device_id, Location(), agent), repo, T0)


async def test_stock_only_for_automatic_replenishment_and_by_its_stock_managers() -> None:
    repo = FakeDevices()
    device = await register_device(RegisterDevice(_create(auto_replenishment=True), "a"), repo, T0)
    plain = await register_device(RegisterDevice(_create("SN2"), "a"), repo, T0)
    both = frozenset({device.device_id, plain.device_id})
    manager = Caller(Role.STOCK_MANAGER, "org1", both, "s1")
    body = StockUpdate(on_hand={"black": 2}, delivery_instructions="Door B", name="Printer 2")
    after = await update_stock(UpdateStock(device.device_id, body, manager), repo, T0)
    assert after.stock.on_hand == {"black": 2} and after.name == "Printer 2"
    with pytest.raises(ReplenishmentOff):
        await update_stock(UpdateStock(plain.device_id, body, manager), repo, T0)
    with pytest.raises(NotAllowed):
        await update_stock(
            UpdateStock(device.device_id, body, Caller(Role.ADMIN, "org1")), repo, T0
        )


async def test_assignment_from_identity_recorded_once() -> None:
    repo = FakeDevices()
    device = await register_device(RegisterDevice(_create(), "a"), repo, T0)
    cmd = ApplyAssignment("m1", "org1", device.device_id, True, "device_manager", "user:m1:3")
    await apply_assignment(cmd, repo, T0)
    await apply_assignment(cmd, repo, T0)  # re-delivered
    assert repo.devices[device.device_id].manager_ids == ["m1"]
    assert [h.action for h in repo.histories[device.device_id]] == ["created", "assignment"]
    foreign = ApplyAssignment("m9", "org2", device.device_id, True, "device_manager", "k")
    assert await apply_assignment(foreign, repo, T0) is None


# --- CSV import -------------------------------------------------------------------------------


class Journal:
    def __init__(self) -> None:
        self.steps: list[tuple[int, bool]] = []

    async def progress(self, import_id: str, progress: ImportProgress, *, done: bool) -> None:
        self.steps.append((progress.processed, done))


async def test_csv_import_reports_bad_rows_and_imports_the_good_ones() -> None:
    text = "\n".join(
        [
            "org_id,serial,model,site,postal_code,auto_replenishment,sla_response_hours",
            "org1,SN1,C300i,HQ,00100,yes,8",
            "org1,SN2,C300i,HQ,00100,maybe,8",  # bad boolean
            "org1,SN 3,C300i,,,,",  # bad serial
            "org9,SN4,C300i,,,,",  # unknown organisation
            "org1,SN1,C300i,,,,",  # repeated serial
            "org1,,C300i,,,,",  # missing serial
            "org1,SN5,C300i,,,no,999",  # SLA out of range
            "org2,SN6,M400,Annex,,no,4",
            "org1,SN7,C300i,,,,",  # registered before
        ]
    )
    repo = FakeDevices()
    await register_device(RegisterDevice(_create("SN7"), "a"), repo, T0)
    rows = list(parse_csv(text))
    journal = Journal()
    progress = await import_devices(ImportDevices("i1", rows, "agent1", chunk=3), repo, journal, T0)
    assert progress.imported == 2 and progress.failed == 7
    assert [e.line for e in progress.errors] == [3, 4, 5, 6, 7, 8, 10]
    assert progress.errors[0].reason.startswith("auto_replenishment: not a yes/no value")
    assert "unknown organisation" in progress.errors[2].reason
    assert "repeated" in progress.errors[3].reason
    assert "already registered" in progress.errors[6].reason
    assert journal.steps == [(3, False), (6, False), (9, True)]
    serials = sorted(d.serial for d in repo.devices.values())
    assert serials == ["SN1", "SN6", "SN7"]


def test_csv_without_the_required_header_is_refused() -> None:
    with pytest.raises(BadFile):
        list(parse_csv("serial,model\nSN1,x\n"))
