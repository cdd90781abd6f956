"""Argon2id password hashing, bounded: each hash takes 64 MiB, so only a few run at once.

Hashes run on a thread pool of ``concurrency`` threads (off the event loop); that pool is the
bound, whatever happens to the requests waiting for it (a cancelled request cannot free a slot
while its hash still runs). At most ``queue`` more calls wait; beyond that the caller gets 503
at once instead of piling up.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from prometheus_client import Counter, Gauge

from shared.http import Problem

T = TypeVar("T")

IN_PROGRESS = Gauge(
    "fleetdesk_identity_password_hashes_in_progress", "Argon2 hashes being computed right now."
)
REFUSED = Counter(
    "fleetdesk_identity_password_hash_refusals_total",
    "Sign-ins and registrations refused because too many hashes were waiting.",
)


def busy() -> Problem:
    return Problem(
        503,
        "busy",
        "Too many sign-ins at once",
        "try again in a moment",
        headers={"Retry-After": "1"},
    )


class Passwords:
    def __init__(self, concurrency: int, queue: int, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()  # Argon2id, the library's recommended costs
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="argon2")
        self._capacity = concurrency + queue
        self._admitted = 0
        self._lock = threading.Lock()
        self._running = 0
        self.peak = 0  # most hashes seen running at once (tests and operators)
        # Verified against when the account does not exist, so timing does not tell which
        # e-mail addresses have accounts.
        self._dummy = self._hasher.hash("not-a-real-password-0")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _counted(self, fn: Callable[[], T]) -> T:
        with self._lock:
            self._running += 1
            self.peak = max(self.peak, self._running)
        IN_PROGRESS.inc()
        try:
            return fn()
        finally:
            IN_PROGRESS.dec()
            with self._lock:
                self._running -= 1

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._admitted >= self._capacity:
            REFUSED.inc()
            raise busy()
        self._admitted += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self._counted, fn)
        finally:
            self._admitted -= 1

    async def hash(self, password: str) -> str:
        return await self._run(lambda: self._hasher.hash(password))

    async def verify(self, stored: str | None, password: str) -> bool:
        """True when ``password`` matches ``stored``; as slow when there is no account."""

        def check() -> bool:
            try:
                return self._hasher.verify(stored or self._dummy, password) and bool(stored)
            except (VerificationError, InvalidHashError):
                return False

        return await self._run(check)
