"""The SQLite store's connections, on which its parts (results, people, aggregates, quality) are built.

One connection per thread; before each use a connection checks that its file is still the one it opened: a file
replaced while the app runs (a backup restored) is reconnected to (and migrated); a file deleted is refused
(``StoreVanished``) until it is restored, never created again empty. Errors become the store's own exceptions.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from core.domain.results import Record
from core.errors import InvalidRecord, StoreError, StoreUnavailable
from core.storage.migrations import migrate_sqlite, not_newer

logger = logging.getLogger("btd.storage")


class SQLiteBase:
    """A SQLite file's connections, transactions and error mapping: what every part of :class:`SQLiteStore` uses."""

    audit_key: bytes | None = None  # keys the audit chain (set by open_store from the configuration)
    rolls_back = True  # a failure inside atomic() (or a unit of work around it) undoes every write in it

    def __init__(self, path: Path, busy_timeout_s: float = 5.0, audit_key: bytes | None = None) -> None:
        self.path = Path(path)
        self.audit_key = audit_key  # before the first connection: an upgrade signs the audit head it makes
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._migrate_lock = threading.Lock()
        self._opened = False
        with self._errors():
            self._connection()
        self._opened = True  # from now on a missing file has vanished: it is never silently created again

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return None
        return status.st_dev, status.st_ino

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is not None and connection.in_transaction:
            return connection  # a unit of work ends where it began (a restore part-way split it over two files)
        if connection is not None and self._file_identity() != self._local.identity:
            logger.warning("event=store_file_replaced store=sqlite action=reconnect")
            connection.close()
            connection = self._local.connection = None  # never handed out again, whatever _open decides
        if connection is None:
            connection = self._open()
            self._local.connection = connection
            self._local.identity = self._file_identity()
        return connection

    def _open(self) -> sqlite3.Connection:
        from core.storage.stamps import StoreVanished, gone

        if self._opened and gone(self.path):  # deleted, or emptied to 0 bytes (opened, an empty one is migrated)
            logger.error("event=store_vanished store=sqlite path=%s", self.path)  # where: for the server's admin
            raise StoreVanished(  # shown to every role and on the sign-in page: no path
                "The results database disappeared while the app was running; nothing more is saved "
                "until it is restored from a backup (or the app is restarted after `python -m core store forget`)."
            )
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():  # created private: results are clinical data
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        connection = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        connection.row_factory = sqlite3.Row
        try:
            not_newer(connection)
        except StoreError:
            connection.close()
            raise
        self._write_ahead(connection)
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
        connection.execute("PRAGMA foreign_keys=ON")
        with self._migrate_lock:
            migrate_sqlite(connection, self.path, self.audit_key)
        return connection

    def _write_ahead(self, connection: sqlite3.Connection) -> None:
        """WAL journal mode, waited for as long as any statement: SQLite answers "locked" at once, without its busy
        handler, while another connection is making the same new file (a third of the processes opening a new
        database together failed)."""
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                mode = str(connection.execute("PRAGMA journal_mode=WAL").fetchone()[0])
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        if mode.lower() != "wal":  # a network file system
            logger.warning("event=store_journal store=sqlite mode=rollback")  # readers can then make writes wait

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError as error:
            raise InvalidRecord(f"The results database refused the record ({error}).") from error
        except sqlite3.OperationalError as error:
            text = str(error).lower()
            if "locked" in text or "busy" in text:
                raise StoreUnavailable("The results database is locked by another process; try again.") from error
            if "full" in text:  # SQLITE_FULL: it was read as a permissions problem, or hidden by a rollback's error
                raise StoreUnavailable("The disk holding the results database is full; nothing was saved.") from error
            if "disk i/o" in text:
                raise StoreUnavailable(  # also SQLite's answer when its journal files cannot be made (a full disk)
                    "The results database could not be read or written (an input/output error): check that the "
                    "data folder's disk has free space and is writable."
                ) from error
            if "unable to open" in text or "readonly" in text:
                raise StoreUnavailable("The results database file cannot be opened for writing.") from error
            raise StoreError(f"The results database failed: {error}.") from error
        except sqlite3.DatabaseError as error:
            raise StoreError(
                "The results database file is corrupt or is not a database; restore it from a backup."
            ) from error

    @contextmanager
    def _transaction(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction on this thread's connection; inside :meth:`atomic` (or another one) it joins the open
        transaction, which commits or rolls back as a whole."""
        connection = self._connection()
        if connection.in_transaction:
            yield connection
            return
        connection.execute(f"BEGIN {mode}")
        try:
            yield connection
            if self._file_identity() != self._local.identity:  # restored from a backup meanwhile: not into it
                raise StoreUnavailable("The results database was replaced (restored) meanwhile; try again.")
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:  # a failed COMMIT too: left open, every later write joined it unsaved
                with suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            raise

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """A unit of work: every write inside (a result, its sections, a review, an audit event, an account)
        commits together or not at all."""
        with self._errors(), self._transaction():
            yield

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one state of the database (one read transaction on this thread's connection), none of
        the writes that land meanwhile: a board of several aggregates that add up."""
        with self._errors(), self._transaction("DEFERRED"):
            yield

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._errors():
            return self._connection().execute(sql, params).fetchall()

    def get(self, record_id: str) -> Record | None:  # the results part reads a result (a review updates one)
        raise NotImplementedError
