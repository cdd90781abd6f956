"""The devices service's MongoDB collections: the adapters behind the core's ports.

- ``devices``: one document per device, with its history (the audit trail) and its outbox:
  a change, its history entry and its state event are one single-document write.
- ``supply_levels``: the level history, insert-only: one document per device and telemetry
  batch that changed it, carrying the device's folded levels (what memory is rebuilt from).
- ``supply_orders``: one per need, ``_id`` = device:consumable:generation (a unique insert,
  so a need is ordered once), with its ``SupplyOrderRaised`` in the outbox;
  ``supply_orders_closed``: the needs a new cartridge closed (once-only inserts).
- ``stock_usage``: a unit taken from stock for a new cartridge, once per generation.
- ``imports``: progress and row errors of CSV imports.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.devices.core.importing import ImportProgress
from services.devices.core.model import Device, HistoryEntry
from services.devices.core.ports import LevelChange, SerialTaken
from services.devices.core.replenishment import DeviceLevels, Track
from shared import projections
from shared.contracts import DEVICE_EVENTS, SupplyOrderRaised
from shared.contracts import DEVICES as DEVICES_TOPIC
from shared.events import utcnow
from shared.store import Document, new_with_outbox, with_outbox

DEVICES = "devices"
SUPPLY_LEVELS = "supply_levels"
SUPPLY_ORDERS = "supply_orders"
SUPPLY_ORDERS_CLOSED = "supply_orders_closed"
STOCK_USAGE = "stock_usage"
IMPORTS = "imports"
DUPLICATE_KEY = 11000
BULK_CHUNK = 1000  # documents per insert_many: modest commands

INDEXES = {
    DEVICES: [
        IndexModel([("serial", ASCENDING)], unique=True, name="serial_unique"),
        IndexModel([("org_id", ASCENDING)], name="by_org"),
    ],
    # SUPPLY_LEVELS: none besides _id ("<device>:<seq>": a device's history is an _id range).
    SUPPLY_ORDERS: [IndexModel([("device_id", ASCENDING)], name="by_device")],
    SUPPLY_ORDERS_CLOSED: [IndexModel([("device_id", ASCENDING)], name="by_device")],
    STOCK_USAGE: [IndexModel([("device_id", ASCENDING)], name="by_device")],
    projections.USERS: [IndexModel([("org_id", ASCENDING)], name="by_org")],
}

NOT_SHOWN = {"outbox": 0, "history": 0}


def _device_doc(device: Device) -> Document:
    doc = device.model_dump(exclude={"device_id"})
    doc["_id"] = device.device_id
    return doc


def to_device(doc: Document) -> Device:
    return Device(
        device_id=doc["_id"], **{k: v for k, v in doc.items() if k in Device.model_fields}
    )


def _only_duplicates(exc: BulkWriteError) -> set[int]:
    """Positions refused as duplicates; re-raises when anything else failed."""
    errors = exc.details.get("writeErrors", [])
    if any(e.get("code") != DUPLICATE_KEY for e in errors) or exc.details.get("writeConcernErrors"):
        raise exc
    return {int(e["index"]) for e in errors}


class MongoDevices:
    """:class:`services.devices.core.ports.DeviceRepository` on MongoDB."""

    def __init__(self, db: AsyncDatabase[Document], on_write: Callable[[Device], None]) -> None:
        self.db = db
        self.devices = db[DEVICES]
        self._on_write = on_write  # nudges the outbox relay, updates the in-memory directory

    async def get(self, device_id: str) -> Device | None:
        doc = await self.devices.find_one({"_id": device_id}, NOT_SHOWN)
        return to_device(doc) if doc else None

    async def create(self, device: Device, entry: HistoryEntry) -> None:
        doc = {**_device_doc(device), "history": [entry.model_dump()]}
        try:
            await self.devices.insert_one(
                new_with_outbox(doc, (DEVICES_TOPIC, device.device_id, device.state()))
            )
        except DuplicateKeyError as exc:
            raise SerialTaken(device.serial) from exc
        self._on_write(device)

    async def create_many(self, devices: Sequence[tuple[Device, HistoryEntry]]) -> set[int]:
        docs = [
            new_with_outbox(
                {**_device_doc(d), "history": [e.model_dump()]},
                (DEVICES_TOPIC, d.device_id, d.state()),
            )
            for d, e in devices
        ]
        refused: set[int] = set()
        for start in range(0, len(docs), BULK_CHUNK):
            try:
                await self.devices.insert_many(docs[start : start + BULK_CHUNK], ordered=False)
            except BulkWriteError as exc:
                refused |= {start + i for i in _only_duplicates(exc)}
        for i, (device, _) in enumerate(devices):
            if i not in refused:
                self._on_write(device)
        return refused

    async def save(self, before: Device, after: Device, entry: HistoryEntry) -> bool:
        fields = _device_doc(after)
        del fields["_id"]
        update = with_outbox({"$set": fields}, (DEVICES_TOPIC, after.device_id, after.state()))
        update["$push"] = {"history": entry.model_dump()}
        result = await self.devices.update_one(
            {"_id": before.device_id, "revision": before.revision}, update
        )
        if result.modified_count != 1:
            return False
        self._on_write(after)
        return True

    async def history(self, device_id: str) -> list[HistoryEntry] | None:
        doc = await self.devices.find_one({"_id": device_id}, {"history": 1})
        if doc is None:
            return None
        entries = [HistoryEntry.model_validate(h) for h in doc.get("history", [])]
        async for use in self.db[STOCK_USAGE].find({"device_id": device_id}):
            entries.append(
                HistoryEntry(
                    at=use["at"],
                    by=None,
                    action="stock_used",
                    changes={"consumable": use["consumable"], "units": -1},
                    key=use["_id"],
                )
            )
        return sorted(entries, key=lambda e: e.at)

    async def known_organisations(self, org_ids: Iterable[str]) -> set[str]:
        ids = sorted(set(org_ids))
        if not ids:
            return set()
        query: Document = {"_id": ids[0]} if len(ids) == 1 else {"_id": {"$in": ids}}
        cursor = self.db[projections.ORGANISATIONS].find(query, {"_id": 1})
        return {d["_id"] async for d in cursor}

    async def find(self, query: Document, limit: int) -> list[Device]:
        cursor = (
            self.devices.find({**query, "removed": False}, NOT_SHOWN).sort("serial").limit(limit)
        )
        return [to_device(doc) async for doc in cursor]

    async def all_refs(self) -> list[Document]:
        fields = {"org_id": 1, "serial": 1, "auto_replenishment": 1, "removed": 1, "revision": 1}
        return [doc async for doc in self.devices.find({}, fields)]


class MongoLevels:
    """:class:`services.devices.core.ports.LevelStore`: the insert-only level history."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.collection = db[SUPPLY_LEVELS]

    async def load_all(self) -> dict[str, DeviceLevels]:
        latest: dict[str, tuple[int, str]] = {}
        async for doc in self.collection.find({}, {"device_id": 1, "seq": 1, "state": 1}):
            seen = latest.get(doc["device_id"])
            if seen is None or doc["seq"] > seen[0]:
                latest[doc["device_id"]] = (doc["seq"], doc["state"])
        result = {}
        for device_id, (seq, raw) in latest.items():
            state = json.loads(raw)
            result[device_id] = DeviceLevels(
                last_at=state["last_at"],
                tracks={c: Track.from_doc(t) for c, t in state["tracks"].items()},
                seq=seq,
            )
        return result

    async def append(self, changes: Sequence[LevelChange]) -> None:
        docs = [
            {
                # The key makes a re-delivered batch's write a refused duplicate.
                "_id": f"{c.device_id}:{c.seq:09d}",
                "device_id": c.device_id,
                "seq": c.seq,
                "at": c.at,
                "levels": c.levels,
                # The folded state as one compact JSON string: the service's private
                # snapshot, never queried; one field instead of dozens is much cheaper to
                # store on FerretDB.
                "state": json.dumps(
                    {
                        "last_at": c.state.last_at,
                        "tracks": {name: t.to_doc() for name, t in c.state.tracks.items()},
                    },
                    separators=(",", ":"),
                ),
            }
            for c in changes
        ]
        for start in range(0, len(docs), BULK_CHUNK):
            try:
                await self.collection.insert_many(docs[start : start + BULK_CHUNK], ordered=False)
            except BulkWriteError as exc:
                _only_duplicates(exc)

    async def history(self, device_id: str, limit: int) -> list[Document]:
        # "<device_id>:" up to (not including) "<device_id>;": ";" follows ":" in ASCII.
        key = {"$gte": f"{device_id}:", "$lt": f"{device_id};"}
        cursor = self.collection.find({"_id": key}, {"at": 1, "levels": 1, "seq": 1})
        docs = sorted([d async for d in cursor], key=lambda d: d["seq"])
        return docs[-limit:]


