"""The agents' view of an organisation's account: its balance over every billing entry, and
the latest entries."""

from __future__ import annotations

from services.identity.adapters.store import IdentityStore
from services.identity.core.model import AccountEntry, AccountView
from services.identity.service_layer import not_found
from shared.auth import Principal, require_role
from shared.contracts import Role

LATEST_ENTRIES = 500


async def account_view(principal: Principal, org_id: str, store: IdentityStore) -> AccountView:
    require_role(principal, Role.AGENT)
    org = await store.org(org_id)
    if org is None:
        raise not_found("organisation")
    # Entries first: the balance, read after them, covers at least every entry shown (the
    # billing feed may add one between the two reads; there is no snapshot across them).
    entries = await store.account_entries(org["customer_number"], LATEST_ENTRIES)
    balance = await store.account_balance(org["customer_number"])
    return AccountView(
        org_id=org_id,
        customer_number=org["customer_number"],
        balance={currency: str(amount) for currency, amount in balance.items()},
        entries=[
            AccountEntry(
                entry_id=e["_id"],
                kind=e["kind"],
                amount=e["amount"],
                currency=e["currency"],
                reference=e["reference"],
                booked_at=e["booked_at"].isoformat()
                if hasattr(e["booked_at"], "isoformat")
                else str(e["booked_at"]),
            )
            for e in entries
        ],
    )
