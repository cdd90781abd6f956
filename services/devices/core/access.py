"""Who may see and do what with a device: the scope rules, as plain functions.

- Agents see every organisation's devices; admins all of their organisation's; device and
  stock managers (and device-and-stock managers) only those assigned to them; ``kb_viewer``
  and technicians none.
- Location: admins, the device's device managers (and device-and-stock managers), agents.
- Removal, registration, contract changes and CSV import: agents only (customers never delete).
- Stock and supply orders: read by admins, agents and the device's stock managers; stock is
  written only by the device's stock managers (``stock_manager``, ``device_stock_manager``).
- History (the audit trail): admins of the organisation and agents.

A device the caller may not see answers 404 (its existence is not disclosed); a visible
device the caller may not act on answers 403.
"""

from __future__ import annotations

from collections.abc import Set
from enum import StrEnum
from typing import Protocol

from shared.contracts import Role

DEVICE_ROLES = frozenset({Role.DEVICE_MANAGER, Role.DEVICE_STOCK_MANAGER})
STOCK_ROLES = frozenset({Role.STOCK_MANAGER, Role.DEVICE_STOCK_MANAGER})
MANAGER_ROLES = DEVICE_ROLES | STOCK_ROLES


class Caller(Protocol):
    """The parts of the authenticated principal these rules look at."""

    @property
    def user_id(self) -> str: ...
    @property
    def org_id(self) -> str | None: ...
    @property
    def role(self) -> Role | None: ...
    @property
    def device_ids(self) -> Set[str]: ...


class Action(StrEnum):
    VIEW = "view"
    LOCATION = "location"
    STOCK_READ = "stock_read"
    STOCK_WRITE = "stock_write"
    HISTORY = "history"
    REMOVE = "remove"
    CONTRACT = "contract"


class Decision(StrEnum):
    ALLOW = "allow"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"


def can_see(caller: Caller, org_id: str, device_id: str) -> bool:
    if caller.role is Role.AGENT:
        return True
    if caller.org_id is None or caller.org_id != org_id:
        return False
    if caller.role is Role.ADMIN:
        return True
    return caller.role in MANAGER_ROLES and device_id in caller.device_ids


def decide(caller: Caller, action: Action, org_id: str, device_id: str) -> Decision:
    """Whether ``caller`` may do ``action`` on the device (org ``org_id``)."""
    if caller.role is Role.AGENT:
        allowed = action is not Action.STOCK_WRITE
        return Decision.ALLOW if allowed else Decision.FORBIDDEN
    if not can_see(caller, org_id, device_id):
        return Decision.NOT_FOUND
    role = caller.role
    allowed = {
        Action.VIEW: True,
        Action.LOCATION: role is Role.ADMIN or role in DEVICE_ROLES,
        Action.STOCK_READ: role is Role.ADMIN or role in STOCK_ROLES,
        Action.STOCK_WRITE: role in STOCK_ROLES,
        Action.HISTORY: role is Role.ADMIN,
        Action.REMOVE: False,
        Action.CONTRACT: False,
    }[action]
    return Decision.ALLOW if allowed else Decision.FORBIDDEN


class ListScope(StrEnum):
    ALL = "all"
    ORGANISATION = "organisation"
    ASSIGNED = "assigned"
    NONE = "none"


def list_scope(caller: Caller) -> ListScope:
    """Which devices ``GET /devices`` shows to the caller."""
    if caller.role is Role.AGENT:
        return ListScope.ALL
    if caller.org_id is None:
        return ListScope.NONE
    if caller.role is Role.ADMIN:
        return ListScope.ORGANISATION
    if caller.role in MANAGER_ROLES:
        return ListScope.ASSIGNED
    return ListScope.NONE


def is_agent(caller: Caller) -> bool:
    return caller.role is Role.AGENT


def assigned_devices(role: Role | None, device_ids: Set[str]) -> frozenset[str]:
    """The devices a user manages, as identity says: only manager roles have any."""
    return frozenset(device_ids) if role in MANAGER_ROLES else frozenset()
