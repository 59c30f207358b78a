"""Argon2 password hashing, bounded: at most :data:`AT_ONCE` hashes and checks at a time in this process.

Each check takes 64 MiB and about 150 ms of a core (argon2-cffi's recommended parameters), and every sign-in
refusal runs one on purpose, an unknown name too (so that timing never tells which names exist): 32 sign-ins sent at
once by anyone who could reach the form took the server past 2 GB. The others wait their turn, and each is answered
as before, only later.
"""

from __future__ import annotations

import threading
from typing import Any

AT_ONCE = 2
_SLOTS = threading.BoundedSemaphore(AT_ONCE)


class BoundedHasher:
    """argon2's ``PasswordHasher`` whose hashes and checks take one of the process's :data:`AT_ONCE` slots."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def hash(self, password: str) -> str:
        with _SLOTS:
            return self._inner.hash(password)

    def verify(self, hashed: str, password: str) -> bool:
        with _SLOTS:
            return self._inner.verify(hashed, password)

    def check_needs_rehash(self, hashed: str) -> bool:
        return self._inner.check_needs_rehash(hashed)