class MongoSupplyOrders:
    """:class:`services.devices.core.ports.SupplyOrders`: one unique insert per need."""

    def __init__(self, db: AsyncDatabase[Document], nudge: Callable[[], None]) -> None:
        self.orders = db[SUPPLY_ORDERS]
        self.closed = db[SUPPLY_ORDERS_CLOSED]
        self._nudge = nudge

    async def raise_once(self, orders: Sequence[SupplyOrderRaised]) -> dict[str, tuple[str, bool]]:
        standing: dict[str, tuple[str, bool]] = {}
        for order in orders:
            doc = {"_id": order.order_id, **order.model_dump(mode="python")}
            try:
                await self.orders.insert_one(
                    new_with_outbox(doc, (DEVICE_EVENTS, order.device_id, order))
                )
                standing[order.order_id] = (order.action.value, True)
            except DuplicateKeyError:
                earlier = await self.orders.find_one({"_id": order.order_id}, {"action": 1})
                action = earlier["action"] if earlier else order.action.value
                standing[order.order_id] = (action, False)
        if any(inserted for _, inserted in standing.values()):
            self._nudge()
        return standing

    async def close(self, order_ids: Iterable[str], at: datetime) -> None:
        docs = [{"_id": i, "device_id": i.split(":", 1)[0], "closed_at": at} for i in order_ids]
        if docs:
            try:
                await self.closed.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                _only_duplicates(exc)

    async def of_device(self, device_id: str) -> list[Document]:
        closed = {
            d["_id"]: d["closed_at"] async for d in self.closed.find({"device_id": device_id})
        }
        orders = [d async for d in self.orders.find({"device_id": device_id}, {"outbox": 0})]
        for order in orders:
            order["order_id"] = order.pop("_id")
            order["closed_at"] = closed.get(order["order_id"])
            order["status"] = "closed" if order["closed_at"] else "open"
        return sorted(orders, key=lambda o: o["raised_at"])


