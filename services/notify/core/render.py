"""E-mails from Jinja2 templates, one per language and kind; dates with Babel.

``templates/<language>/<kind>.txt.j2`` holds two blocks, ``subject`` (one line) and then ``body``
(plain text).
The HTML part is the shared ``_layout.html.j2`` around the same body, escaped and split into
paragraphs, with the action link as a button; so every language has one text to keep right.
Dates and times are written in the recipient's language and the organisation's time zone.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.dates import format_date, format_time, get_datetime_format
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from services.notify.core.model import Notification, Recipient

TEMPLATES = Path(__file__).with_name("templates")
LOCALES = {"fi": "fi_FI", "sv": "sv_SE", "en": "en_GB"}


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


class Renderer:
    """Renders a notification for one recipient: (subject, plain text, HTML)."""

    def __init__(self, directory: Path = TEMPLATES) -> None:
        self._text = Environment(
            loader=FileSystemLoader(directory),
            autoescape=False,  # plain text; the HTML layout escapes on its own
            undefined=StrictUndefined,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._html = Environment(
            loader=FileSystemLoader(directory),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
        )

    def render(self, note: Notification, recipient: Recipient) -> tuple[str, str, str]:
        zone = _zone(recipient.timezone)
        locale = LOCALES[recipient.language]

        def day(value: datetime | str) -> str:
            moment = datetime.fromisoformat(value) if isinstance(value, str) else value
            return format_date(moment.astimezone(zone), "full", locale=locale)

        def when(value: datetime | str) -> str:
            """Weekday, date and time, as the recipient's language writes them."""
            moment = datetime.fromisoformat(value) if isinstance(value, str) else value
            time = format_time(moment, "short", tzinfo=zone, locale=locale)
            pattern = str(get_datetime_format("full", locale=locale))
            return pattern.replace("{1}", day(moment)).replace("{0}", time)

        context: dict[str, Any] = {
            **note.context,
            "recipient": recipient,
            "when": when,
            "day": day,
            "zone": zone.key,
        }
        template = self._text.get_template(f"{recipient.language}/{note.template}.txt.j2")
        # The subject block comes first, on a line of its own; the body follows.
        subject, _, body = template.render(context).strip().partition("\n")
        subject, body = subject.strip(), body.strip() + "\n"
        paragraphs = [p.strip() for p in body.split("\n\n") if p.strip()]
        html = self._html.get_template("_layout.html.j2").render(
            subject=subject,
            paragraphs=[p.splitlines() for p in paragraphs],
            link=note.context.get("link"),
            language=recipient.language,
        )
        return subject, body, html
