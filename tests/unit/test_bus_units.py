"""Fast tests of the bus and outbox building blocks (no broker, no database)."""

from __future__ import annotations

import pytest

from shared.bus import Message, PermanentError
from shared.contracts import DEAD_LETTER, Topic
from shared.events import HEADER_EVENT_ID, Event
from shared.store import OUTBOX, new_with_outbox, outbox_entries, with_outbox


class Ping(Event):
    event_type = "test.ping"

    n: int


class Pong(Event):
    event_type = "test.pong"

    n: int


PINGS = Topic(name="test.pings", description="test", key="n", events=(Ping,))


def message(value: bytes | None, headers: dict[str, str] | None = None) -> Message:
    return Message(
        topic="test.pings", partition=2, offset=41, key="7", value=value, headers=headers or {}
    )


def test_event_id_comes_from_the_header_when_present() -> None:
    msg = message(b"{}", {HEADER_EVENT_ID: "abc123"})
    assert msg.event_id == "abc123"


def test_event_id_is_derived_from_the_position_without_an_envelope() -> None:
    assert message(b"{}").event_id == "test.pings:2:41"
    # Stable: the same record redelivered gets the same id.
    assert message(b"{}").event_id == message(b"other").event_id


def test_parse_validates_the_value() -> None:
    assert message(b'{"n": 5}').parse(Ping) == Ping(n=5)


@pytest.mark.parametrize("value", [b"not json", b'{"n": "x"}', b'{"n": 1, "extra": 2}', b"[]"])
def test_parse_of_a_malformed_value_is_a_permanent_error(value: bytes) -> None:
    with pytest.raises(PermanentError, match="invalid Ping"):
        message(value).parse(Ping)


def test_parse_of_a_tombstone_is_a_permanent_error() -> None:
    with pytest.raises(PermanentError, match="empty value"):
        message(None).parse(Ping)


def test_outbox_entries_carry_topic_key_type_and_increasing_seq() -> None:
    entries = outbox_entries(
        (PINGS, "1", Ping(n=1)), (PINGS, "2", Ping(n=2)), (PINGS, "3", Ping(n=3))
    )
    assert len(entries) == 3
    assert len(set(entries)) == 3  # a fresh event id per entry
    values = list(entries.values())
    assert [e["seq"] for e in values] == sorted(e["seq"] for e in values)
    assert len({e["seq"] for e in values}) == 3
    for n, entry in enumerate(values, start=1):
        assert entry["topic"] == "test.pings"
        assert entry["key"] == str(n)
        assert entry["event_type"] == "test.ping"
        assert entry["event_version"] == 1
        assert entry["payload"] == {"n": n}


def test_with_outbox_adds_entries_to_the_same_update() -> None:
    update = with_outbox({"$set": {"name": "x"}, "$inc": {"revision": 1}}, (PINGS, "9", Ping(n=9)))
    assert update["$inc"] == {"revision": 1}
    sets = update["$set"]
    assert sets["name"] == "x"
    (path,) = [k for k in sets if k.startswith(f"{OUTBOX}.")]
    entry = sets[path]
    assert (entry["topic"], entry["key"], entry["event_type"]) == ("test.pings", "9", "test.ping")
    assert entry["payload"] == {"n": 9}


def test_later_outbox_writes_sort_after_earlier_ones() -> None:
    first = outbox_entries((PINGS, "1", Ping(n=1)))
    second = outbox_entries((PINGS, "1", Ping(n=2)))
    assert next(iter(first.values()))["seq"] < next(iter(second.values()))["seq"]


def test_new_with_outbox_keeps_the_document() -> None:
    doc = new_with_outbox({"_id": "d1", "a": 1}, (PINGS, "1", Ping(n=1)))
    assert doc["_id"] == "d1" and doc["a"] == 1
    assert [e["event_type"] for e in doc[OUTBOX].values()] == ["test.ping"]


@pytest.mark.parametrize(
    "build",
    [
        lambda: outbox_entries((PINGS, "1", Pong(n=1))),
        lambda: with_outbox({}, (PINGS, "1", Ping(n=1)), (DEAD_LETTER, "1", Ping(n=2))),
        lambda: new_with_outbox({}, (PINGS, "1", Pong(n=1))),
    ],
)
def test_an_event_that_does_not_belong_on_the_topic_is_refused(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="does not belong on"):
        build()


def test_kafka_partition_is_the_default_partitioners_choice() -> None:
    """The compiled murmur2 puts every key where aiokafka's own partitioner (the Java client's
    murmur2, in Python) does: keys of every length, any bytes, one to 64 partitions."""
    import random

    from aiokafka.partitioner import DefaultPartitioner

    from shared.bus import kafka_partition, partitioner

    reference = DefaultPartitioner()
    rng = random.Random(5)
    for n in range(5000):
        key = rng.randbytes(n % 97)
        parts = list(range(1 + n % 64))
        expected = reference(key, parts, parts)
        assert kafka_partition(key, parts) == expected, key
        assert partitioner(key, parts, parts[:1]) == expected, key
    assert partitioner(None, [0, 1, 2], [1]) == 1  # keyless: an available partition


def test_parse_json_validates_as_model_validate_json() -> None:
    """The same model, or the same errors, for good and bad telemetry."""
    from pydantic import ValidationError

    from shared.contracts import TelemetryReport
    from shared.events import parse_json

    good = (
        b'{"serial": "SN-1", "sent_at": "2026-11-28T06:09:34.5+02:00", "counters": {"total": 7},'
        b' "supplies": {"black": 50}, "errors": ["C-1"]}'
    )
    parsed = parse_json(TelemetryReport, good)
    assert type(parsed) is TelemetryReport
    assert parsed == TelemetryReport.model_validate_json(good)
    bad_values = [
        b"{not json",
        b'{"serial": "SN 1", "sent_at": "2026-11-28T06:09:34"}',  # a space; no offset
        b'{"serial": "SN-1", "sent_at": "2026-11-28T06:09:34Z", "counters": {"$set": 2}}',
        b'{"serial": "SN-1", "sent_at": "2026-11-28T06:09:34Z", "other": 1}',
    ]
    for bad in bad_values:
        with pytest.raises(ValidationError) as ours:
            parse_json(TelemetryReport, bad)
        with pytest.raises(ValidationError) as theirs:
            TelemetryReport.model_validate_json(bad)
        assert ours.value.errors() == theirs.value.errors()
