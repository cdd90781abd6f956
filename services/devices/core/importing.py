"""Bulk registration of devices from CSV: the ``ImportDevices`` use case.

The file has a header row; ``org_id``, ``serial`` and ``model`` are required, the other
columns optional: ``model_family, name, site, address, postal_code, city, region, floor,
room, sla_response_hours, calendar_id, emaintenance, auto_replenishment``. Each row is
validated on its own; a bad row is reported with its line number and reason and the good ones
are imported, in chunks (one bulk write each), reporting progress after every chunk.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from services.devices.core.devices import created_entry, new_device
from services.devices.core.model import DeviceCreate
from services.devices.core.ports import DeviceRepository

LOCATION_COLUMNS = ("site", "address", "postal_code", "city", "region", "floor", "room")
COLUMNS = (
    "org_id",
    "serial",
    "model",
    "model_family",
    "name",
    *LOCATION_COLUMNS,
    "sla_response_hours",
    "calendar_id",
    "emaintenance",
    "auto_replenishment",
)
REQUIRED = ("org_id", "serial", "model")
TRUE = {"true", "yes", "1", "on", "kyllä", "ja"}
FALSE = {"false", "no", "0", "off", "ei", "nej", ""}
MAX_ERRORS_KEPT = 1000


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str
    serial: str | None = None


@dataclass
class ImportProgress:
    total: int
    processed: int = 0
    imported: int = 0
    failed: int = 0
    errors: list[RowError] = field(default_factory=list)

    def fail(self, error: RowError) -> None:
        self.failed += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(error)


class ImportJournal(Protocol):
    """Where an import's progress is kept for ``GET /devices/import/{id}``."""

    async def progress(self, import_id: str, progress: ImportProgress, *, done: bool) -> None: ...


class BadFile(Exception):
    """The file is not a CSV with the required header."""


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise ValueError(f"{name}: not a yes/no value: {value[:20]!r}")


def _row_to_create(row: dict[str, str]) -> DeviceCreate:
    data: dict[str, Any] = {
        k: v.strip() for k, v in row.items() if k in COLUMNS and k not in LOCATION_COLUMNS and v
    }
    data["location"] = {k: row[k].strip() for k in LOCATION_COLUMNS if row.get(k)}
    for name in ("emaintenance", "auto_replenishment"):
        if name in data:
            data[name] = _bool(name, data[name])
    missing = [c for c in REQUIRED if not data.get(c)]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return DeviceCreate.model_validate(data)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors()
        )[:300]
    return str(exc)[:300]


def parse_csv(text: str) -> Iterator[tuple[int, DeviceCreate | RowError]]:
    """(line number, device or error) per data row."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise BadFile(f"the header lacks {', '.join(missing)}")
    reader.fieldnames = header
    for row in reader:
        line = reader.line_num
        if None in row:
            yield line, RowError(line, "more fields than the header has")
            continue
        try:
            yield line, _row_to_create({k: v or "" for k, v in row.items()})
        except (ValueError, ValidationError) as exc:
            yield line, RowError(line, _reason(exc), (row.get("serial") or None))


def count_rows(text: str) -> int:
    return max(0, sum(1 for _ in csv.reader(io.StringIO(text))) - 1)


@dataclass(frozen=True)
class ImportDevices:
    import_id: str
    rows: Sequence[tuple[int, DeviceCreate | RowError]]
    by: str
    chunk: int = 500


async def import_devices(
    cmd: ImportDevices, repo: DeviceRepository, journal: ImportJournal, now: datetime
) -> ImportProgress:
    progress = ImportProgress(total=len(cmd.rows))
    seen: set[str] = set()
    for start in range(0, len(cmd.rows), cmd.chunk):
        part = cmd.rows[start : start + cmd.chunk]
        orgs = await repo.known_organisations(
            {r.org_id for _, r in part if isinstance(r, DeviceCreate)}
        )
        batch = []
        lines = []
        for line, row in part:
            if isinstance(row, RowError):
                progress.fail(row)
            elif row.org_id not in orgs:
                progress.fail(RowError(line, "unknown organisation", row.serial))
            elif row.serial in seen:
                progress.fail(RowError(line, "serial repeated in the file", row.serial))
            else:
                seen.add(row.serial)
                device = new_device(row)
                batch.append((device, created_entry(device, cmd.by, now)))
                lines.append(line)
        refused = await repo.create_many(batch) if batch else set()
        for i, (device, _) in enumerate(batch):
            if i in refused:
                progress.fail(RowError(lines[i], "serial already registered", device.serial))
            else:
                progress.imported += 1
        progress.processed += len(part)
        done = progress.processed >= progress.total
        await journal.progress(cmd.import_id, progress, done=done)
    if not cmd.rows:
        await journal.progress(cmd.import_id, progress, done=True)
    return progress
