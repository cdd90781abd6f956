"""The ``emaintenance.telemetry`` batch handler (consumer group ``devices.telemetry``).

The consumer runner calls it with one partition's records of one fetch and commits after it
returns; the records it returns are the permanently bad ones (dead-lettered with the reason).
Here: parse and validate, notice when the partition moved under us (an offset gap: another
consumer wrote meanwhile, so the levels in memory are reloaded), hand the reports to the core.
"""

from __future__ import annotations

from prometheus_client import Counter

from services.devices.core.telemetry import TelemetryDeps, TelemetryOutcome, process_telemetry
from shared.bus import Message, PermanentError
from shared.contracts import TelemetryReport
from shared.events import utcnow

REPORTS = Counter(
    "fleetdesk_devices_telemetry_reports_total",
    "Telemetry reports seen by the devices service, by outcome.",
    ["outcome"],
)
ORDERS = Counter("fleetdesk_devices_supply_orders_total", "Supply orders raised (once per need).")

GROUP = "devices.telemetry"


class TelemetryHandler:
    """A batch handler: ``await handler(messages)`` -> the permanently bad ones."""

    def __init__(self, deps: TelemetryDeps) -> None:
        self.deps = deps
        self._next_offset: dict[tuple[str, int], int] = {}
        self.last: TelemetryOutcome | None = None

    async def __call__(self, messages: list[Message]) -> list[tuple[Message, Exception]]:
        bad: list[tuple[Message, Exception]] = []
        reports: list[TelemetryReport] = []
        for msg in messages:
            try:
                reports.append(msg.parse(TelemetryReport))
            except PermanentError as exc:
                bad.append((msg, exc))
        if messages:
            first = messages[0]
            tp = (first.topic, first.partition)
            expected = self._next_offset.get(tp)
            if expected is not None and first.offset > expected:
                # Someone else consumed this partition meanwhile: what we hold may be stale.
                self.deps.levels.invalidate()
        outcome = await process_telemetry(reports, self.deps, utcnow())
        for msg in messages:
            self._next_offset[(msg.topic, msg.partition)] = msg.offset + 1
        REPORTS.labels("invalid").inc(len(bad))
        for name, n in outcome.counts.items():
            if name not in ("orders", "stored", "replaced"):
                REPORTS.labels(name).inc(n)
        ORDERS.inc(len(outcome.orders))
        self.last = outcome
        return bad
