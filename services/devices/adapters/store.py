"""The devices service's MongoDB collections and how a device is written (with its outbox)."""

from __future__ import annotations

import uuid
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from services.devices.core.model import DeviceCreate, DevicePublic, Location
from shared import projections
from shared.contracts import DEVICES as DEVICES_TOPIC
from shared.contracts import DeviceState
from shared.store import Document, new_with_outbox, with_outbox

DEVICES = "devices"

INDEXES = {
    DEVICES: [
        IndexModel([("serial", ASCENDING)], unique=True, name="serial_unique"),
        IndexModel([("org_id", ASCENDING)], name="by_org"),
    ],
    projections.USERS: [IndexModel([("org_id", ASCENDING)], name="by_org")],
}


def _state(doc: Document) -> DeviceState:
    return DeviceState(
        device_id=doc["_id"],
        org_id=doc["org_id"],
        serial=doc["serial"],
        model=doc["model"],
        removed=doc.get("removed", False),
        revision=doc["revision"],
    )


def public(doc: Document) -> DevicePublic:
    return DevicePublic(
        device_id=doc["_id"], **{k: doc[k] for k in DevicePublic.model_fields if k != "device_id"}
    )


class DeviceStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.db = db
        self.devices = db[DEVICES]

    async def organisation_known(self, org_id: str) -> bool:
        return await self.db[projections.ORGANISATIONS].find_one({"_id": org_id}) is not None

    async def create(self, data: DeviceCreate) -> Document:
        device_id = uuid.uuid4().hex
        doc: Document = {"_id": device_id, **data.model_dump(), "removed": False, "revision": 1}
        # The outbox entry rides in the inserted document itself: one atomic write.
        await self.devices.insert_one(new_with_outbox(doc, (DEVICES_TOPIC, device_id, _state(doc))))
        return doc

    async def get(self, device_id: str) -> Document | None:
        return await self.devices.find_one({"_id": device_id, "removed": False}, {"outbox": 0})

    async def list(self, query: dict[str, Any], limit: int) -> list[Document]:
        cursor = (
            self.devices.find({**query, "removed": False}, {"outbox": 0})
            .sort("serial")
            .limit(limit)
        )
        return [doc async for doc in cursor]

    async def update(self, doc: Document, changes: Document) -> Document | None:
        """Apply ``changes`` if nobody changed the device meanwhile; publish the new state."""
        new = {**doc, **changes, "revision": doc["revision"] + 1}
        update = with_outbox(
            {"$set": {**changes, "revision": new["revision"]}},
            (DEVICES_TOPIC, doc["_id"], _state(new)),
        )
        result = await self.devices.update_one(
            {"_id": doc["_id"], "revision": doc["revision"]}, update
        )
        return new if result.modified_count == 1 else None

    async def set_location(self, doc: Document, location: Location) -> Document | None:
        return await self.update(doc, {"location": location.model_dump()})
