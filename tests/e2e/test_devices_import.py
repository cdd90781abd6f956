"""CSV import of thousands of devices (2,000 by default; FLEETDESK_TEST_IMPORT_ROWS for more)
with some bad rows: 202 at once, progress, row errors, the good ones registered (and
findable), the bad ones reported by line with the reason."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx
import pytest

from shared.contracts import DEVICES
from tests.e2e.flows import Fleet, Platform, auth, unique
from tests.support import eventually, read_topic

pytestmark = pytest.mark.e2e

# 2,000 rows keep CI inside its time; the import runs at a few hundred rows per second on
# stock FerretDB, so 10,000 rows (FLEETDESK_TEST_IMPORT_ROWS=10000) take minutes.
ROWS = int(os.environ.get("FLEETDESK_TEST_IMPORT_ROWS", "2000"))
HEADER = "org_id,serial,model,model_family,name,site,postal_code,region,auto_replenishment"


@pytest.mark.timeout(900)
async def test_import_of_thousands_of_devices_reports_bad_rows_and_keeps_the_good(
    platform: Platform,
) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        fleet = Fleet(platform, client)
        org = await fleet.create_org()
        taken = unique("SN")
        agent = await fleet.agent()
        # The organisation must have reached devices first; one device registered the usual way.
        body = {"org_id": org.org_id, "serial": taken, "model": "C300i"}

        async def registered() -> bool:
            r = await client.post(fleet.url("devices", "/devices"), json=body, headers=auth(agent))
            return r.status_code == 201

        await eventually(registered)

        prefix = unique("IMP")
        lines = [HEADER]
        bad: dict[int, str] = {}  # line number (header = 1) -> expected reason fragment
        for i in range(ROWS):
            line_no = i + 2
            serial = f"{prefix}-{i:05d}"
            row = f"{org.org_id},{serial},bizhub C{i % 7}00i,bizhub,Printer {i},Site {i % 40},"
            row += f"00{i % 990:03d},Uusimaa,{'yes' if i % 2 else 'no'}"
            if i % 1000 == 17:
                row = row.replace(serial, "bad serial!")
                bad[line_no] = "serial"
            elif i % 1000 == 400:
                row = row.replace(org.org_id, "no-such-organisation", 1)
                bad[line_no] = "unknown organisation"
            elif i == ROWS // 2:
                row = row.replace(serial, taken)
                bad[line_no] = "already registered"
            elif i % 2500 == 1234:
                row = row.replace(",yes", ",perhaps").replace(",no", ",perhaps")
                bad[line_no] = "auto_replenishment"
            lines.append(row)
        started = time.monotonic()
        response = await client.post(
            fleet.url("devices", "/devices/import"),
            content="\n".join(lines).encode(),
            headers={**auth(agent), "content-type": "text/csv"},
        )
        assert response.status_code == 202, response.text
        accepted = response.json()
        assert accepted["total"] == ROWS
        seen: list[int] = []
        last = f"{prefix}-{ROWS - 1:05d}"  # odd, so it has automatic replenishment

        async def finished() -> dict[str, Any] | None:
            r = await client.get(fleet.url("devices", accepted["status_url"]), headers=auth(agent))
            assert r.status_code == 200, r.text
            report: dict[str, Any] = r.json()
            seen.append(report["processed"])
            return report if report["status"] == "done" else None

        report = await eventually(finished, timeout=900, interval=0.5, what="import done")
        elapsed = time.monotonic() - started
        assert seen == sorted(seen)  # progress only moves forward
        assert report["imported"] == ROWS - len(bad)
        assert report["failed"] == len(bad)
        assert {e["line"] for e in report["errors"]} == set(bad)
        for error in report["errors"]:
            assert bad[error["line"]] in error["reason"], error
        print(f"import of {ROWS} rows took {elapsed:.1f}s; progress seen: {sorted(set(seen))[:8]}")

        # Every imported device's state reaches the state topic (the outbox drains); waited for
        # here so that the tests after this one find the relay idle again.
        async def last_published() -> bool:
            records = await read_topic(platform.kafka_bootstrap, DEVICES.name, timeout=60)
            mine = {
                json.loads(r.value)["serial"]
                for r in records
                if r.value and prefix.encode() in r.value
            }
            return last in mine

        await eventually(last_published, timeout=900, interval=5, what="states published")
        print(f"import and publication of {ROWS} rows took {time.monotonic() - started:.1f}s")

        async def find(serial: str) -> list[Any]:
            r = await client.get(
                fleet.url("devices", "/devices"), params={"serial": serial}, headers=auth(agent)
            )
            assert r.status_code == 200
            found: list[Any] = r.json()
            return found

        (device,) = await find(last)
        assert device["org_id"] == org.org_id
        assert device["location"]["postal_code"] == f"00{(ROWS - 1) % 990:03d}"
        assert device["auto_replenishment"] is True
        assert await find(f"{prefix}-00017") == []
