"""The reading history's pages, read in windows of time, against the real server.

Every page must be exactly the slice of the device's readings sorted newest first (``read_at``,
then ``_id``) that one query over the whole history gives: whatever the filters, across the
windows' boundaries (readings exactly on them, ties of ``read_at`` on them), for readings dated
in the future and six years back, and for other devices' readings beside them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from services.meters.adapters import store
from services.meters.adapters.store import INDEXES, READINGS, ReadingStore
from shared.config import MongoSettings
from shared.contracts import ReadingSource
from shared.store import Mongo

DEVICE, OTHER = "dev-history", "dev-other"
# A fixed upper bound for the pages that pass ``until``: the windows' boundaries are known.
UNTIL = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _readings() -> list[dict[str, Any]]:
    """The device's readings (and another device's): dense lately, sparse for six years, some
    ahead of both ``UNTIL`` and now, three on the first window's boundary back from ``UNTIL``
    (two of them a tie) and one just before it (the later windows are sized from what the
    earlier ones found)."""
    now = datetime.now(UTC).replace(microsecond=0)
    times: list[datetime] = [now + timedelta(hours=h) for h in (1, 30, 240)]
    times += [UNTIL + timedelta(minutes=5)]
    times += [UNTIL - timedelta(hours=17 * k) for k in range(1, 45)]  # dense: 31 days
    times += [UNTIL - timedelta(days=20 * k, hours=3) for k in range(1, 110)]  # six years
    boundary = UNTIL - store.HISTORY_WINDOW
    times += [boundary, boundary, boundary, boundary - timedelta(milliseconds=1)]
    times += [now - timedelta(days=3), now - timedelta(days=40), now - timedelta(days=200)]
    docs = []
    for n, at in enumerate(times):
        for device in (DEVICE, OTHER):
            docs.append(
                {
                    "_id": f"{device}:{n:04d}",
                    "device_id": device,
                    "org_id": "org-history",
                    "serial": f"S-{device}",
                    "source": "manual" if n % 5 == 0 else "emaintenance",
                    "counters": {"total": n},
                    "read_at": at,
                }
            )
    return docs


@pytest.fixture
async def db(mongo_settings: MongoSettings) -> AsyncIterator[AsyncDatabase[Any]]:
    async with Mongo(mongo_settings, f"history{uuid.uuid4().hex[:10]}") as mongo:
        await mongo.db[READINGS].create_indexes(INDEXES[READINGS])
        await mongo.db[READINGS].insert_many(_readings())
        yield mongo.db
        await mongo.db.client.drop_database(mongo.name)


def _expected(
    docs: list[dict[str, Any]],
    source: ReadingSource | None,
    since: datetime | None,
    until: datetime | None,
) -> list[str]:
    chosen = [
        d
        for d in docs
        if d["device_id"] == DEVICE
        and (source is None or d["source"] == source.value)
        and (since is None or d["read_at"] >= since)
        and (until is None or d["read_at"] < until)
    ]
    chosen.sort(key=lambda d: (d["read_at"], d["_id"]), reverse=True)
    return [d["_id"] for d in chosen]


@pytest.mark.parametrize(
    ("source", "since", "until", "limit"),
    [
        (None, None, UNTIL, 7),
        (None, None, None, 50),
        (ReadingSource.MANUAL, None, UNTIL, 13),
        (None, UNTIL - timedelta(days=200), UNTIL, 11),
        (None, UNTIL - timedelta(days=124), None, 50),
        (ReadingSource.EMAINTENANCE, UNTIL - timedelta(days=3000), UNTIL - timedelta(days=31), 40),
        (None, UNTIL + timedelta(days=1), UNTIL, 5),  # since after until: nothing
    ],
)
async def test_every_page_is_the_slice_of_the_whole_sorted_history(
    db: AsyncDatabase[Any],
    source: ReadingSource | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> None:
    history = ReadingStore(db)
    expected = _expected(_readings(), source, since, until)
    pages: list[str] = []
    offset = 0
    while True:
        page = await history.page(
            DEVICE, source=source, since=since, until=until, limit=limit, offset=offset
        )
        assert len(page) <= limit
        assert all(r.device_id == DEVICE for r in page)
        pages += [r.reading_id for r in page]
        if len(page) < limit:
            break
        offset += limit
    assert pages == expected
    if source is None and since is None and until == UNTIL:
        assert len(expected) > 150  # the windows were all needed, the last one too


async def test_a_deep_offset_reads_back_to_it(db: AsyncDatabase[Any]) -> None:
    history = ReadingStore(db)
    expected = _expected(_readings(), None, None, UNTIL)
    page = await history.page(DEVICE, source=None, since=None, until=UNTIL, limit=3, offset=150)
    assert [r.reading_id for r in page] == expected[150:153]
