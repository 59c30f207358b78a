"""Signed-in sessions that survive a page reload, bound to a secret only the browser holds.

Streamlit starts a new script session for every page load (F5, a typed URL), so the signed-in state alone is lost
on reload. At sign-in the server makes a random token (256 bits), keeps only its SHA-256 with the account name and
the time of last activity, and the browser keeps the token in a ``SameSite=Strict`` cookie. A new page load that
presents a live token is signed in again (the account's current role and state are read as on every run). Every
sign-in makes a new token and signing out forgets it (rotation at both); idle expiry is a session's
(:data:`core.services.accounts.IDLE_MINUTES`). A script session is bound to its token: once the browser's
connection has shown the cookie, a connection without it (a raw WebSocket presenting the session's id) is refused.

The registry lives in the server process (one per server; replicas use sticky sessions, as Streamlit needs
anyway): a restart signs everyone out, which is the safe failure. Plain Python: thread-safe, no Streamlit.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.services.access import Actor
from core.services.accounts import IDLE_MINUTES

COOKIE = "btd_session"


@dataclass
class _Entry:
    actor: Actor  # as it signed in: its credential (a password set since ends it) and where its role came from
    seen: float


class SessionRegistry:
    """Token hashes -> (the user as signed in, last activity). Tokens themselves are never stored."""

    def __init__(self, idle_seconds: float = IDLE_MINUTES * 60, clock: Callable[[], float] | None = None) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._idle = idle_seconds
        # idle time on a clock no step of the wall clock moves (stepped back an hour, an idle session lived 88 min)
        self._clock = clock or time.monotonic

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def issue(self, actor: Actor) -> str:
        """A new token for a user who has just signed in (a new secret at every sign-in)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._prune()
            self._entries[self._key(token)] = _Entry(actor, self._clock())
        return token

    def _live(self, token: str | None) -> _Entry | None:
        """The entry of a live ``token``, its activity recorded now; an idle one is dropped. Call under the lock."""
        if not token:
            return None
        entry = self._entries.get(self._key(token))
        if entry is None or self._clock() - entry.seen > self._idle:
            self._entries.pop(self._key(token), None)
            return None
        entry.seen = self._clock()
        return entry

    def resume(self, token: str | None) -> Actor | None:
        """The user of a live ``token`` as signed in; None when unknown, forgotten or idle too long."""
        with self._lock:
            entry = self._live(token)
        return entry.actor if entry else None

    def touch(self, token: str | None) -> bool:
        """Record activity; False when the token is not (or no longer) live."""
        with self._lock:
            return self._live(token) is not None

    def alive(self, token: str | None) -> bool:
        """Whether ``token`` is live, without recording activity (a timed refresh's check)."""
        with self._lock:
            entry = self._entries.get(self._key(token)) if token else None
            return entry is not None and self._clock() - entry.seen <= self._idle

    def forget(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._entries.pop(self._key(token), None)

    def _prune(self) -> None:
        now = self._clock()
        for key in [k for k, e in self._entries.items() if now - e.seen > self._idle]:
            del self._entries[key]
