"""List and replay dead letters: ``python -m shared.deadletters list|replay``.

Every consumer parks what it cannot process on ``fleetdesk.dead-letter`` with the original
record (key, value and headers, byte for byte, within bounds) and the reason. Once the cause is
fixed (a consumer's bug, a missing projection), an operator replays chosen letters: each is
re-published to its original topic with its original key, value and headers, so the event keeps
its event id and idempotent consumers that handled it already do nothing the second time.

    python -m shared.deadletters list [--topic T] [--group G] [--since 2h|ISO time] [--json]
    python -m shared.deadletters replay <event id | P:O> ... [--dry-run]

``P:O`` names a letter by its partition and offset on the dead-letter topic (the first column of
``list``); an event id names every letter of that event (one replay per original record). A
letter whose record was cut to fit, or written before letters kept the original record, is
refused with the reason, and then nothing is replayed. Kafka settings come from the usual
``FLEETDESK_KAFKA_*`` variables.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TextIO

from aiokafka import TopicPartition
from pydantic import ValidationError

from shared.bus import Publisher, new_admin, new_consumer
from shared.config import KafkaSettings
from shared.contracts import DEAD_LETTER, DeadLetter
from shared.events import parse_json

_POSITION = re.compile(r"^(\d+):(\d+)$")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class Parked:
    """A dead letter and where it sits on the dead-letter topic."""

    partition: int
    offset: int
    letter: DeadLetter

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"


class ReplayRefused(Exception):
    """Some requested letters cannot be replayed; nothing was."""


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``30m``, ``2h``, ``7d`` (ago) or an ISO 8601 time (UTC when it has no offset)."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(text.strip())
    if match:
        return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since takes 30m, 2h, 7d or an ISO 8601 time, not {text!r}"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def read_dead_letters(
    settings: KafkaSettings,
    *,
    since: datetime | None = None,
    err: TextIO = sys.stderr,
    timeout: float = 60.0,
) -> list[Parked]:
    """Every dead letter on the topic now (from ``since`` on), in partition and offset order."""
    consumer = new_consumer(
        settings, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(DEAD_LETTER.name, p) for p in await _partitions(settings)]
        if not tps:
            return []
        consumer.assign(tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        if since is not None:
            starts = await consumer.offsets_for_times(
                {tp: int(since.timestamp() * 1000) for tp in tps}
            )
            for tp in tps:
                found = starts.get(tp)
                consumer.seek(tp, found.offset if found is not None else ends[tp])
        parked: list[Parked] = []
        remaining = {tp for tp in tps if ends[tp] > 0}

        async def drain() -> None:
            while remaining:
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
                if not remaining:
                    return
                batch = await consumer.getmany(*remaining, timeout_ms=500)
                for tp, records in batch.items():
                    for record in records:
                        if record.offset >= ends[tp]:
                            continue
                        try:
                            letter = parse_json(DeadLetter, record.value or b"")
                        except ValidationError:
                            print(
                                f"skipped {tp.partition}:{record.offset}: not a dead letter",
                                file=err,
                            )
                            continue
                        if since is None or letter.failed_at >= since:
                            parked.append(Parked(tp.partition, record.offset, letter))

        await asyncio.wait_for(drain(), timeout)
        return sorted(parked, key=lambda p: (p.partition, p.offset))
    finally:
        await consumer.stop()


async def _partitions(settings: KafkaSettings) -> list[int]:
    admin = new_admin(settings)
    await admin.start()
    try:
        described = await admin.describe_topics([DEAD_LETTER.name])
    finally:
        await admin.close()
    return sorted(
        p["partition"]
        for t in described
        if t["topic"] == DEAD_LETTER.name and t["error_code"] == 0
        for p in t["partitions"]
    )


def select(
    parked: Sequence[Parked], *, topic: str | None = None, group: str | None = None
) -> list[Parked]:
    return [
        p
        for p in parked
        if (topic is None or p.letter.original_topic == topic)
        and (group is None or p.letter.consumer_group == group)
    ]


def chosen(parked: Sequence[Parked], ids: Sequence[str]) -> list[Parked]:
    """The letters named by ``ids``, one per original record; ReplayRefused when one cannot be.

    Raises before anything is replayed, so that a replay is all or nothing.
    """
    problems: list[str] = []
    picked: dict[tuple[str, int, int], Parked] = {}
    for ident in ids:
        if _POSITION.match(ident):
            matches = [p for p in parked if p.position == ident]
        else:
            matches = [p for p in parked if p.letter.event_id == ident]
        if not matches:
            problems.append(f"{ident}: no such dead letter")
            continue
        for p in matches:
            letter = p.letter
            if letter.truncated:
                problems.append(
                    f"{ident} (dead letter {p.position}): cannot replay a cut record: the letter "
                    f"kept {_kept(letter)} of its {letter.value_size} bytes to fit the "
                    "dead-letter topic; the original must come from its producer"
                )
            elif not letter.record_kept:
                problems.append(
                    f"{ident} (dead letter {p.position}): cannot replay: written before dead "
                    "letters kept the original key, value and headers"
                )
            else:
                picked.setdefault((letter.original_topic, letter.partition, letter.offset), p)
    if problems:
        raise ReplayRefused("\n".join(problems))
    return list(picked.values())


def _kept(letter: DeadLetter) -> int:
    return len(base64.b64decode(letter.value_b64)) if letter.value_b64 else 0


def record_of(letter: DeadLetter) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """The original key, value and headers of a letter that kept them."""
    key = base64.b64decode(letter.key_b64) if letter.key_b64 is not None else None
    value = base64.b64decode(letter.value_b64) if letter.value_b64 is not None else None
    headers = [(h.name, base64.b64decode(h.value_b64)) for h in letter.headers]
    return key, value, headers


async def replay(settings: KafkaSettings, letters: Sequence[Parked], out: TextIO) -> None:
    async with Publisher(settings, "deadletters") as publisher:
        for p in letters:
            key, value, headers = record_of(p.letter)
            await publisher.send_raw(p.letter.original_topic, key, value, headers)
            print(
                f"replayed {p.letter.event_id} (dead letter {p.position}) to "
                f"{p.letter.original_topic}",
                file=out,
            )


def _line(p: Parked) -> str:
    letter = p.letter
    size = "-" if letter.value_size is None else str(letter.value_size)
    flags = "cut" if letter.truncated else ("replayable" if letter.record_kept else "legacy")
    return "\t".join(
        [
            p.position,
            letter.failed_at.isoformat(timespec="seconds"),
            f"{letter.original_topic}:{letter.partition}:{letter.offset}",
            letter.consumer_group,
            letter.event_id,
            size,
            flags,
            letter.error.replace("\n", " ")[:160],
        ]
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared.deadletters", description="List and replay dead letters."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list dead letters (oldest first per partition)")
    listing.add_argument("--topic", help="only letters of this original topic")
    listing.add_argument("--group", help="only letters of this consumer group")
    listing.add_argument("--since", type=parse_since, help="30m, 2h, 7d or an ISO 8601 time")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    replaying = commands.add_parser(
        "replay", help="re-publish letters to their original topic with key, value and headers"
    )
    replaying.add_argument("ids", nargs="+", help="event ids, or P:O positions from `list`")
    replaying.add_argument("--dry-run", action="store_true", help="check and show, publish nothing")
    return parser


async def run(
    argv: Sequence[str],
    *,
    settings: KafkaSettings | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """The command line: 0 when done, 2 when a replay is refused (nothing replayed)."""
    args = _parser().parse_args(list(argv))
    settings = settings or KafkaSettings()
    if args.command == "list":
        parked = select(
            await read_dead_letters(settings, since=args.since, err=err),
            topic=args.topic,
            group=args.group,
        )
        for p in parked:
            if args.json:
                extra = f'{{"position": "{p.position}", "letter": '
                print(extra + p.letter.model_dump_json() + "}", file=out)
            else:
                print(_line(p), file=out)
        return 0
    try:
        letters = chosen(await read_dead_letters(settings, err=err), args.ids)
    except ReplayRefused as refused:
        print(f"replay refused, nothing was replayed:\n{refused}", file=err)
        return 2
    if args.dry_run:
        for p in letters:
            print(f"would replay {_line(p)}", file=out)
        return 0
    await replay(settings, letters, out)
    return 0


def main() -> int:
    return asyncio.run(run(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
