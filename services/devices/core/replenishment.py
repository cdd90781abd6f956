"""Toner levels, their forecast and when a supply order is due: pure rules, no I/O.

One :class:`Track` per consumable of a device follows the current cartridge. Reports are
folded into it in time order by :func:`apply_level`; the fold is deterministic, so replaying
the stored changes after a restart gives the same track as the live run did.

- A need is one cartridge cycle (``generation``) running low: the level at or under the
  threshold, or the days-to-empty forecast under the delivery lead time. It is raised once per
  generation (the store makes the order a unique insert on (device, consumable, generation)).
- A rise of more than ``jump_tolerance`` points is only *pending* at first (a shaken cartridge
  reads higher for a while). If a later report falls back, the rise was a blip: nothing
  changes. If the level stays up for ``blip_window``, it is real: at or above ``full_level`` a
  new cartridge was installed (the need closes, the next generation starts), below it the level
  simply starts a new baseline.
- The forecast is the least-squares slope of the accepted level changes of the current
  cartridge (blips excluded), in percent per day.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta

DAY = 86400.0


@dataclass(frozen=True)
class Policy:
    """When to order: thresholds, lead time and the blip window (from the settings)."""

    low_level: int = 10
    lead_time_days: float = 5.0
    full_level: int = 90
    jump_tolerance: int = 5
    blip_window: timedelta = timedelta(hours=2)
    history_points: int = 12
    min_forecast_points: int = 3
    min_forecast_span: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class Track:
    """One consumable of one device, as far as the current cartridge goes."""

    level: int
    generation: int = 0
    points: tuple[tuple[float, int], ...] = ()
    """Accepted level changes of this cartridge: (epoch seconds, percent), oldest first."""
    pending_since: float | None = None
    """A rise seen at this time, not yet confirmed (it may be a shaken cartridge)."""
    pending_level: int | None = None
    ordered: bool = False
    """A supply order exists for this generation."""
    order_action: str | None = None
    """What the order told the stock manager: install_on_hand or shipment."""

    def to_doc(self) -> dict[str, object]:
        return {
            "level": self.level,
            "generation": self.generation,
            # Two flat lists: FerretDB 1.x stores no nested arrays.
            "times": [t for t, _ in self.points],
            "levels": [lv for _, lv in self.points],
            "pending_since": self.pending_since,
            "pending_level": self.pending_level,
            "ordered": self.ordered,
            "order_action": self.order_action,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, object]) -> Track:
        times = doc.get("times") or []
        levels = doc.get("levels") or []
        assert isinstance(times, list) and isinstance(levels, list)
        return cls(
            level=int(doc["level"]),  # type: ignore[call-overload]
            generation=int(doc.get("generation", 0)),  # type: ignore[call-overload]
            points=tuple((float(t), int(lv)) for t, lv in zip(times, levels, strict=True)),
            pending_since=doc.get("pending_since"),  # type: ignore[arg-type]
            pending_level=doc.get("pending_level"),  # type: ignore[arg-type]
            ordered=bool(doc.get("ordered", False)),
            order_action=doc.get("order_action"),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class NeedRaised:
    """The current cartridge runs low: order once for this generation."""

    consumable: str
    generation: int
    level: int
    days_to_empty: float | None


@dataclass(frozen=True)
class CartridgeReplaced:
    """A new cartridge was confirmed: the need of ``closed_generation`` (if any) is closed."""

    consumable: str
    closed_generation: int
    was_ordered: bool
    order_action: str | None
    at: float


Effect = NeedRaised | CartridgeReplaced


def days_to_empty(
    points: tuple[tuple[float, int], ...], level: int, policy: Policy
) -> float | None:
    """Days until the level reaches zero from the least-squares slope; None when unknown.

    Unknown: too few points, too short a span, or a level that does not fall.
    """
    if len(points) < policy.min_forecast_points:
        return None
    xs = [t / DAY for t, _ in points]
    ys = [float(lv) for _, lv in points]
    if (xs[-1] - xs[0]) * DAY < policy.min_forecast_span.total_seconds():
        return None
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    if slope >= 0:
        return None
    return max(0.0, level / -slope)


def needs_order(track: Track, policy: Policy) -> tuple[bool, float | None]:
    forecast = days_to_empty(track.points, track.level, policy)
    low = track.level <= policy.low_level
    return low or (forecast is not None and forecast <= policy.lead_time_days), forecast


def _accept(track: Track, level: int, at: float, policy: Policy) -> Track:
    if level == track.level:
        return track
    points = (*track.points, (at, level))[-policy.history_points :]
    return replace(track, level=level, points=points)


def apply_level(
    track: Track | None,
    consumable: str,
    level: int,
    at: float,
    policy: Policy,
    *,
    may_order: bool,
) -> tuple[Track, list[Effect]]:
    """Fold one reported level (``at`` in epoch seconds) into the track; effects to act on."""
    effects: list[Effect] = []
    if track is not None and track.pending_since is None and level == track.level:
        # The common case (toner falls slowly): nothing changed, and the need was judged
        # when the level last changed. (Replenishment switched on later is judged at the
        # next change.)
        return track, effects
    if track is None:
        track = Track(level=level, points=((at, level),))
    elif track.pending_since is not None:
        since = track.pending_since
        if level <= track.level + policy.jump_tolerance:
            # Fell back: the rise was a blip (a shaken cartridge). Forget it, go on as usual.
            track = _accept(
                replace(track, pending_since=None, pending_level=None), level, at, policy
            )
        elif at - since >= policy.blip_window.total_seconds():
            if level >= policy.full_level:
                effects.append(
                    CartridgeReplaced(
                        consumable, track.generation, track.ordered, track.order_action, at
                    )
                )
                track = Track(level=level, generation=track.generation + 1, points=((at, level),))
            else:
                # Stayed up but not full (re-seated, refilled): a new baseline, same cartridge.
                track = replace(
                    track,
                    level=level,
                    points=((at, level),),
                    pending_since=None,
                    pending_level=None,
                )
        else:
            return replace(track, pending_level=level), effects
    elif level > track.level + policy.jump_tolerance:
        return replace(track, pending_since=at, pending_level=level), effects
    else:
        track = _accept(track, level, at, policy)
    if may_order and not track.ordered and track.pending_since is None:
        due, forecast = needs_order(track, policy)
        if due:
            effects.append(NeedRaised(consumable, track.generation, track.level, forecast))
            track = replace(track, ordered=True)
    return track, effects


@dataclass(frozen=True)
class DeviceLevels:
    """The tracks of one device and the time of the last report that changed them."""

    last_at: float = 0.0
    tracks: dict[str, Track] = field(default_factory=dict)
    seq: int = 0
    """How many times this device's levels were stored (the key of the next stored change)."""


def fold_reports(
    state: DeviceLevels,
    reports: list[tuple[float, dict[str, int]]],
    policy: Policy,
    *,
    may_order: bool,
) -> tuple[DeviceLevels, list[Effect], int]:
    """Fold a device's reports (time, supplies) in time order; (state, effects, duplicates).

    A report not newer than the last one folded is a repeat or a re-delivery: skipped.
    """
    tracks = dict(state.tracks)
    last_at = state.last_at
    effects: list[Effect] = []
    skipped = 0
    for at, supplies in sorted(reports, key=lambda r: r[0]):
        if at <= last_at:
            skipped += 1
            continue
        last_at = at
        for consumable, level in supplies.items():
            track, found = apply_level(
                tracks.get(consumable), consumable, level, at, policy, may_order=may_order
            )
            tracks[consumable] = track
            effects.extend(found)
    return DeviceLevels(last_at, tracks, state.seq), effects, skipped


def mark_ordered(track: Track, action: str) -> Track:
    return replace(track, ordered=True, order_action=action)
