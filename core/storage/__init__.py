"""Results storage: one protocol (:mod:`core.storage.protocol`), two implementations with the same behaviour and
one contract test suite: SQLite (embedded default, :mod:`core.storage.sqlite`) and MongoDB
(:mod:`core.storage.mongo`), with schema versions and migrations (:mod:`core.storage.migrations`).

Every aggregate runs inside the database (SQL ``GROUP BY``, aggregation pipelines). Calendar days in a chosen time
zone are computed in the database with the zone's UTC offsets over the queried range (:mod:`core.domain.times`).
Never imports the model or the screen.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import StoreError

if TYPE_CHECKING:
    from core.storage.mongo import MongoStore
    from core.storage.sqlite import SQLiteStore

DATABASE_FILE = "results.sqlite3"
WATCH_STATE = (
    "pacs-watch.json"  # in the data folder: the PACS watch's place in its change feed (core.services.pacs_watch)
)

# what an embedded database holds that only its local key file reads right: events hashed with the audit key, and
# patient and study references hashed with the patient-reference key (a study's series saved after a new key
# got another study reference: one study counted as two)
_KEYED = {
    "audit.key": "SELECT 1 FROM audit_head WHERE mac != '' LIMIT 1",
    "patient-ref.key": "SELECT 1 FROM scans WHERE patient_ref IS NOT NULL OR study_ref IS NOT NULL LIMIT 1",
}


def read_only_uri(path: Path) -> str:
    """An SQLite URI that opens ``path`` read-only (a folder named ``site#1`` or ``50%`` included: pasted into a
    URI unescaped, it opened another file)."""
    return path.resolve().as_uri() + "?mode=ro"


def holds_keyed_data(database: Path, key_file: str) -> bool:
    """Whether the embedded ``database`` already holds data made with the key kept in ``key_file``: a new key would
    then report the intact audit trail as tampered with, or leave every patient's History unreachable. False for a
    database that is not there or holds no such data; a :class:`StoreError` when it cannot be read."""
    import sqlite3
    from contextlib import closing

    query = _KEYED.get(key_file)
    if query is None or not database.exists():
        return False
    try:
        with closing(sqlite3.connect(read_only_uri(database), uri=True, timeout=5)) as connection:
            return connection.execute(query).fetchone() is not None
    except sqlite3.OperationalError as error:
        if "no such" in str(error):  # empty, or older than the keyed table or column: nothing to lose
            return False
        raise StoreError(f"The results database cannot be read to check its keys ({error}).") from error
    except sqlite3.Error as error:  # unreadable now: the key file is not made beside it blindly
        raise StoreError(f"The results database cannot be read to check its keys ({error}).") from error


def open_store(mongodb_uri: str | None, data_dir: Path, audit_key: bytes | None = None) -> SQLiteStore | MongoStore:
    """MongoDB when a URI is configured, else the embedded SQLite file ``data_dir/results.sqlite3``; ``audit_key``
    keys the audit chain (:func:`core.config.audit_key`)."""
    if mongodb_uri:
        from pymongo.errors import PyMongoError

        from core.storage.mongo import MongoStore

        if not mongodb_uri.strip().lower().startswith(("mongodb://", "mongodb+srv://")):  # pymongo takes a bare
            # word for a host name: a value set wrong ("not-a-uri", a path) read as "MongoDB cannot be reached"
            raise StoreError("The MongoDB URI cannot be used: it does not start with mongodb:// or mongodb+srv://.")
        try:
            store: SQLiteStore | MongoStore = MongoStore.connect(mongodb_uri)
        except (PyMongoError, ValueError) as error:  # ConfigurationError, InvalidURI, unresolvable SRV record
            raise StoreError(f"The MongoDB URI cannot be used ({type(error).__name__}).") from error
    else:
        from core.storage import stamps
        from core.storage.sqlite import SQLiteStore

        stamps.check(data_dir / DATABASE_FILE)  # a vanished database is refused, never silently replaced
        store = SQLiteStore(data_dir / DATABASE_FILE, audit_key=audit_key)
        stamps.remember(data_dir / DATABASE_FILE)
    store.audit_key = audit_key
    return store
