"""The runner's pure parts: failure classes, bounded dead letters, supervision, commits, replay."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from datetime import UTC, datetime

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    RebalanceInProgressError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from prometheus_client import REGISTRY
from pydantic import BaseModel, ValidationError
from pymongo.errors import (
    AutoReconnect,
    DuplicateKeyError,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from shared import deadletters
from shared.bus import (
    ConsumerRunner,
    Consumers,
    Failure,
    InfrastructureError,
    Message,
    PermanentError,
    Subscription,
    classify,
    dead_letter_of,
)
from shared.config import KafkaSettings
from shared.contracts import DeadLetter


class Strict(BaseModel):
    n: int


def validation_error() -> ValidationError:
    try:
        Strict.model_validate({"n": "x"})
    except ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


def wrapped(inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as exc:
            raise RuntimeError("projection update failed") from exc
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (PermanentError("bad"), Failure.PERMANENT),
        (validation_error(), Failure.PERMANENT),
        (json.JSONDecodeError("x", "doc", 0), Failure.PERMANENT),
        (MessageSizeTooLargeError(), Failure.PERMANENT),
        (AutoReconnect("gone"), Failure.INFRASTRUCTURE),
        (ServerSelectionTimeoutError("no server"), Failure.INFRASTRUCTURE),
        (NetworkTimeout("slow"), Failure.INFRASTRUCTURE),
        (NotPrimaryError("stepped down"), Failure.INFRASTRUCTURE),
        (KafkaConnectionError(), Failure.INFRASTRUCTURE),
        (KafkaTimeoutError(), Failure.INFRASTRUCTURE),
        (NotLeaderForPartitionError(), Failure.INFRASTRUCTURE),
        (UnknownTopicOrPartitionError(), Failure.INFRASTRUCTURE),
        (TimeoutError(), Failure.INFRASTRUCTURE),
        (ConnectionRefusedError(), Failure.INFRASTRUCTURE),
        (InfrastructureError("search index down"), Failure.INFRASTRUCTURE),
        (wrapped(AutoReconnect("gone")), Failure.INFRASTRUCTURE),
        (RuntimeError("bug"), Failure.UNKNOWN),
        (KeyError("x"), Failure.UNKNOWN),
        (DuplicateKeyError("dup"), Failure.UNKNOWN),
        (OperationFailure("unknown operator", code=2), Failure.UNKNOWN),
        (OperationFailure("shutdown in progress", code=91), Failure.INFRASTRUCTURE),
        (OperationFailure("primary stepped down", code=189), Failure.INFRASTRUCTURE),
        (wrapped(KeyError("x")), Failure.UNKNOWN),
    ],
)
def test_failures_are_classified(exc: Exception, kind: Failure) -> None:
    assert classify(exc) is kind


def big_message(value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()) -> Message:
    return Message(
        topic="test.t",
        partition=1,
        offset=9,
        key="k-1",
        value=value,
        headers={k: v.decode(errors="replace") for k, v in headers},
        raw_key=b"k-1",
        raw_headers=headers,
    )


def letter(msg: Message, max_value_bytes: int = 256 * 1024) -> DeadLetter:
    return dead_letter_of(
        msg,
        consumer_group="g",
        error="PermanentError: x" * 500,
        attempts=1,
        failure="permanent",
        max_value_bytes=max_value_bytes,
    )


@pytest.mark.parametrize(
    "value",
    [
        b"\xff" * 600_000,  # invalid UTF-8: three bytes of text per byte
        b"\x00" * 600_000,  # control characters: six bytes of JSON per byte
        "é".encode() * 300_000,
    ],
)
def test_a_dead_letter_of_a_large_record_fits_the_broker_and_says_it_was_cut(value: bytes) -> None:
    headers = tuple((f"h{i}", b"\x01" * 2000) for i in range(200))
    dl = letter(big_message(value, headers), max_value_bytes=512 * 1024)
    assert len(dl.model_dump_json().encode()) < 1_000_000
    assert dl.truncated
    assert dl.value_size == 600_000
    assert dl.value_b64 is not None
    assert base64.b64decode(dl.value_b64) == value[: 512 * 1024]
    assert len(dl.value.encode()) <= 3 * 16 * 1024


def test_a_dead_letter_keeps_a_small_record_whole() -> None:
    headers = (("event_id", b"e1"), ("x-bin", b"\x00\xff"), ("event_id", b"dup"))
    dl = letter(big_message(b'{"n": 1}', headers))
    assert not dl.truncated
    assert dl.value == '{"n": 1}'
    assert dl.value_b64 is not None and base64.b64decode(dl.value_b64) == b'{"n": 1}'
    assert dl.value_size == 8
    assert dl.key == "k-1" and dl.key_b64 is not None
    assert base64.b64decode(dl.key_b64) == b"k-1"
    assert [(h.name, base64.b64decode(h.value_b64)) for h in dl.headers] == list(headers)


def test_a_dead_letter_of_a_tombstone_has_no_value() -> None:
    dl = letter(big_message(None))
    assert dl.value_b64 is None and dl.value_size is None and not dl.truncated


# --- the supervisor ---------------------------------------------------------------------


async def _noop(msg: Message) -> None:
    return None


class Scripted(ConsumerRunner):
    """A runner whose runs last the scripted seconds, then crash (``None``: run until stopped)."""

    def __init__(self, group: str, script: list[float | None]) -> None:
        super().__init__(KafkaSettings(), Subscription(group, {"test.t": _noop}), None)  # type: ignore[arg-type]
        self.script = script
        self.runs = 0

    async def run(self) -> None:
        lasts = self.script[min(self.runs, len(self.script) - 1)]
        self.runs += 1
        self._running_since = time.monotonic()
        self.started.set()
        try:
            if lasts is None:
                await self._stopping.wait()
                return
            await asyncio.sleep(lasts)
            raise RuntimeError(f"crash after run {self.runs}")
        finally:
            self._running_since = None


async def probe(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def metric(name: str, group: str) -> float:
    return REGISTRY.get_sample_value(name, {"group": group}) or 0.0


async def test_a_consumer_that_keeps_crashing_shows_on_ready_and_metrics() -> None:
    runner = Scripted("unit.crashing", [0.0])
    async with Consumers([runner], restart_backoff=0.01, restart_backoff_max=0.05) as consumers:
        assert consumers.healthy() or runner.runs <= 1
        await probe(lambda: runner.runs >= 5)
        assert not consumers.healthy()
        assert runner.crash_looping
        assert metric("fleetdesk_consumer_crash_looping", "unit.crashing") == 1.0
        assert metric("fleetdesk_consumer_restarts_total", "unit.crashing") >= 4
        # Capped exponential backoff between restarts.
        assert list(runner.restart_delays)[:4] == [0.01, 0.02, 0.04, 0.05]


async def test_the_restart_backoff_resets_after_a_healthy_run_and_ready_comes_back() -> None:
    # Four quick crashes, one run longer than healthy_after that crashes, then a good run.
    runner = Scripted("unit.recovering", [0.0, 0.0, 0.0, 0.0, 0.6, 0.0, None])
    async with Consumers(
        [runner], restart_backoff=0.01, restart_backoff_max=0.08, healthy_after=0.5
    ) as consumers:
        await probe(lambda: runner.runs >= 5 and runner.running)
        # Four crashes in a row: a crash loop until this run has lasted healthy_after.
        assert not consumers.healthy()
        assert metric("fleetdesk_consumer_crash_looping", "unit.recovering") == 1.0
        await probe(consumers.healthy, timeout=5)
        await probe(lambda: runner.runs >= 7 and runner.running)
        assert list(runner.restart_delays) == [0.01, 0.02, 0.04, 0.08, 0.01, 0.02]
        assert runner.consecutive_crashes == 2  # counted afresh after the healthy run
        assert consumers.healthy()  # two crashes since a healthy run: not (yet) a loop
        assert metric("fleetdesk_consumer_crash_looping", "unit.recovering") == 0.0


async def test_one_crash_followed_by_a_good_restart_is_ready_at_once() -> None:
    runner = Scripted("unit.once", [0.0, None])
    async with Consumers([runner], restart_backoff=0.01, healthy_after=60) as consumers:
        await probe(lambda: runner.runs >= 2 and runner.running)
        assert consumers.healthy()


# --- commits that lose to a rebalance ---------------------------------------------------


class RefusingConsumer:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def commit(self, offsets: object) -> None:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        CommitFailedError("group rebalanced"),
        IllegalStateError("Partition is not assigned"),
        RebalanceInProgressError(),
        KafkaConnectionError(),
    ],
)
async def test_a_commit_refused_by_a_rebalance_or_an_outage_does_not_crash_the_runner(
    error: Exception,
) -> None:
    runner = Scripted("unit.commit", [None])
    tp = TopicPartition("test.t", 0)
    await runner._commit(RefusingConsumer(error), {tp: 5})  # type: ignore[arg-type]
    # After an outage the offset is committed with the next commit; after a rebalance the
    # next owner goes on from the last commit.
    kept = {tp: 5} if isinstance(error, KafkaConnectionError) else {}
    assert runner._pending == kept


async def test_any_other_commit_failure_crashes_the_runner_for_its_supervisor() -> None:
    runner = Scripted("unit.commit2", [None])
    with pytest.raises(TopicAuthorizationFailedError):
        await runner._commit(  # type: ignore[arg-type]
            RefusingConsumer(TopicAuthorizationFailedError()), {TopicPartition("t", 0): 1}
        )


# --- the dead-letter tool's pure parts --------------------------------------------------


def parked(partition: int, offset: int, **fields: object) -> deadletters.Parked:
    msg = Message(
        "test.t", 0, 7, "k", b'{"n": 1}', {"event_id": "e7"}, b"k", (("event_id", b"e7"),)
    )
    dl = dead_letter_of(
        msg, consumer_group="g", error="E: x", attempts=1, failure="permanent", max_value_bytes=4
    )
    return deadletters.Parked(partition, offset, dl.model_copy(update=fields))


def test_since_takes_a_duration_or_an_iso_time() -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert deadletters.parse_since("2h", now) == datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert deadletters.parse_since("7d", now) == datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    assert deadletters.parse_since("2026-11-27T10:00Z") == datetime(2026, 11, 27, 10, tzinfo=UTC)
    assert deadletters.parse_since("2026-11-27T10:00") == datetime(2026, 11, 27, 10, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        deadletters.parse_since("yesterday")


def test_a_replay_names_letters_by_event_id_or_position_once_per_original_record() -> None:
    whole = parked(0, 3, truncated=False, record_kept=True, value_b64="eyJuIjogMX0=")
    again = parked(2, 9, truncated=False, record_kept=True, value_b64="eyJuIjogMX0=")
    assert deadletters.chosen([whole, again], ["e7"]) == [whole]  # the same original record
    assert deadletters.chosen([whole, again], ["2:9"]) == [again]
    assert deadletters.record_of(whole.letter) == (b"k", b'{"n": 1}', [("event_id", b"e7")])


def test_a_replay_of_a_cut_or_legacy_letter_or_an_unknown_id_is_refused_whole() -> None:
    cut = parked(0, 1)  # 8 bytes kept to 4
    legacy = parked(0, 2, truncated=False, record_kept=False)
    with pytest.raises(deadletters.ReplayRefused) as refused:
        deadletters.chosen([cut, legacy], ["0:1", "0:2", "nope"])
    text = str(refused.value)
    assert "0:1 (dead letter 0:1): cannot replay a cut record" in text
    assert "kept 4 of its 8 bytes" in text
    assert "written before dead letters kept the original" in text
    assert "nope: no such dead letter" in text
