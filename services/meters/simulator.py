"""A telemetry simulator: realistic eMaintenance reports of a fleet on ``emaintenance.telemetry``.

    python -m services.meters.simulator --devices 1000 --rate 200 [--count 10000] [--prefix SIM]

Counters grow with use (colour a share of the total, scans on their own), toner runs down and
is replaced, error codes come and go, and now and then a report is sent twice, a counter goes
down (a swapped board) or a message is malformed. Serials are ``<prefix>-<n>``; the devices
must exist in the devices service for their readings to be accepted. Kafka as
``FLEETDESK_KAFKA_*`` say (the ``emaintenance`` principal with SASL). The benchmark uses the
same generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shared.bus import new_producer
from shared.config import KafkaSettings
from shared.contracts import TELEMETRY

ERRORS = ("C-2557", "J-7201", "SC-542", "P-0011")
TONERS = ("black", "cyan", "magenta", "yellow")


@dataclass
class Odds:
    duplicate: float = 0.01
    lower: float = 0.001
    malformed: float = 0.001
    error: float = 0.01


@dataclass
class SimDevice:
    serial: str
    counters: dict[str, int] = field(default_factory=dict)
    supplies: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    last: bytes | None = None


class Simulator:
    def __init__(self, serials: list[str], odds: Odds | None = None, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.odds = odds or Odds()
        self.devices = [
            SimDevice(
                s,
                counters={"total": self.rng.randint(1000, 90000), "colour": 0, "scan": 0},
                supplies={t: self.rng.randint(20, 100) for t in TONERS},
            )
            for s in serials
        ]

    def report(self, device: SimDevice) -> bytes:
        rng, odds = self.rng, self.odds
        if device.last is not None and rng.random() < odds.duplicate:
            return device.last  # sent twice
        if rng.random() < odds.malformed:
            return b'{"serial": "' + device.serial.encode() + b'", "counters": "lots"}'
        pages = rng.randint(1, 60)
        device.counters["total"] += pages
        device.counters["colour"] += rng.randint(0, pages)
        device.counters["scan"] += rng.randint(0, 10)
        for toner in TONERS:
            level = device.supplies[toner] - rng.randint(0, 2)
            device.supplies[toner] = 100 if level < 3 else level  # replaced when empty
        if rng.random() < odds.error:
            device.errors = [rng.choice(ERRORS)]
        elif device.errors and rng.random() < 0.3:
            device.errors = []
        counters = dict(device.counters)
        if rng.random() < odds.lower:
            counters["total"] = max(0, counters["total"] - rng.randint(1, 500))
        body = {
            "serial": device.serial,
            "sent_at": datetime.now(UTC).isoformat(),
            "counters": counters,
            "supplies": dict(device.supplies),
            "errors": list(device.errors),
        }
        device.last = json.dumps(body).encode()
        return device.last

    def stream(self, count: int) -> Iterator[tuple[str, bytes]]:
        """``count`` reports, round-robin over the fleet (each device in turn)."""
        n = len(self.devices)
        for i in range(count):
            device = self.devices[i % n]
            yield device.serial, self.report(device)


async def produce(
    kafka: KafkaSettings, topic: str, reports: Iterator[tuple[str, bytes]], rate: float | None
) -> int:
    """Send the reports (at ``rate`` per second when given); returns how many were sent."""
    producer = new_producer(kafka, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    sent = 0
    started = time.monotonic()
    try:
        pending = []
        for serial, value in reports:
            pending.append(await producer.send(topic, value=value, key=serial.encode()))
            sent += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.gather(*pending)
                    pending.clear()
                    await asyncio.sleep(ahead)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="reports per second")
    parser.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    parser.add_argument("--prefix", default="SIM")
    args = parser.parse_args()
    serials = [f"{args.prefix}-{i:07d}" for i in range(args.devices)]
    count = args.count or 2**62
    sim = Simulator(serials, seed=int(time.time()))
    asyncio.run(produce(KafkaSettings(), TELEMETRY.name, sim.stream(count), args.rate))


if __name__ == "__main__":
    main()
