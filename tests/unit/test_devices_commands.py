"""The ``devices.commands`` handler on fakes: a removal asked for by a resolved ticket."""

from __future__ import annotations

import pytest

from services.devices.adapters.commands import commands_handler
from services.devices.core.devices import RegisterDevice, register_device
from services.devices.core.model import DeviceCreate
from shared.bus import Message, PermanentError
from shared.contracts import DEVICE_COMMANDS, DeviceRemovalRequested
from tests.unit.devices_fakes import T0, FakeDevices


def _message(value: bytes, event_type: str | None, offset: int = 0) -> Message:
    headers = {"event_id": f"ev{offset}"}
    if event_type is not None:
        headers["event_type"] = event_type
    return Message(DEVICE_COMMANDS.name, 0, offset, "dev", value, headers)


def _removal(device_id: str, org_id: str = "org1", offset: int = 0) -> Message:
    command = DeviceRemovalRequested(
        device_id=device_id,
        org_id=org_id,
        ticket_id="t1",
        requested_by="agent7",
        reason="device-removal ticket t1 resolved",
    )
    return _message(command.model_dump_json().encode(), command.event_type, offset)


async def _device(repo: FakeDevices, org: str = "org1", serial: str = "SN1") -> str:
    data = DeviceCreate.model_validate({"org_id": org, "serial": serial, "model": "C300i"})
    return (await register_device(RegisterDevice(data, "agent1"), repo, T0)).device_id


async def test_removal_records_the_agent_and_the_ticket_once() -> None:
    repo = FakeDevices()
    device_id = await _device(repo)
    handle = commands_handler(repo)
    await handle(_removal(device_id))
    device = repo.devices[device_id]
    assert device.removed and device.state().status == "removed"
    entry = repo.histories[device_id][-1]
    assert entry.action == "removed" and entry.by == "agent7" and entry.key == "ev0"
    assert entry.changes == {
        "status": "removed",
        "ticket_id": "t1",
        "reason": "device-removal ticket t1 resolved",
    }
    states = len(repo.states)
    await handle(_removal(device_id, offset=1))  # re-delivered: nothing more happens
    await handle(_removal("no-such-device", offset=2))  # unknown: a no-op
    assert len(repo.states) == states and len(repo.histories[device_id]) == 2


async def test_bad_commands_are_permanent_failures() -> None:
    repo = FakeDevices()
    device_id = await _device(repo)
    handle = commands_handler(repo)
    with pytest.raises(PermanentError, match="not of organisation org2"):
        await handle(_removal(device_id, org_id="org2"))
    with pytest.raises(PermanentError, match="invalid DeviceRemovalRequested"):
        await handle(_message(b'{"device_id": "x"}', DeviceRemovalRequested.event_type))
    with pytest.raises(PermanentError, match="unknown command type"):
        await handle(_message(b"{}", "devices.shutdown"))
    with pytest.raises(PermanentError, match="unknown command type"):
        await handle(_message(b"{}", None))
    assert not repo.devices[device_id].removed
