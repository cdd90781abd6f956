"""Sign-in throttling policy and the client's address: plain rules, no I/O.

The policy (OWASP Authentication Cheat Sheet, "account lockout" and "device cookies"; NIST SP
800-63B section 5.2.2, rate limiting):

- per account *and* client address: ``account_limit`` failures per window; then that pair is
  refused until the window ends. An attacker failing on purpose locks out only themself: the
  owner signing in from anywhere else is not affected.
- per client address (all accounts): ``client_limit`` failures per window; this stops spraying
  one password over many accounts.
- per account (all addresses): ``account_total_limit`` failures per window (NIST's "no more
  than 100"), against guessing from many addresses.

The last two are lockouts that others could cause, so they do not apply to an address the
account signed in from successfully within ``KNOWN_CLIENT_DAYS`` (NIST: "risk-based
techniques ... IP address"; the OWASP device-cookie idea keyed on the address): an agent in an
office shared with an attacker keeps signing in. Windows are fixed and numbered from the epoch,
so no block outlives its window, across restarts too.

Counts are taken by reserving a numbered slot per attempt *before* the password is checked (a
unique insert each), so N concurrent attempts against a limit of L check at most L passwords.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

KNOWN_CLIENT_DAYS = 30


@dataclass(frozen=True)
class Limits:
    account_limit: int
    client_limit: int
    account_total_limit: int
    window_seconds: int


@dataclass(frozen=True)
class Bucket:
    """Failures of one kind counted in one fixed window: at most ``limit`` slots."""

    name: str  # a digest: no e-mail address or client address is stored in clear
    limit: int
    window_start: datetime
    window_end: datetime

    @property
    def id(self) -> str:
        return f"{self.name}|{int(self.window_start.timestamp())}"

    def retry_after(self, now: datetime) -> int:
        return max(1, int((self.window_end - now).total_seconds() + 0.999))


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def known_client_key(email: str, client: str) -> str:
    return _digest("known", email, client)


def window(now: datetime, seconds: int) -> tuple[datetime, datetime]:
    start = int(now.timestamp()) // seconds * seconds
    begin = datetime.fromtimestamp(start, UTC)
    return begin, begin + timedelta(seconds=seconds)


def buckets(
    email: str, client: str, limits: Limits, now: datetime, *, known_client: bool
) -> list[Bucket]:
    """The buckets an attempt for ``email`` from ``client`` must find room in, in order."""
    start, end = window(now, limits.window_seconds)
    out = [Bucket(_digest("pair", email, client), limits.account_limit, start, end)]
    if not known_client:
        out.append(Bucket(_digest("client", client), limits.client_limit, start, end))
        out.append(Bucket(_digest("account", email), limits.account_total_limit, start, end))
    return out


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The caller's address: the socket peer, or, when the peer is a trusted proxy, the
    rightmost address of ``X-Forwarded-For`` that is not itself a trusted proxy.

    Anything left of that hop was written by the client and can be forged; a malformed hop
    ends the walk (the last trusted hop then answers for the request).
    """
    if peer is None:
        return "unknown"
    if not _trusted(peer, trusted) or not forwarded_for:
        return peer
    current = peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        try:
            address = str(ipaddress.ip_address(hop))
        except ValueError:
            return current
        current = address
        if not _trusted(address, trusted):
            return address
    return current


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)
