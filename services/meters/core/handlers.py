"""Use cases of the HTTP side, one per command: they take the command and their ports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.meters.core.model import Rule
from services.meters.core.ports import CommandBus, Decisions, DeviceDirectory, Outcome
from shared.contracts import ReadingSource, ReadingSubmitted
from shared.events import new_event_id


@dataclass(frozen=True)
class SubmitReading:
    device_id: str
    counters: dict[str, int]
    submitted_by: str
    submitted_at: datetime
    source: ReadingSource
    reason: str | None = None


class DecisionTimeout(Exception):
    """The partition owner did not answer in time (the submission may still be decided)."""

    def __init__(self, command_id: str) -> None:
        super().__init__(command_id)
        self.command_id = command_id


async def submit_reading(
    cmd: SubmitReading,
    directory: DeviceDirectory,
    bus: CommandBus,
    decisions: Decisions,
    timeout: float,
) -> Outcome:
    """Route the submission through the device's partition and wait for the owner's decision.

    The device is checked here too, so that an unknown or removed device is refused at once;
    the owner checks again (the device may be removed in between)."""
    device = directory.device(cmd.device_id)
    if device is None or device.removed:
        rule = Rule.UNKNOWN_DEVICE if device is None else Rule.DEVICE_REMOVED
        detail = "no such device" if device is None else "the device has been removed"
        return Outcome("", False, refusals=[{"rule": rule.value, "detail": detail}])
    command = ReadingSubmitted(
        command_id=new_event_id(),
        device_id=device.device_id,
        serial=device.serial,
        source=cmd.source,
        counters=cmd.counters,
        submitted_by=cmd.submitted_by,
        submitted_at=cmd.submitted_at,
        reason=cmd.reason,
    )
    await bus.submit(command)
    outcome = await decisions.wait(command.command_id, timeout)
    if outcome is None:
        raise DecisionTimeout(command.command_id)
    return outcome
