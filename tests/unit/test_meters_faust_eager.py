"""The eager delivery of the meters worker's faust consumer, checked without a broker (faust's
consumer is built but never started)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.meters.adapters import faust_eager


@pytest.fixture
async def consumer() -> AsyncIterator[faust_eager.EagerConsumer]:
    app = faust_eager.App("meters.unit-eager", broker="kafka://127.0.0.1:1", web_enabled=False)
    built = app.consumer
    assert isinstance(built, faust_eager.EagerConsumer)  # the app really uses it
    built.loop = asyncio.get_running_loop()  # as the running app's is
    yield built


def _count_tasks(loop: asyncio.AbstractEventLoop) -> list[int]:
    made = [0]
    default = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        made[0] += 1
        if default is not None:
            return default(loop, coro, **kwargs)  # type: ignore[arg-type]
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    return made


async def test_a_callback_that_needs_no_wait_is_delivered_without_a_task(
    consumer: faust_eager.EagerConsumer,
) -> None:
    delivered: list[int] = []

    async def callback(n: int) -> int:
        delivered.append(n)
        return n * 2

    loop = asyncio.get_running_loop()
    made = _count_tasks(loop)
    try:
        result = await consumer.wait_first(callback(21), consumer.suspend_flow.wait())
    finally:
        loop.set_task_factory(None)
    assert delivered == [21]
    assert result.results == [42] and not result.stopped
    assert made[0] == 0


async def test_a_callback_that_waits_is_finished_as_a_task_would(
    consumer: faust_eager.EagerConsumer,
) -> None:
    room: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def callback() -> str:
        steps.append("started")
        got = await room  # a full buffer: waits for room
        steps.append(got)
        await asyncio.sleep(0)  # a bare yield on the way
        return "delivered"

    waiting = asyncio.ensure_future(consumer.wait_first(callback(), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    assert steps == ["started"] and not waiting.done()
    room.set_result("room")
    result = await asyncio.wait_for(waiting, 2)
    assert steps == ["started", "room"]
    assert result.results == ["delivered"]


async def test_an_error_where_the_callback_waits_reaches_it_there(
    consumer: faust_eager.EagerConsumer,
) -> None:
    room: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def callback() -> str:
        try:
            await room
        except KeyError:
            return "handled where it waited"
        return "not reached"

    waiting = asyncio.ensure_future(consumer.wait_first(callback(), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    room.set_exception(KeyError("x"))
    assert (await asyncio.wait_for(waiting, 2)).results == ["handled where it waited"]


async def test_an_error_before_any_wait_propagates(consumer: faust_eager.EagerConsumer) -> None:
    async def callback() -> None:
        raise ValueError("bad record")

    with pytest.raises(ValueError, match="bad record"):
        await consumer.wait_first(callback(), consumer.suspend_flow.wait())


async def test_a_flow_suspension_abandons_a_waiting_delivery_and_it_cleans_up(
    consumer: faust_eager.EagerConsumer,
) -> None:
    """As faust's own: a rebalance suspends the flow; a delivery still waiting is cancelled
    where it waits (its ``finally`` runs) and the fetcher goes on."""
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cleaned: list[str] = []

    async def callback() -> None:
        try:
            await never
        finally:
            cleaned.append("finally ran")

    waiting = asyncio.ensure_future(consumer.wait_first(callback(), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    consumer.suspend_flow.set()
    try:
        result = await asyncio.wait_for(waiting, 2)
    finally:
        consumer.suspend_flow.clear()
    await asyncio.sleep(0.01)  # the abandoned delivery's cancellation runs
    assert result.results == [True]  # the suspension won, as in faust
    assert cleaned == ["finally ran"]
    assert never.cancelled()
