"""Projections of the compacted state topics into a service's own database.

A service that needs to know about organisations, users, devices or signing keys keeps its
own copy, fed from the state topic by one of these handlers. Each copy keeps the highest
revision it has seen, so redelivery and reordering change nothing.
"""

from __future__ import annotations

from pymongo.asynchronous.database import AsyncDatabase

from shared.bus import Handler, Message
from shared.contracts import DeviceState, OrganisationState, SigningKey, UserState
from shared.store import Document, upsert_if_newer

ORGANISATIONS = "organisations_projection"
USERS = "users_projection"
DEVICES = "devices_projection"
SIGNING_KEYS = "signing_keys"


def organisations(db: AsyncDatabase[Document]) -> Handler:
    async def handle(msg: Message) -> None:
        state = msg.parse(OrganisationState)
        await upsert_if_newer(
            db[ORGANISATIONS], state.org_id, state.revision, state.model_dump(mode="json")
        )

    return handle


def users(db: AsyncDatabase[Document]) -> Handler:
    async def handle(msg: Message) -> None:
        state = msg.parse(UserState)
        await upsert_if_newer(
            db[USERS], state.user_id, state.revision, state.model_dump(mode="json")
        )

    return handle


def devices(db: AsyncDatabase[Document]) -> Handler:
    async def handle(msg: Message) -> None:
        state = msg.parse(DeviceState)
        await upsert_if_newer(
            db[DEVICES], state.device_id, state.revision, state.model_dump(mode="json")
        )

    return handle


def signing_keys(db: AsyncDatabase[Document]) -> Handler:
    async def handle(msg: Message) -> None:
        key = msg.parse(SigningKey)
        await db[SIGNING_KEYS].update_one(
            {"_id": key.kid}, {"$set": key.model_dump(mode="json")}, upsert=True
        )

    return handle