class MongoStock:
    """:class:`services.devices.core.ports.Stock`: stock set by managers, minus units used."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.devices = db[DEVICES]
        self.usage = db[STOCK_USAGE]

    async def _used_since(
        self, device_ids: list[str], since: Mapping[str, datetime | None]
    ) -> dict[tuple[str, str], int]:
        query: Document = (
            {"device_id": device_ids[0]}
            if len(device_ids) == 1
            else {"device_id": {"$in": device_ids}}
        )
        used: dict[tuple[str, str], int] = {}
        async for use in self.usage.find(query):
            set_at = since.get(use["device_id"])
            if set_at is None or use["at"] > set_at:
                key = (use["device_id"], use["consumable"])
                used[key] = used.get(key, 0) + 1
        return used

    async def on_hand(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        wanted = list(keys)
        device_ids = sorted({d for d, _ in wanted})
        if not device_ids:
            return {}
        query: Document = (
            {"_id": device_ids[0]} if len(device_ids) == 1 else {"_id": {"$in": device_ids}}
        )
        docs = {
            d["_id"]: d async for d in self.devices.find(query, {"stock": 1, "stock_set_at": 1})
        }
        used = await self._used_since(
            device_ids, {i: d.get("stock_set_at") for i, d in docs.items()}
        )
        result: dict[tuple[str, str], int] = {}
        for device_id, consumable in wanted:
            base = docs.get(device_id, {}).get("stock", {}).get("on_hand", {}).get(consumable, 0)
            result[(device_id, consumable)] = max(0, base - used.get((device_id, consumable), 0))
        return result

    async def used_since(self, device: Device) -> dict[str, int]:
        used = await self._used_since([device.device_id], {device.device_id: device.stock_set_at})
        return {c: n for (_, c), n in used.items()}

    async def use_units(self, uses: Sequence[tuple[str, str, int, datetime]]) -> None:
        docs = [
            {
                "_id": f"{d}:{c}:{g}",
                "device_id": d,
                "consumable": c,
                "generation": g,
                "at": at,
            }
            for d, c, g, at in uses
        ]
        if docs:
            try:
                await self.usage.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                _only_duplicates(exc)


class MongoImports:
    """:class:`services.devices.core.importing.ImportJournal` and the import reports."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.imports = db[IMPORTS]

    async def start(self, import_id: str, total: int, by: str) -> None:
        await self.imports.insert_one(
            {
                "_id": import_id,
                "status": "running",
                "total": total,
                "processed": 0,
                "imported": 0,
                "failed": 0,
                "errors": [],
                "by": by,
                "started_at": utcnow(),
                "finished_at": None,
            }
        )

    async def progress(self, import_id: str, progress: ImportProgress, *, done: bool) -> None:
        fields: dict[str, Any] = {
            "processed": progress.processed,
            "imported": progress.imported,
            "failed": progress.failed,
            "errors": [
                {"line": e.line, "reason": e.reason, "serial": e.serial} for e in progress.errors
            ],
        }
        if done:
            fields.update(status="done", finished_at=utcnow())
        await self.imports.update_one({"_id": import_id}, {"$set": fields})

    async def failed(self, import_id: str, reason: str) -> None:
        await self.imports.update_one(
            {"_id": import_id},
            {"$set": {"status": "failed", "reason": reason, "finished_at": utcnow()}},
        )

    async def get(self, import_id: str) -> Document | None:
        return await self.imports.find_one({"_id": import_id})
