"""Routing: which technician gets a ticket, and why. Pure: loads are given, not looked up."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TechnicianProfile:
    """A technician's service areas, skills and capacity (maintained by agents)."""

    user_id: str
    postal_prefixes: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    skills: tuple[str, ...] = ()  # model families
    capacity: int = 5
    active: bool = True


@dataclass(frozen=True)
class Place:
    """What a ticket's device offers to match on."""

    postal_code: str = ""
    region: str = ""
    model_family: str = ""


@dataclass(frozen=True)
class Decision:
    technician_id: str | None
    reason: str
    considered: tuple[str, ...] = field(default_factory=tuple)


def _norm(value: str) -> str:
    return "".join(value.split()).casefold()


def covers_area(tech: TechnicianProfile, place: Place) -> str | None:
    """How the technician's area covers the place (for the reason), or None."""
    postal = _norm(place.postal_code)
    for prefix in tech.postal_prefixes:
        if postal and postal.startswith(_norm(prefix)):
            return f"postal code {place.postal_code} in area {prefix}*"
    region = _norm(place.region)
    for r in tech.regions:
        if region and region == _norm(r):
            return f"region {place.region}"
    return None


def has_skill(tech: TechnicianProfile, place: Place) -> str | None:
    if not place.model_family:
        return "any model (the device names no model family)"
    family = _norm(place.model_family)
    for skill in tech.skills:
        if _norm(skill) == family:
            return f"skill {place.model_family}"
    return None


def choose(
    place: Place,
    technicians: Iterable[TechnicianProfile],
    loads: Mapping[str, int],
    *,
    excluded: Iterable[str] = (),
) -> Decision:
    """The matching technician with the least open load (ties: lowest id), with the reason.

    Matching means: active, the area covers the device's postal code or region, the skills
    cover its model family, and the open load is below the capacity. ``excluded`` are those who
    already declined or let an offer lapse.
    """
    skip = set(excluded)
    candidates: list[tuple[int, str, str]] = []
    for tech in technicians:
        if not tech.active or tech.user_id in skip:
            continue
        area = covers_area(tech, place)
        skill = has_skill(tech, place)
        load = loads.get(tech.user_id, 0)
        if area is None or skill is None or load >= tech.capacity:
            continue
        candidates.append((load, tech.user_id, f"{area}; {skill}"))
    if not candidates:
        why = "no active technician covers this area and model with free capacity"
        if skip:
            why += f" (excluded after decline or no answer: {len(skip)})"
        return Decision(None, why)
    candidates.sort()
    load, tech_id, match = candidates[0]
    others = len(candidates) - 1
    reason = f"{match}; least open load {load}" + (
        f" among {others + 1} matching" if others else " (only match)"
    )
    return Decision(tech_id, reason, tuple(c[1] for c in candidates))
