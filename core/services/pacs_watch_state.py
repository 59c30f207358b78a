"""The PACS watch's state: the feed's last change handled and a fingerprint of each study analysed, kept in a
small JSON file in the data folder (:class:`WatchState`)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import PacsError, WatchStateUnwritable

LEGACY = "handled"  # a study handled before fingerprints were kept


@dataclass
class WatchState:
    """The last change of the PACS's feed already handled and, for each study analysed (a keyed HMAC of its UID with
    the patient-reference key, newest last; a plain SHA-256 without a key, and in files written before), a
    fingerprint of its MR series and their image counts when it was; kept in a small JSON file so that a restart
    goes on from there. A study stable again with the same MR images (our own report added to it, say) is not
    analysed again; one with MR images added since is. (A plain hash let whoever held the file test which PACS
    studies were triaged.)"""

    path: Path
    last: int = 0
    handled: dict[str, str] = field(default_factory=dict)
    tries: dict[str, int] = field(default_factory=dict)  # failed tries of a study the PACS keeps failing
    key: bytes | None = None
    failing_since: dict[str, float] = field(default_factory=dict)  # when its first failed try of a row was (epoch s)
    read: bool = False  # whether a watch ever read the change feed (a first start that failed has not)

    def _name(self, study_uid: str) -> str:
        """A study's name in the file: keyed when there is a key."""
        if self.key is None:
            return _plain(study_uid)
        return hmac.new(self.key, f"pacs-watch|{study_uid}".encode(), hashlib.sha256).hexdigest()

    @classmethod
    def load(cls, path: Path, key: bytes | None = None) -> WatchState:
        """The state kept at ``path``; a fresh one when there is none (a first start). A file that is there but
        cannot be read is refused, never taken for a first start: the watch would go back to the beginning of the
        PACS's history and analyse (and, sending, write reports into) every study it ever held."""
        if not path.exists():
            return cls(path, key=key)
        try:
            saved = json.loads(path.read_text())
            handled = saved.get("handled", {})
            if isinstance(handled, list):  # written before fingerprints: handled, images unknown (never redone)
                handled = dict.fromkeys(handled, LEGACY)
            tries = {str(k): int(v) for k, v in saved.get("tries", {}).items()}
            since = {str(k): float(v) for k, v in saved.get("failing_since", {}).items()}
            kept = {str(k): str(v) for k, v in handled.items()}
            # no "read" mark: written by hand ({"last": 0} to go through the history again) or by an earlier
            # version, never moved by --from-now; this version's first start writes "read": false
            last = saved["last"]  # a change number as written: "5", true, -1, 5.5 and 1e400 are none
            if isinstance(last, bool) or not isinstance(last, int) or last < 0:
                raise ValueError("not a change number")
            return cls(path, last, kept, tries, key, since, bool(saved.get("read", True)))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
            raise PacsError(
                f"The watch's state file ({path.name} in the data folder) cannot be read: restore it from a backup, "
                'or replace it with one holding {"last": N}, N the PACS change to go on after (0 goes through '
                "its whole history again)."
            ) from error

    def seen(self, study_uid: str) -> bool:
        return self.fingerprint(study_uid) is not None

    def fingerprint(self, study_uid: str) -> str | None:
        """The study's MR fingerprint when it was analysed; None if it never was."""
        found = self.handled.get(self._name(study_uid))
        return found if found is not None else self.handled.get(_plain(study_uid))  # as files before keys wrote it

    def failed(self, study_uid: str, now: float) -> tuple[int, float]:
        """Count one more failed try of a study at ``now``; returns how many there have been, and for how many
        seconds it has failed (from its first failed try)."""
        name = self._name(study_uid)
        self.tries[name] = self.tries.pop(_plain(study_uid), 0) + self.tries.get(name, 0) + 1
        since = self.failing_since.setdefault(name, now)
        return self.tries[name], max(0.0, now - since)

    def save(self, last: int, handled: dict[str, str] | None = None) -> None:
        self.last = last
        for uid, fingerprint in (handled or {}).items():
            name = self._name(uid)
            for old in (name, _plain(uid)):  # newest last; a plain name written before keys goes
                self.handled.pop(old, None)
                self.tries.pop(old, None)
                self.failing_since.pop(old, None)
            self.handled[name] = fingerprint
        self.handled = dict(list(self.handled.items())[-10_000:])
        partial = None
        try:  # a read-only folder fails here, a full disk below: both said as the state file's
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # a draft of its own, readable by the server's account only (as the database is): one fixed draft name
            # let a second writer truncate the draft the first was about to move in place (a watch then read an
            # empty state, or failed on the draft gone)
            handle, partial = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=".tmp")
            with os.fdopen(handle, "w") as out:
                kept = {"last": last, "handled": self.handled, "tries": self.tries, "failing_since": self.failing_since}
                kept["read"] = self.read
                out.write(json.dumps(kept))
                out.flush()
                os.fsync(out.fileno())  # on disk before it replaces the old state: a crash leaves one or the other
            os.replace(partial, self.path)
        except OSError as error:  # said as the state file's (it read "bad_input", naming a draft file)
            if partial is not None:
                Path(partial).unlink(missing_ok=True)
            raise WatchStateUnwritable(self.path.name, error.strerror or type(error).__name__) from error
        except BaseException:
            if partial is not None:
                Path(partial).unlink(missing_ok=True)
            raise

    @staticmethod
    def exclusive(path: Path) -> int | None:
        """An open lock on ``path`` (the watch's lock file) while this process lives, or None when another watch
        holds it: two watches of one data folder pulled, analysed and sent every study twice."""
        import fcntl

        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(handle)
            return None
        return handle


def _plain(study_uid: str) -> str:
    """A study's name in files written without a key (and before keys): the SHA-256 of its UID."""
    return hashlib.sha256(study_uid.encode()).hexdigest()
