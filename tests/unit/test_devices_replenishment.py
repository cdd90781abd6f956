"""Replenishment on fakes: forecast, one order per need, blips, new cartridges, stock, restarts."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.devices.core.replenishment import DAY, Policy, Track, apply_level, days_to_empty
from services.devices.core.telemetry import process_telemetry
from shared.contracts import SupplyAction
from tests.unit.devices_fakes import T0, World, ref, report, world

NOW = T0 + timedelta(days=30)


async def feed(w: World, *reports: object) -> None:
    await process_telemetry(list(reports), w.deps(), NOW)  # type: ignore[arg-type]


# --- forecast ---------------------------------------------------------------------------------


def test_forecast_is_the_least_squares_slope_of_the_level_changes() -> None:
    # 2 points a day, 60 -> 50 over 5 days: 2 %/day, 50 % left: 25 days.
    points = tuple((i * DAY / 2, 60 - i) for i in range(11))
    assert days_to_empty(points, 50, Policy()) == pytest.approx(25.0)


def test_forecast_unknown_with_too_few_points_too_short_a_span_or_no_decline() -> None:
    policy = Policy()
    assert days_to_empty(((0.0, 50), (DAY, 49)), 49, policy) is None
    assert days_to_empty(((0.0, 50), (60.0, 49), (120.0, 48)), 48, policy) is None
    assert days_to_empty(((0.0, 50), (DAY, 50), (2 * DAY, 51)), 51, policy) is None


def test_fast_decline_orders_before_the_threshold_when_the_lead_time_is_longer() -> None:
    policy = Policy(low_level=10, lead_time_days=5)
    track = None
    effects = []
    for i, level in enumerate([60, 50, 40, 30]):  # 10 %/day: at 40 % it lasts 4 days
        track, found = apply_level(track, "black", level, i * DAY, policy, may_order=True)
        effects += found
    assert [(e.consumable, e.level) for e in effects] == [("black", 40)]  # type: ignore[union-attr]
    assert effects[0].days_to_empty == pytest.approx(4.0)  # type: ignore[union-attr]


# --- one order per need -------------------------------------------------------------------------


async def test_steady_decline_orders_once_when_the_threshold_is_crossed() -> None:
    w = world(ref(1), policy=Policy(lead_time_days=0))
    for hour, level in enumerate(range(30, 0, -1)):
        await feed(w, report("SN1", hour * 6, black=level, cyan=80))
    assert list(w.orders.orders) == ["dev1:black:0"]
    order = w.orders.orders["dev1:black:0"]
    assert order.level == 10 and order.action is SupplyAction.SHIPMENT
    assert order.org_id == "org1" and order.serial == "SN1"


async def test_duplicate_and_redelivered_reports_order_once_and_store_nothing_new() -> None:
    w = world(ref(1))
    reports = [report("SN1", h, black=12 - h) for h in range(5)]
    await feed(w, *reports, *reports)  # the same reports twice in one batch
    stored = len(w.store.docs)
    await feed(w, *reports)  # and redelivered in a later batch
    assert list(w.orders.orders) == ["dev1:black:0"]
    assert len(w.store.docs) == stored


async def test_a_restart_in_the_middle_changes_nothing() -> None:
    reports = [report("SN1", h * 6, black=max(0, 30 - 2 * h)) for h in range(20)]
    straight = world(ref(1))
    for r in reports:
        await feed(straight, r)
    restarted = world(ref(1))
    for i, r in enumerate(reports):
        if i in (5, 11):
            restarted.restart()
            await feed(restarted, *reports[: i + 1])  # the uncommitted tail comes again
        await feed(restarted, r)
    assert restarted.orders.orders.keys() == straight.orders.orders.keys() == {"dev1:black:0"}
    assert restarted.levels.get("dev1").tracks == straight.levels.get("dev1").tracks


async def test_a_failed_write_leaves_memory_as_it_was_and_the_retry_orders_once() -> None:
    w = world(ref(1))
    await feed(w, report("SN1", 0, black=20))
    w.store.fail_next = True
    with pytest.raises(ConnectionError):
        await feed(w, report("SN1", 1, black=9))
    assert w.levels.get("dev1").tracks["black"].level == 20
    await feed(w, report("SN1", 1, black=9))  # the runner tries the batch again
    assert list(w.orders.orders) == ["dev1:black:0"]
    assert w.levels.get("dev1").tracks["black"].ordered


async def test_no_order_without_automatic_replenishment() -> None:
    w = world(ref(1, auto=False))
    await feed(w, report("SN1", 0, black=5))
    assert w.orders.orders == {}
    assert w.levels.get("dev1").tracks["black"].level == 5


# --- blips and new cartridges ---------------------------------------------------------------------


async def test_a_shaken_cartridge_blip_neither_orders_nor_closes_the_need() -> None:
    w = world(ref(1))
    await feed(w, report("SN1", 0, black=9))  # ordered
    await feed(w, report("SN1", 1, black=100))  # shaken: jumps up ...
    await feed(w, report("SN1", 1.5, black=100))
    await feed(w, report("SN1", 2, black=8))  # ... and falls back within the window
    assert list(w.orders.orders) == ["dev1:black:0"]
    assert w.orders.closed == set()
    track = w.levels.get("dev1").tracks["black"]
    assert track.generation == 0 and track.level == 8 and track.pending_since is None


async def test_a_blip_above_the_threshold_does_not_distort_the_forecast_into_an_order() -> None:
    w = world(ref(1), policy=Policy(lead_time_days=5))
    levels = [(0, 40), (12, 39), (24, 38), (25, 75), (26, 37), (36, 36), (48, 35)]
    for hours, level in levels:
        await feed(w, report("SN1", hours, black=level))
    assert w.orders.orders == {}
    assert 75 not in [lv for _, lv in w.levels.get("dev1").tracks["black"].points]


async def test_a_new_cartridge_closes_the_need_and_the_next_one_orders_again() -> None:
    w = world(ref(1), policy=Policy(lead_time_days=0))
    await feed(w, report("SN1", 0, black=9))
    await feed(w, report("SN1", 1, black=100))
    await feed(w, report("SN1", 2, black=100))  # not yet: within the blip window
    assert w.orders.closed == set()
    await feed(w, report("SN1", 3.5, black=99))  # still up after the window: a new cartridge
    assert w.orders.closed == {"dev1:black:0"}
    assert w.levels.get("dev1").tracks["black"].generation == 1
    await feed(w, report("SN1", 100, black=10))
    assert sorted(w.orders.orders) == ["dev1:black:0", "dev1:black:1"]


async def test_install_on_hand_when_stock_has_a_unit_and_stock_decreases_when_it_is_used() -> None:
    w = world(ref(1), policy=Policy(lead_time_days=0))
    w.stock.on_hand_units[("dev1", "black")] = 1
    await feed(w, report("SN1", 0, black=8))
    assert w.orders.orders["dev1:black:0"].action is SupplyAction.INSTALL_ON_HAND
    await feed(w, report("SN1", 1, black=100), report("SN1", 4, black=100))
    assert w.stock.used == {("dev1", "black", 0)}
    await feed(w, report("SN1", 200, black=5))  # the only unit is used: a shipment now
    assert w.orders.orders["dev1:black:1"].action is SupplyAction.SHIPMENT
    # A restart and re-delivery of the replacement does not take a second unit.
    w.restart()
    await feed(w, report("SN1", 1, black=100), report("SN1", 4, black=100))
    assert w.stock.used == {("dev1", "black", 0)}


def test_a_rise_that_stays_but_is_not_full_is_a_new_baseline_of_the_same_cartridge() -> None:
    policy = Policy()
    track = Track(level=20, points=((0.0, 20),))
    track, _ = apply_level(track, "cyan", 50, 3600.0, policy, may_order=True)
    assert track.pending_since == 3600.0 and track.level == 20
    track, effects = apply_level(track, "cyan", 50, 3 * 3600.0 + 1, policy, may_order=True)
    assert effects == [] and track.level == 50 and track.generation == 0


# --- the batch ------------------------------------------------------------------------------------


async def test_one_write_per_device_per_batch_and_only_for_changed_levels() -> None:
    w = world(ref(1), ref(2))
    await feed(
        w, *[report("SN1", h, black=50, cyan=40) for h in range(10)], report("SN2", 0, black=70)
    )
    assert w.store.appends == [2]  # two devices, one document each
    await feed(w, *[report("SN1", 10 + h, black=50, cyan=40) for h in range(10)])
    assert w.store.appends == [2]  # nothing changed: nothing written
    await feed(w, report("SN1", 30, black=49), report("SN2", 30, black=70))
    assert w.store.appends == [2, 1]


async def test_unknown_and_removed_devices_are_ignored_and_counted() -> None:
    w = world(ref(1, removed=True))
    outcome = await process_telemetry(
        [report("SN1", 0, black=5), report("SN9", 0, black=5)], w.deps(), NOW
    )
    assert outcome.counts["removed_device"] == 1 and outcome.counts["unknown_device"] == 1
    assert w.orders.orders == {} and w.store.docs == {}


def test_a_track_survives_its_stored_form() -> None:
    track = Track(20, 3, ((1.5, 22), (2.5, 20)), 3.0, 60, True, "shipment")
    doc = track.to_doc()
    assert not any(isinstance(v, list) and v and isinstance(v[0], list) for v in doc.values())
    assert Track.from_doc(doc) == track


async def test_a_unit_used_and_a_new_need_in_one_batch_sees_the_stock_without_it() -> None:
    w = world(ref(1), policy=Policy(lead_time_days=0))
    w.stock.on_hand_units[("dev1", "black")] = 1
    await feed(w, report("SN1", 0, black=8))
    await feed(
        w, report("SN1", 1, black=100), report("SN1", 4, black=100), report("SN1", 300, black=5)
    )
    assert w.orders.orders["dev1:black:1"].action is SupplyAction.SHIPMENT
