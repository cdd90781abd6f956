"""The meters rules on plain data: monotonic counters, once a day in the organisation's time
zone, phoned-in readings, duplicates, anomalies, faults, staleness, the billing snapshot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.meters.core import handlers
from services.meters.core.model import (
    Device,
    DeviceMemory,
    Reading,
    Report,
    Rule,
    Submission,
    billing_snapshot,
    check_stale,
    ingest_report,
    local_day,
    submit_reading,
)
from services.meters.core.ports import Outcome
from shared.contracts import ReadingSource, ReadingSubmitted

HELSINKI = Device("dev-1", "org-1", "SN1", timezone="Europe/Helsinki")


def submission(counters: dict[str, int], at: datetime, **kw: object) -> Submission:
    return Submission(f"cmd-{at.timestamp()}", counters, "user-1", at, **kw)  # type: ignore[arg-type]


def report(
    counters: dict[str, int], errors: tuple[str, ...] = (), received: float = 1000.0
) -> Report:
    return Report("t:0:1", counters, errors, datetime(2026, 3, 1, tzinfo=UTC), received)


def test_a_manual_reading_is_accepted_and_moves_the_baseline() -> None:
    at = datetime(2026, 3, 1, 9, tzinfo=UTC)
    decision = submit_reading(DeviceMemory(), submission({"total": 10, "black": 4}, at), HELSINKI)
    assert decision.reading is not None and not decision.refusals
    assert decision.memory.counters == {"total": 10, "black": 4}
    assert decision.memory.manual_day == "2026-03-01"


def test_each_lower_counter_is_named_with_both_values() -> None:
    memory = DeviceMemory(counters={"total": 100, "black": 50, "colour": 7})
    at = datetime(2026, 3, 1, 9, tzinfo=UTC)
    decision = submit_reading(
        memory, submission({"total": 99, "black": 50, "colour": 3}, at), HELSINKI
    )
    assert decision.reading is None
    assert [(r.rule, r.counter, r.previous, r.submitted) for r in decision.refusals] == [
        (Rule.LOWER_THAN_PREVIOUS, "colour", 7, 3),
        (Rule.LOWER_THAN_PREVIOUS, "total", 100, 99),
    ]
    assert decision.memory is memory


def test_second_manual_submission_on_the_same_local_day_is_refused_with_when() -> None:
    first_at = datetime(2026, 3, 1, 6, tzinfo=UTC)  # 08:00 in Helsinki
    first = submit_reading(DeviceMemory(), submission({"total": 1}, first_at), HELSINKI)
    second = submit_reading(
        first.memory, submission({"total": 2}, first_at + timedelta(hours=3)), HELSINKI
    )
    assert [r.rule for r in second.refusals] == [Rule.ALREADY_SUBMITTED_TODAY]
    assert second.refusals[0].submitted_at == first_at.isoformat()


def test_the_day_boundary_is_the_organisations_not_utc() -> None:
    # 21:30 UTC on 1 March is already 2 March in Helsinki (UTC+2): a new day there.
    before = datetime(2026, 3, 1, 21, 0, tzinfo=UTC)  # 23:00 Helsinki, 1 March
    after = datetime(2026, 3, 1, 22, 30, tzinfo=UTC)  # 00:30 Helsinki, 2 March; still UTC 1 March
    first = submit_reading(DeviceMemory(), submission({"total": 1}, before), HELSINKI)
    second = submit_reading(first.memory, submission({"total": 2}, after), HELSINKI)
    assert second.reading is not None
    utc_device = Device("dev-2", "org-2", "SN2", timezone="UTC")
    first_utc = submit_reading(DeviceMemory(), submission({"total": 1}, before), utc_device)
    second_utc = submit_reading(first_utc.memory, submission({"total": 2}, after), utc_device)
    assert [r.rule for r in second_utc.refusals] == [Rule.ALREADY_SUBMITTED_TODAY]
    assert local_day(after, "Europe/Helsinki").isoformat() == "2026-03-02"


def test_phoned_in_bypasses_only_the_once_a_day_rule() -> None:
    at = datetime(2026, 3, 1, 9, tzinfo=UTC)
    first = submit_reading(DeviceMemory(), submission({"total": 10}, at), HELSINKI)
    phoned = submission(
        {"total": 12}, at + timedelta(hours=1), source=ReadingSource.PHONED_IN, reason="called"
    )
    accepted = submit_reading(first.memory, phoned, HELSINKI)
    assert accepted.reading is not None and accepted.reading.reason == "called"
    lower = submission(
        {"total": 5}, at + timedelta(hours=2), source=ReadingSource.PHONED_IN, reason="called"
    )
    refused = submit_reading(accepted.memory, lower, HELSINKI)
    assert [r.rule for r in refused.refusals] == [Rule.LOWER_THAN_PREVIOUS]


@pytest.mark.parametrize(
    ("device", "rule"),
    [(None, Rule.UNKNOWN_DEVICE), (Device("d", "o", "S", removed=True), Rule.DEVICE_REMOVED)],
)
def test_unknown_and_removed_devices_are_refused(device: Device | None, rule: Rule) -> None:
    at = datetime(2026, 3, 1, 9, tzinfo=UTC)
    decision = submit_reading(DeviceMemory(), submission({"total": 1}, at), device)
    assert [r.rule for r in decision.refusals] == [rule]


def test_automatic_reading_accepted_duplicate_dropped_lower_is_an_anomaly() -> None:
    accepted = ingest_report(DeviceMemory(), report({"total": 10}), HELSINKI)
    assert accepted.reading is not None and accepted.memory.counters == {"total": 10}
    duplicate = ingest_report(accepted.memory, report({"total": 10}), HELSINKI)
    assert duplicate.duplicate and duplicate.reading is None
    anomaly = ingest_report(accepted.memory, report({"total": 9}), HELSINKI)
    assert anomaly.reading is None and anomaly.anomaly == {"total": [10, 9]}
    assert anomaly.memory.counters == {"total": 10}  # never accepted


def test_faults_are_reported_when_the_set_of_codes_changes() -> None:
    first = ingest_report(DeviceMemory(), report({}, ("E1",)), HELSINKI)
    assert first.fault == ["E1"]
    same = ingest_report(first.memory, report({}, ("E1", "E1")), HELSINKI)
    assert same.fault is None
    more = ingest_report(same.memory, report({}, ("E2", "E1")), HELSINKI)
    assert more.fault == ["E1", "E2"]
    cleared = ingest_report(more.memory, report({}), HELSINKI)
    assert cleared.fault is None and cleared.memory.errors == []
    again = ingest_report(cleared.memory, report({}, ("E1",)), HELSINKI)
    assert again.fault == ["E1"]


def test_a_quiet_device_goes_stale_once_and_comes_back_with_a_report() -> None:
    seen = ingest_report(DeviceMemory(), report({"total": 1}, received=1000.0), HELSINKI)
    assert check_stale(seen.memory, HELSINKI, now=1500.0, after=600).stale is None
    stale = check_stale(seen.memory, HELSINKI, now=1700.0, after=600)
    assert stale.stale is True and stale.memory.stale
    assert check_stale(stale.memory, HELSINKI, now=9999.0, after=600).stale is None
    back = ingest_report(stale.memory, report({"total": 2}, received=2000.0), HELSINKI)
    assert back.stale is False and not back.memory.stale
    off = Device("d", "o", "S", emaintenance=False)
    assert check_stale(seen.memory, off, now=1700.0, after=600).stale is None


def test_billing_takes_the_last_value_of_each_counter_per_local_month() -> None:
    def reading(at: datetime, counters: dict[str, int]) -> Reading:
        return Reading(
            f"r{at.timestamp()}", "d", "o", "S", ReadingSource.EMAINTENANCE, counters, at
        )

    readings = [
        reading(datetime(2026, 1, 10, tzinfo=UTC), {"total": 10, "black": 5}),
        reading(datetime(2026, 1, 31, 22, 30, tzinfo=UTC), {"total": 20}),  # 1 Feb, Helsinki
        reading(datetime(2026, 1, 20, tzinfo=UTC), {"total": 15}),
    ]
    months = billing_snapshot(readings, "Europe/Helsinki")
    assert [m["month"] for m in months] == ["2026-02", "2026-01"]
    assert months[1]["counters"]["total"]["value"] == 15
    assert months[1]["counters"]["black"]["value"] == 5
    assert months[0]["counters"]["total"]["value"] == 20


class FakeDirectory:
    def __init__(self, *devices: Device) -> None:
        self.devices = {d.device_id: d for d in devices}

    def device(self, device_id: str) -> Device | None:
        return self.devices.get(device_id)

    def by_serial(self, serial: str) -> Device | None:
        return next((d for d in self.devices.values() if d.serial == serial), None)


class FakeOwner:
    """The bus and the partition owner in one: decides each command as it is sent."""

    def __init__(self, directory: FakeDirectory) -> None:
        self.directory = directory
        self.memory: dict[str, DeviceMemory] = {}
        self.outcomes: dict[str, Outcome] = {}
        self.sent: list[ReadingSubmitted] = []

    async def submit(self, cmd: ReadingSubmitted) -> None:
        self.sent.append(cmd)
        device = self.directory.by_serial(cmd.serial)
        sub = Submission(
            cmd.command_id, dict(cmd.counters), cmd.submitted_by, cmd.submitted_at, cmd.source
        )
        decision = submit_reading(self.memory.get(cmd.serial, DeviceMemory()), sub, device)
        self.memory[cmd.serial] = decision.memory
        self.outcomes[cmd.command_id] = Outcome(
            cmd.command_id,
            decision.reading is not None,
            {"_id": cmd.command_id} if decision.reading else None,
            [r.as_dict() for r in decision.refusals],
        )

    async def wait(self, command_id: str, timeout: float) -> Outcome | None:
        return self.outcomes.get(command_id)


async def test_submit_reading_routes_by_serial_and_answers_the_owners_decision() -> None:
    directory = FakeDirectory(HELSINKI, Device("gone", "org-1", "SN9", removed=True))
    owner = FakeOwner(directory)
    at = datetime(2026, 3, 1, 9, tzinfo=UTC)
    cmd = handlers.SubmitReading("dev-1", {"total": 5}, "user-1", at, ReadingSource.MANUAL)
    first = await handlers.submit_reading(cmd, directory, owner, owner, 1.0)
    second = await handlers.submit_reading(cmd, directory, owner, owner, 1.0)
    assert first.accepted and not second.accepted
    assert second.refusals[0]["rule"] == "already_submitted_today"
    assert [c.serial for c in owner.sent] == ["SN1", "SN1"]
    gone = handlers.SubmitReading("gone", {"total": 5}, "user-1", at, ReadingSource.MANUAL)
    refused = await handlers.submit_reading(gone, directory, owner, owner, 1.0)
    assert refused.refusals[0]["rule"] == "device_removed" and len(owner.sent) == 2


async def test_no_decision_in_time_is_a_timeout_not_an_answer() -> None:
    directory = FakeDirectory(HELSINKI)

    class Silent(FakeOwner):
        async def wait(self, command_id: str, timeout: float) -> Outcome | None:
            return None

    owner = Silent(directory)
    cmd = handlers.SubmitReading(
        "dev-1", {"total": 5}, "u", datetime(2026, 3, 1, tzinfo=UTC), ReadingSource.MANUAL
    )
    with pytest.raises(handlers.DecisionTimeout):
        await handlers.submit_reading(cmd, directory, owner, owner, 0.1)
