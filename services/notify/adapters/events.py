"""Kafka in: the events that concern people become notify's command (``NotifyPeople``)."""

from __future__ import annotations

from services.notify.core.handlers import Deps, NotifyPeople, notify_people
from services.notify.core.recipients import KINDS
from shared.bus import Handler, Message, PermanentError
from shared.sealing import SealError


def handler(deps: Deps) -> Handler:
    async def handle(msg: Message) -> None:
        kind = KINDS.get(msg.event_type or "")
        if kind is None:
            return  # not for people (accepted readings, assignments, ...)
        event = msg.parse(kind[0])
        try:
            await notify_people(NotifyPeople(msg.event_id, event), deps)
        except SealError as exc:  # sealed to another key: retrying cannot help
            raise PermanentError(f"sealed token does not open: {exc}") from exc

    return handle
