"""The ticket status machine: which transitions exist and who may make them.

new -> assigned happens by routing (or an agent's assignment), never by a status request.
The response the SLA measures is the first move to in_progress, resolved or closed; a ticket
waiting for the customer has its clock paused.
"""

from __future__ import annotations

from enum import StrEnum

from shared.contracts import TicketStatus as S

TRANSITIONS: dict[S, frozenset[S]] = {
    S.NEW: frozenset({S.WAITING_FOR_CUSTOMER, S.IN_PROGRESS, S.RESOLVED, S.CLOSED}),
    S.ASSIGNED: frozenset({S.IN_PROGRESS, S.WAITING_FOR_CUSTOMER, S.RESOLVED}),
    S.IN_PROGRESS: frozenset({S.WAITING_FOR_CUSTOMER, S.RESOLVED}),
    # The customer's answer resumes the ticket where it was (checked against ``resume_to``).
    S.WAITING_FOR_CUSTOMER: frozenset({S.NEW, S.ASSIGNED, S.IN_PROGRESS, S.RESOLVED, S.CLOSED}),
    S.RESOLVED: frozenset({S.CLOSED, S.IN_PROGRESS}),
    S.CLOSED: frozenset(),
}

RESPONDED = frozenset({S.IN_PROGRESS, S.RESOLVED, S.CLOSED})
OPEN = frozenset({S.NEW, S.ASSIGNED, S.IN_PROGRESS, S.WAITING_FOR_CUSTOMER})


class Actor(StrEnum):
    AGENT = "agent"
    ASSIGNEE = "assignee"  # the technician the ticket is assigned to
    CUSTOMER = "customer"  # an admin or a device manager of the ticket's device
    OTHER = "other"


# What each kind of actor may ask for (on top of the transition existing at all).
ALLOWED: dict[Actor, frozenset[S]] = {
    Actor.AGENT: frozenset(S),
    Actor.ASSIGNEE: frozenset({S.IN_PROGRESS, S.WAITING_FOR_CUSTOMER, S.RESOLVED}),
    # Customers answer a waiting ticket (resume), close a resolved one, or withdraw a new one.
    Actor.CUSTOMER: frozenset({S.CLOSED, S.NEW, S.ASSIGNED, S.IN_PROGRESS}),
    Actor.OTHER: frozenset(),
}


class TransitionRefused(Exception):
    """The ticket's status does not allow this move (409)."""


class ActorRefused(Exception):
    """This caller may not make this move (403)."""


def check(current: S, target: S, actor: Actor, resume_to: S | None) -> None:
    """Raise unless ``actor`` may move a ticket from ``current`` to ``target``."""
    if target is S.ASSIGNED and current is not S.WAITING_FOR_CUSTOMER:
        raise TransitionRefused("tickets are assigned by routing or by an agent's assignment")
    if target not in TRANSITIONS[current]:
        raise TransitionRefused(f"a ticket in status {current} cannot move to {target}")
    if target not in ALLOWED[actor]:
        raise ActorRefused(f"you may not move a ticket to {target}")
    if actor is Actor.CUSTOMER and not _customer_may(current, target, resume_to):
        raise TransitionRefused(
            "customers answer a waiting ticket, close a new, waiting or resolved one, "
            "or reopen a resolved one"
        )
    if current is S.WAITING_FOR_CUSTOMER and target in (S.NEW, S.ASSIGNED):
        if target is not resume_to:
            raise TransitionRefused(f"a waiting ticket resumes as {resume_to} or in_progress")


def _customer_may(current: S, target: S, resume_to: S | None) -> bool:
    if current is S.WAITING_FOR_CUSTOMER:
        return target in (resume_to, S.CLOSED)
    if current is S.RESOLVED:
        return target in (S.CLOSED, S.IN_PROGRESS)
    return current is S.NEW and target is S.CLOSED
