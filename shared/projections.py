"""Projections of the compacted state topics into a service's own database.

A service that needs to know about organisations, users, devices or signing keys keeps its
own copy, fed from the state topic by one of these handlers. Each copy keeps the highest
revision it has seen, so redelivery and reordering change nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from shared import contracts
from shared.bus import Handler, Message, Subscription
from shared.contracts import DeviceState, OrganisationState, SigningKey, Topic, UserState
from shared.store import Document, upsert_if_newer

ORGANISATIONS = "organisations_projection"
USERS = "users_projection"
DEVICES = "devices_projection"
SIGNING_KEYS = "signing_keys"

# Who may see what is asked of these copies by organisation.
INDEXES = {
    USERS: [IndexModel([("org_id", ASCENDING)], name="by_org")],
    DEVICES: [IndexModel([("org_id", ASCENDING)], name="by_org")],
}

HandlerFactory = Callable[[AsyncDatabase[Document]], Handler]


def _state(collection: str, model: type[Any], id_field: str) -> HandlerFactory:
    """A handler keeping ``collection`` at the latest revision of each ``model`` by id."""

    def factory(db: AsyncDatabase[Document]) -> Handler:
        async def handle(msg: Message) -> None:
            state = msg.parse(model)
            await upsert_if_newer(
                db[collection],
                getattr(state, id_field),
                state.revision,
                state.model_dump(mode="json"),
            )

        return handle

    return factory


organisations = _state(ORGANISATIONS, OrganisationState, "org_id")
users = _state(USERS, UserState, "user_id")
devices = _state(DEVICES, DeviceState, "device_id")


async def record_signing_key(collection: AsyncCollection[Document], key: SigningKey) -> None:
    """Keep ``key``; retirement is final: once a key id is seen retired, a later record that
    says otherwise (an old instance restarting, a rollback) does not bring it back."""
    fields = key.model_dump(mode="json")
    if key.retired:
        update: Document = {"$set": fields}
    else:
        del fields["retired"]
        update = {"$set": fields, "$setOnInsert": {"retired": False}}
    await collection.update_one({"_id": key.kid}, update, upsert=True)


def signing_keys(db: AsyncDatabase[Document]) -> Handler:
    # Keys carry no revision: a key id names one key for good (retirement only adds a flag).
    async def handle(msg: Message) -> None:
        await record_signing_key(db[SIGNING_KEYS], msg.parse(SigningKey))

    return handle


BY_TOPIC: dict[str, HandlerFactory] = {
    contracts.ORGANISATIONS.name: organisations,
    contracts.USERS.name: users,
    contracts.DEVICES.name: devices,
}


def subscription(service: str, db: AsyncDatabase[Document], *topics: Topic) -> Subscription:
    """The ``<service>.projections`` consumer group, keeping copies of the given state topics."""
    return Subscription(
        group=f"{service}.projections",
        handlers={topic.name: BY_TOPIC[topic.name](db) for topic in topics},
    )
