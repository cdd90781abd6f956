"""SMTP with aiosmtplib: a small pool of open connections, failures sorted temporary/permanent.

The pool's size bounds how many messages are in flight at once; a connection that failed in
any way is closed and opened again on its next use (the server's state after an error is not
worth guessing). 4xx answers, timeouts and lost connections are temporary; 5xx are permanent.
"""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib
from prometheus_client import Counter

from services.notify.config import NotifySettings
from services.notify.core.model import Mail
from services.notify.ports import PermanentFailure, TemporaryFailure

SENDS = Counter(
    "fleetdesk_notify_smtp_sends_total",
    "Messages handed to the SMTP server, by outcome (sent, temporary, permanent).",
    ["outcome"],
)


def build_message(mail: Mail, sender: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = mail.to
    msg["Subject"] = mail.subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = mail.message_id
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(mail.text)
    msg.add_alternative(mail.html, subtype="html")
    return msg


def classify(exc: Exception) -> Exception:
    """The failure as TemporaryFailure or PermanentFailure, with the server's answer."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        first = exc.recipients[0]
        return _by_code(first.code, f"{first.code} {first.message}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _by_code(exc.code, f"{exc.code} {exc.message}")
    return TemporaryFailure(f"{type(exc).__name__}: {exc}")


def _by_code(code: int, answer: str) -> Exception:
    return PermanentFailure(answer) if 500 <= code < 600 else TemporaryFailure(answer)


class SmtpMailer:
    """``async with SmtpMailer(settings) as mailer: await mailer.send(mail)``."""

    def __init__(self, settings: NotifySettings) -> None:
        self._settings = settings
        self._pool: asyncio.Queue[aiosmtplib.SMTP | None] = asyncio.Queue()
        for _ in range(settings.notify_smtp_connections):
            self._pool.put_nowait(None)  # connected on first use

    async def __aenter__(self) -> SmtpMailer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        while not self._pool.empty():
            client = self._pool.get_nowait()
            if client is not None:
                await _close(client)

    def _client(self) -> aiosmtplib.SMTP:
        s = self._settings
        return aiosmtplib.SMTP(
            hostname=s.notify_smtp_host,
            port=s.notify_smtp_port,
            use_tls=s.notify_smtp_tls,
            start_tls=s.notify_smtp_starttls,
            username=s.notify_smtp_username or None,
            password=s.notify_smtp_password.get_secret_value() or None,
            timeout=s.notify_smtp_timeout_seconds,
        )

    async def send(self, mail: Mail) -> None:
        client = await self._pool.get()
        try:
            if client is None or not client.is_connected:
                client = self._client()
                await client.connect()
            await client.send_message(build_message(mail, self._settings.notify_mail_from))
            SENDS.labels("sent").inc()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            if client is not None:
                await _close(client)
            client = None
            failure = classify(exc)
            SENDS.labels(
                "permanent" if isinstance(failure, PermanentFailure) else "temporary"
            ).inc()
            raise failure from exc
        except BaseException:
            if client is not None:
                await _close(client)
            client = None
            raise
        finally:
            self._pool.put_nowait(client)


async def _close(client: aiosmtplib.SMTP) -> None:
    try:
        if client.is_connected:
            await asyncio.wait_for(client.quit(), 2)
    except Exception:
        client.close()
