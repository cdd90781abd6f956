"""The meters directory: a device is built once for the rules and rebuilt when it changes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.meters.adapters import directory as directory_module
from services.meters.adapters.directory import Directory, DirectoryDevice
from shared.contracts import DeviceState, OrganisationState
from shared.events import parse_json


def device_state(revision: int, *, removed: bool = False) -> DeviceState:
    return DeviceState.model_construct(
        device_id="dev-1", org_id="org-1", serial="SN-1", revision=revision, removed=removed
    )


def org_state(revision: int, timezone: str) -> OrganisationState:
    return OrganisationState.model_construct(org_id="org-1", revision=revision, timezone=timezone)


def test_a_device_is_built_once_and_rebuilt_when_it_or_its_organisation_changes() -> None:
    directory = Directory()
    directory.apply_organisation(org_state(1, "Europe/Helsinki"))
    directory.apply_device(device_state(1))

    first = directory.by_serial("SN-1")
    assert first is not None and first.timezone == "Europe/Helsinki" and not first.removed
    assert directory.by_serial("SN-1") is first  # looked up, not built again
    assert directory.device("dev-1") is first

    directory.apply_device(device_state(1, removed=True))  # an old revision: ignored
    assert directory.by_serial("SN-1") is first

    directory.apply_device(device_state(2, removed=True))
    removed = directory.by_serial("SN-1")
    assert removed is not None and removed.removed

    directory.apply_organisation(org_state(2, "America/New_York"))
    moved = directory.device("dev-1")
    assert moved is not None and moved.timezone == "America/New_York" and moved.removed

    assert directory.device("dev-2") is None and directory.by_serial("SN-2") is None


def test_a_device_loaded_before_its_organisation_gets_the_organisations_time_zone() -> None:
    directory = Directory()
    directory.apply_device(device_state(1))  # the two topics are read side by side
    early = directory.by_serial("SN-1")
    assert early is not None and early.timezone == "UTC"  # its organisation is not known yet

    directory.apply_organisation(org_state(1, "Europe/Helsinki"))
    known = directory.by_serial("SN-1")
    assert known is not None and known.timezone == "Europe/Helsinki"

    directory.apply_organisation(org_state(2, "Europe/Helsinki"))  # renamed, say: same zone
    assert directory.by_serial("SN-1") is known  # nothing to build again


def test_the_feed_reads_what_the_directory_needs_of_a_state_record_under_the_contracts_rules() -> (
    None
):
    full = DeviceState(
        device_id="dev-1", org_id="org-1", serial="SN-1", model="m", name="Lobby", revision=3
    )
    seen = parse_json(DirectoryDevice, full.model_dump_json())
    assert (seen.device_id, seen.serial, seen.revision, seen.emaintenance) == (
        "dev-1",
        "SN-1",
        3,
        True,
    )
    assert not hasattr(seen, "name")  # the rest of the record is not read
    # every fact the directory reads is a field of the contract, so the projection has it
    assert set(DirectoryDevice.model_fields) == directory_module._READ
    with pytest.raises(ValidationError):  # the contract's constraints still hold
        parse_json(DirectoryDevice, b'{"device_id":"d","org_id":"o","serial":"S 1","revision":0}')
