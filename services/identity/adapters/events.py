"""Identity's consumers: the devices it must know for registration, and the billing feed."""

from __future__ import annotations

from pymongo.asynchronous.database import AsyncDatabase

from services.identity.adapters.store import IdentityStore
from services.identity.core.model import balance_fields
from shared.bus import Handler, Message
from shared.contracts import AccountEvent


def account_events(db: AsyncDatabase[dict[str, object]]) -> Handler:
    """Billing's payments and credits, kept once per billing entry id (redelivery is a no-op)."""
    store = IdentityStore(db)

    async def handle(msg: Message) -> None:
        entry = msg.parse(AccountEvent)
        await store.record_account_entry(
            {
                "_id": entry.entry_id,
                "customer_number": entry.customer_number,
                "kind": entry.kind.value,
                "amount": str(entry.amount),
                "currency": entry.currency,
                "reference": entry.reference,
                "booked_at": entry.booked_at,
                **balance_fields(entry.kind.value, entry.amount, entry.currency),
            }
        )

    return handle
