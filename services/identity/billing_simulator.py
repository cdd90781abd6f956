"""A small stand-in for the billing system: writes invoices, payments and credits of a customer
to ``billing.account-events``, keyed by customer number (the topic contract in shared/contracts).

``python -m services.identity.billing_simulator --customer-number C100 --count 5``
The same ``--seed`` gives the same entries (same ids), which is how a redelivery looks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from shared.bus import Publisher
from shared.config import KafkaSettings
from shared.contracts import BILLING_ACCOUNT_EVENTS, AccountEvent, AccountEventKind


def entries(customer_number: str, count: int, seed: int) -> list[AccountEvent]:
    rng = random.Random(f"{customer_number}:{seed}")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for i in range(count):
        kind = (
            AccountEventKind.INVOICE
            if i % 2 == 0
            else rng.choice([AccountEventKind.PAYMENT, AccountEventKind.CREDIT])
        )
        out.append(
            AccountEvent(
                entry_id=f"{customer_number}-{seed}-{i}",
                customer_number=customer_number,
                kind=kind,
                amount=Decimal(rng.randint(1000, 50000)) / 100,
                currency="EUR",
                reference=f"INV-{seed}-{i // 2}",
                booked_at=start + timedelta(days=7 * i + seed),
            )
        )
    return out


async def simulate(
    kafka: str | KafkaSettings, customer_number: str, *, count: int = 5, seed: int = 1
) -> list[AccountEvent]:
    """Publish ``count`` account events for ``customer_number``; return them.

    ``kafka``: the billing principal's settings, or a bootstrap address reached with the
    security of ``FLEETDESK_KAFKA_*`` (``SASL_USERNAME=billing`` and its password).
    """
    events = entries(customer_number, count, seed)
    settings = KafkaSettings(bootstrap_servers=kafka) if isinstance(kafka, str) else kafka
    async with Publisher(settings, "billing-simulator") as pub:
        for event in events:
            await pub.publish(BILLING_ACCOUNT_EVENTS, customer_number, event)
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customer-number", required=True)
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("FLEETDESK_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    )
    args = parser.parse_args()
    sent = asyncio.run(
        simulate(args.bootstrap, args.customer_number, count=args.count, seed=args.seed)
    )
    for event in sent:
        print(event.model_dump_json())


if __name__ == "__main__":
    main()
