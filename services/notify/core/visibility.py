"""Who may see which live event: the same rules as everywhere (shared.auth), per event."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.auth import Principal, can_see_device
from shared.contracts import Role


@dataclass(frozen=True)
class LiveEvent:
    """A change that portal clients may follow, with what decides who sees it."""

    seq: int
    event_type: str
    org_id: str | None
    device_id: str | None
    data: dict[str, Any] = field(default_factory=dict)
    people: frozenset[str] = frozenset()
    """Users it concerns directly (a ticket's creator, its technician)."""


def may_see(principal: Principal, event: LiveEvent) -> bool:
    """Agents see everything; customers their organisation's events, device managers and
    stock managers only their devices'; technicians the tickets routed to them; kb viewers
    nothing."""
    if principal.is_agent:
        return True
    if principal.user_id in event.people:
        return True
    if principal.role is Role.TECHNICIAN or principal.role is Role.KB_VIEWER:
        return False
    if event.org_id is None or principal.org_id != event.org_id or principal.role is None:
        return False
    if event.device_id is None:
        return principal.role is Role.ADMIN
    return can_see_device(principal, event.org_id, event.device_id)
