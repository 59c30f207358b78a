"""Argon2 password hashing, bounded: at most :data:`AT_ONCE` hashes and checks at a time in this process; and the
failures in a row that lock an account (:func:`claimed`, :func:`failed`).

Each check takes 64 MiB and about 150 ms of a core (argon2-cffi's recommended parameters), and every sign-in
refusal runs one on purpose, an unknown name too (so that timing never tells which names exist): 32 sign-ins sent at
once by anyone who could reach the form took the server past 2 GB. The others wait their turn, and each is answered
as before, only later.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

from core.domain.people import MAX_PASSWORD
from core.storage.protocol import Store

# the longest password checked at sign-in: longer than any that can be set now (MAX_PASSWORD), so that one set
# before that limit existed still signs in
MAX_CHECKED = 64 * MAX_PASSWORD

AT_ONCE = 2
MAX_FAILURES = 5
LOCK_MINUTES = 15
_SLOTS = threading.BoundedSemaphore(AT_ONCE)


class BoundedHasher:
    """argon2's ``PasswordHasher`` whose hashes and checks take one of the process's :data:`AT_ONCE` slots."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def hash(self, password: str) -> str:
        with _SLOTS:
            return self._inner.hash(password)

    def verify(self, hashed: str, password: str) -> bool:
        if len(password) > MAX_CHECKED:  # never one set here (megabytes sent to the form): checked as a wrong one,
            password = ""  # with the same work and the same refusal
        with _SLOTS:
            return self._inner.verify(hashed, password)

    def check_needs_rehash(self, hashed: str) -> bool:
        return self._inner.check_needs_rehash(hashed)


def claimed(store: Store, name: str, now: datetime) -> int | None:
    """A password check claimed for ``name`` (its failures in a row, this one counted), or None while it is locked.
    A count past the limit with no lock in force locks it now: the last allowed failure's lock was never written
    (the database or the server failed in between), and the account stayed refused until an admin unlocked it."""
    attempt = store.begin_sign_in(name, now)
    if attempt is not None and attempt > MAX_FAILURES:
        store.end_sign_in(name, False, now + timedelta(minutes=LOCK_MINUTES))
        return None
    return attempt


def failed(store: Store, name: str, attempt: int, now: datetime) -> bool:
    """A claimed check that failed: the last allowed one locks the account for :data:`LOCK_MINUTES`; whether it did."""
    locked = attempt >= MAX_FAILURES
    store.end_sign_in(name, False, now + timedelta(minutes=LOCK_MINUTES) if locked else None)
    return locked
