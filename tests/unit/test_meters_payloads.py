"""The ``ReadingAccepted`` payload the ingestion worker builds by hand for every accepted
report is the contract's event (no broker needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.meters.adapters.stream import accepted_payload
from services.meters.core.model import Reading
from shared.contracts import ReadingAccepted, ReadingSource


@pytest.mark.parametrize(
    "read_at",
    [
        datetime(2026, 3, 29, 0, 30, tzinfo=UTC),
        datetime(2026, 3, 29, 3, 30, 0, 123456, tzinfo=timezone(timedelta(hours=3))),
    ],
)
@pytest.mark.parametrize("submitted_by", [None, "user-1"])
def test_the_hand_built_payload_is_the_contracts_reading_accepted(
    read_at: datetime, submitted_by: str | None
) -> None:
    reading = Reading(
        reading_id="telemetry:3:41",
        device_id="dev-1",
        org_id="org-1",
        serial="SN-1",
        source=ReadingSource.EMAINTENANCE if submitted_by is None else ReadingSource.MANUAL,
        counters={"total": 120, "colour": 30},
        read_at=read_at,
        submitted_by=submitted_by,
    )
    expected = ReadingAccepted(
        reading_id=reading.reading_id,
        device_id=reading.device_id,
        org_id=reading.org_id,
        source=reading.source,
        counters=reading.counters,
        read_at=reading.read_at,
        submitted_by=reading.submitted_by,
    )
    assert ReadingAccepted.model_validate_json(accepted_payload(reading)) == expected
