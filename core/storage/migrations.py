"""Schema versions of both stores, and the steps that upgrade an older SQLite file in place (MongoDB's:
:mod:`core.storage.mongo_migrations`).

SQLite keeps its version in ``PRAGMA user_version``; MongoDB in the ``meta`` collection (``_id: "schema"``).
- version 1 (round 1): a result's id included the patient reference, so typing the reference after uploading
  saved the same image again; the record's confidence was P(label).
- version 2: id = image + model + version + frame; the patient reference is an attribute; ``frame`` column;
  confidence = the probability that the tumour / no-tumour call is right. Upgrading merges the copies version 1
  made of one upload into one result (the earliest, with the latest patient reference and review given).
- version 3: accounts, append-only reviews (the latest summarised on the result: final label, count) and a
  hash-chained, append-only audit trail (SQLite triggers refuse UPDATE and DELETE on both); the result keeps the
  key of its de-identified pixels. Upgrading moves version 2's one review per result into the reviews table.
- version 4: series. A result is a single scan or a whole series (``kind``; its study's reference and section
  count), with the series' sections in their own table; roll-ups count each kind apart. Earlier results are scans.
- version 5: whole-day roll-ups beside the quarter-hour ones (SQLite: summaries, confidence, confusion, review
  turnaround per UTC day), so that two years of results are summed in milliseconds. Upgrading builds them.
- version 6: the per-day sums also on days shifted by whole hours (SQLite), so that a calendar day far from UTC
  is read as quickly as a UTC day. Upgrading builds them (every roll-up is rebuilt from the results).
- version 7: NIfTI series saved before it carry the orientation ``(1, 0, 0, 0, -1, 0)``, which mislabelled their
  stored pixels (shown with the patient's right on the screen's right, anterior at the top) as L/P where they are
  R/A; upgrading sets the orientation that describes those pixels, ``(-1, 0, 0, 0, 1, 0)``, so the letters shown
  with them are right. New series are stored in the radiological view (:mod:`core.imaging.geometry`). The audit
  chain gets a head (last sequence number and hash) kept apart from the events, and new events are keyed (HMAC).
- version 8: the audit trail is filtered in the database (by account, action, target and time, newest first), through
  an index for each filter (MongoDB: created on every start, as the results' are); the last event a check of the
  chain found intact is kept (SQLite: table ``audit_verified``; MongoDB: ``meta`` ``_id: "audit_verified"``), so
  the page re-hashes only the events after it. Upgrading builds the indexes; the first check verifies everything.
- versions 9 to 13: docs/changes.md.

An upgrade runs in one transaction after a backup copy of the file (``<file>.v<N>.bak``); a database newer than
this code is refused rather than guessed at.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path

from core.domain.people import AuditHead
from core.domain.results import record_id
from core.errors import StoreError
from core.storage import read_only_uri
from core.storage.protocol import SCHEMA_VERSION
from core.storage.schema import (
    AUDIT_SEARCH,
    LESION_COLUMNS,
    PEOPLE,
    SCANS,
    STUDY_UNREAD_COLUMN,
    create_schema,
    fill_rollup,
)

logger = logging.getLogger("btd.storage")


def not_newer(connection: sqlite3.Connection) -> int:
    """The file's schema version; :class:`StoreError` when a later release wrote it. Read before anything is set
    on the connection (its journal mode, written into the file's header, changed a database it then refused)."""
    found = int(connection.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"The results database has schema version {found}, newer than this release understands "
            f"({SCHEMA_VERSION}); upgrade the application."
        )
    return found


def migrate_sqlite(connection: sqlite3.Connection, path: Path, key: bytes | None = None) -> int:
    """Bring the file to :data:`SCHEMA_VERSION` (creating it when empty); returns the version found. ``key``: the
    audit key, which signs an audit head the upgrade makes."""
    found = not_newer(connection)
    if found == SCHEMA_VERSION:
        return found
    has_table = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'scans'").fetchone()
    if has_table:  # round 1 never set a version: a table without one is version 1
        _backup(connection, path, max(found, 1))  # before the write lock: the backup reads the whole file
    connection.execute("PRAGMA foreign_keys=OFF")  # a table rebuild must not cascade; checked before commit
    connection.execute("BEGIN IMMEDIATE")  # one writer migrates; others wait on the busy timeout
    try:
        found = int(connection.execute("PRAGMA user_version").fetchone()[0])  # another process may have done it
        if found < SCHEMA_VERSION and has_table:
            found = max(found, 1)
            if found == 1:
                merged = _sqlite_v1_to_v2(connection)
                logger.warning("event=store_migrated store=sqlite from=1 to=2 merged_duplicates=%d", merged)
            if found <= 2:
                moved = _sqlite_v2_to_v3(connection)
                logger.warning("event=store_migrated store=sqlite to=3 reviews_moved=%d", moved)
            if found <= 3:
                _sqlite_v3_to_v4(connection)
                logger.warning("event=store_migrated store=sqlite to=4")
            if found <= 6:
                fixed = _sqlite_v6_to_v7(connection, key)
                logger.warning("event=store_migrated store=sqlite to=7 nifti_orientations_fixed=%d", fixed)
            if found <= 7:
                for statement in AUDIT_SEARCH:
                    connection.execute(statement)
                logger.warning("event=store_migrated store=sqlite to=8 audit_indexes=built")
            if found <= 8:
                added = _add_columns(connection, "scans", LESION_COLUMNS)  # never segmented: no area
                logger.warning("event=store_migrated store=sqlite to=9 lesion_columns_added=%d", added)
            if found <= 10:
                marked = _sqlite_v10_to_v11(connection)
                logger.warning("event=store_migrated store=sqlite to=11 studies_with_unread_series=%d", marked)
            if found <= 11:
                added = _add_columns(connection, "accounts", ("sessions_from_ms INTEGER",))
                logger.warning("event=store_migrated store=sqlite to=12 account_column_added=%d", added)
            if found <= 12:  # an administrator's temporary password (older ones were not)
                _add_columns(connection, "accounts", ("must_change INTEGER NOT NULL DEFAULT 0",))
            connection.execute("DROP INDEX IF EXISTS scans_series")  # version 4's, now scans_studies (covering)
            logger.warning("event=store_migrated store=sqlite to=%d", SCHEMA_VERSION)  # roll-ups rebuilt below
        create_schema(connection)
        if found < 6 and has_table:  # version 7 changes no figure: its roll-ups stand
            fill_rollup(connection)
        if connection.execute("PRAGMA foreign_key_check").fetchone():
            raise StoreError("The upgrade would leave reviews or sections without their result; nothing was changed.")
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:  # SQLite rolled back itself on a full disk: a second ROLLBACK hid the cause
            connection.execute("ROLLBACK")
        raise
    finally:
        connection.execute("PRAGMA foreign_keys=ON")
    return found


def _add_columns(connection: sqlite3.Connection, table: str, columns: tuple[str, ...]) -> int:
    """Add the ``columns`` (definitions) ``table`` lacks (NULL in every older row; a table an earlier step rebuilt
    from the current definition has them already). Returns how many were added."""
    present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
    missing = [column for column in columns if column.split()[0] not in present]
    for column in missing:
        connection.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
    return len(missing)


def _sqlite_v10_to_v11(connection: sqlite3.Connection) -> int:
    """The column the studies' chart groups on, read from each series' geometry (where it stays), and the covering
    index rebuilt with it (:data:`~core.storage.schema.INDEXES` makes it again). Returns how many series it marks."""
    _add_columns(connection, "scans", (STUDY_UNREAD_COLUMN,))
    connection.execute("DROP INDEX IF EXISTS scans_studies")
    return connection.execute(
        "UPDATE scans SET study_unread = json_extract(geometry, '$.study_unread') "
        "WHERE kind = 'series' AND json_extract(geometry, '$.study_unread') > 0"
    ).rowcount


OLD_NIFTI_ORIENTATION = [1.0, 0.0, 0.0, 0.0, -1.0, 0.0]  # what versions up to 6 wrote for every NIfTI series
NIFTI_ORIENTATION_OF_OLD_PIXELS = [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # what their stored pixels really show


def _sqlite_v6_to_v7(connection: sqlite3.Connection, key: bytes | None) -> int:
    """Correct the orientation recorded with NIfTI series saved before version 7 and start the audit chain's head
    (kept apart from the events) at the last event; returns how many orientations were corrected."""
    connection.execute(
        "CREATE TABLE IF NOT EXISTS audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, "
        "hash TEXT NOT NULL, keyed_since INTEGER NOT NULL DEFAULT 0, mac TEXT NOT NULL DEFAULT '')"
    )
    connection.execute(
        "INSERT OR IGNORE INTO audit_head (id, seq, hash) SELECT 1, seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
    )
    head = connection.execute(
        "SELECT seq, hash FROM audit_head WHERE id = 1 AND keyed_since = 0 AND mac = ''"
    ).fetchone()
    if head is not None and key is not None:  # signed as it is made: unsigned, verify read it as altered
        connection.execute("UPDATE audit_head SET mac = ? WHERE id = 1", (upgraded_head_mac(head[0], head[1], key),))
    cursor = connection.execute(
        "UPDATE scans SET geometry = json_set(geometry, '$.orientation', json(?)) "
        "WHERE kind = 'series' AND image_format = 'nifti' AND json_extract(geometry, '$.orientation') = json(?)",
        (json.dumps(NIFTI_ORIENTATION_OF_OLD_PIXELS), json.dumps(OLD_NIFTI_ORIENTATION)),
    )
    return cursor.rowcount


def _backup(connection: sqlite3.Connection, path: Path, version: int) -> None:
    """A copy of the database as it is just before it is upgraded from ``version``, beside it (0600 from its first
    byte), always made anew: an earlier copy under the name was reused, weeks older than the database after a
    restore and a downgrade. Written to a draft renamed into place once it opens whole: never half a backup under
    the name, and the earlier copy stays if this one cannot be made."""
    target = path.with_name(f"{path.name}.v{version}.bak")
    # a draft of its own (0600), per process and per thread: named by the process alone, two threads opening a new
    # database together wrote one draft, and one of them found it "not whole"
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    draft = Path(name)
    copy = sqlite3.connect(draft)
    try:
        connection.backup(copy)
    finally:
        copy.close()
    if not _whole(draft):
        draft.unlink(missing_ok=True)
        raise StoreError("The backup before the database upgrade could not be written whole; nothing was changed.")
    with closing(sqlite3.connect(read_only_uri(draft), uri=True)) as check:
        copied = check.execute("PRAGMA user_version").fetchone()[0]
    if copied > version:  # another process (the app and the PACS watch started together) upgraded it meanwhile:
        draft.unlink()  # its backup of version ``version`` stands, never replaced by an upgraded copy
    else:
        os.replace(draft, target)
    for leftover in (draft.with_name(f"{draft.name}-wal"), draft.with_name(f"{draft.name}-shm")):
        leftover.unlink(missing_ok=True)  # the read-only opens of the draft left them beside it


def _whole(copy: Path) -> bool:
    """Whether a backup opens, passes SQLite's integrity check and holds the results table."""
    try:
        with closing(sqlite3.connect(read_only_uri(copy), uri=True)) as check:
            ok = check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            return ok and check.execute("SELECT 1 FROM sqlite_master WHERE name = 'scans'").fetchone() is not None
    except sqlite3.Error:
        return False


def _sqlite_v1_to_v2(connection: sqlite3.Connection) -> int:
    """Re-key every result by image + model (frame: none in version 1) and merge the copies; returns how many
    rows were merged away."""
    connection.create_function(
        "result_id", 3, lambda sha, name, version: record_id(sha, name, version), deterministic=True
    )
    before = connection.execute("SELECT count(*) FROM scans").fetchone()[0]
    connection.execute("ALTER TABLE scans RENAME TO scans_v1")
    for statement in (
        "DROP INDEX IF EXISTS scans_by_time",
        "DROP INDEX IF EXISTS scans_by_label",
        "DROP INDEX IF EXISTS scans_by_version",
        "DROP INDEX IF EXISTS scans_by_quarter",
        "DROP INDEX IF EXISTS scans_by_confidence",
    ):
        connection.execute(statement)
    create_schema(connection)
    same = "o.image_sha256 = s.image_sha256 AND o.model_name = s.model_name AND o.model_version = s.model_version"
    connection.execute(
        f"""
        INSERT INTO scans (id, created_ms, patient_ref, uploader, image_sha256, image_format, image_width,
            image_height, image_bytes, frame, model_name, model_version, label, is_tumour, tumour_probability,
            confidence, probabilities, roi, timings_ms, gate, gate_score, reviewer, review_verdict, final_label,
            review_note, reviewed_ms)
        SELECT result_id(s.image_sha256, s.model_name, s.model_version), s.created_ms,
            (SELECT o.patient_ref FROM scans_v1 o WHERE {same} AND o.patient_ref IS NOT NULL
             ORDER BY o.created_ms DESC LIMIT 1),
            s.uploader, s.image_sha256, s.image_format, s.image_width, s.image_height, s.image_bytes, NULL,
            s.model_name, s.model_version, s.label, s.is_tumour, s.tumour_probability,
            CASE WHEN s.is_tumour THEN s.tumour_probability ELSE 1 - s.tumour_probability END,
            s.probabilities, s.roi, s.timings_ms, s.gate, s.gate_score,
            r.reviewer, r.review_verdict, r.final_label, r.review_note, r.reviewed_ms
        FROM (SELECT *, row_number() OVER (PARTITION BY image_sha256, model_name, model_version
                                           ORDER BY created_ms, id) AS copy
              FROM scans_v1) AS s
        LEFT JOIN (SELECT o.*, row_number() OVER (PARTITION BY o.image_sha256, o.model_name, o.model_version
                                                  ORDER BY o.reviewed_ms DESC) AS latest
                   FROM scans_v1 o WHERE o.reviewed_ms IS NOT NULL) AS r
            ON r.image_sha256 = s.image_sha256 AND r.model_name = s.model_name
            AND r.model_version = s.model_version AND r.latest = 1
        WHERE s.copy = 1
        """
    )
    after = connection.execute("SELECT count(*) FROM scans").fetchone()[0]
    connection.execute("DROP TABLE scans_v1")
    return int(before - after)


def _sqlite_v2_to_v3(connection: sqlite3.Connection) -> int:
    """Add the review count and image key, the people tables, and move each result's one review of version 2
    into the append-only reviews table (agree stays agree; disagree and uncertain become an override, the final
    label defaulting to the model's); returns how many reviews were moved."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(scans)")}
    if "review_count" not in columns:
        connection.execute("ALTER TABLE scans ADD COLUMN review_count INTEGER NOT NULL DEFAULT 0")
    if "image_key" not in columns:
        connection.execute("ALTER TABLE scans ADD COLUMN image_key TEXT")
    if "first_reviewed_ms" not in columns:
        connection.execute("ALTER TABLE scans ADD COLUMN first_reviewed_ms INTEGER")
    for statement in PEOPLE:
        connection.execute(statement)
    moved = connection.execute(
        "INSERT INTO reviews (result_id, reviewer, created_ms, action, model_label, final_label, reasons, note) "
        "SELECT id, COALESCE(reviewer, 'unknown'), reviewed_ms, "
        "CASE review_verdict WHEN 'agree' THEN 'agree' ELSE 'override' END, label, COALESCE(final_label, label), "
        "'[]', COALESCE(review_note, '') FROM scans WHERE reviewed_ms IS NOT NULL AND review_count = 0"
    ).rowcount
    connection.execute(
        "UPDATE scans SET review_verdict = CASE review_verdict WHEN 'agree' THEN 'agree' ELSE 'override' END, "
        "final_label = COALESCE(final_label, label), review_count = 1, review_note = NULL, "
        "first_reviewed_ms = reviewed_ms "
        "WHERE reviewed_ms IS NOT NULL AND review_count = 0"
    )
    return int(moved)


def _sqlite_v3_to_v4(connection: sqlite3.Connection) -> None:
    """Series: rebuild the results table with a kind, a study reference, a section count and NIfTI as a format
    (SQLite cannot change a CHECK in place: copy, drop, rename, as its documentation describes), and drop the
    roll-ups so that they are rebuilt with the kind. The sections table is created with the rest of the schema."""
    columns = [row[1] for row in connection.execute("PRAGMA table_info(scans)")]
    if "kind" not in columns:
        connection.execute(SCANS.replace("CREATE TABLE IF NOT EXISTS scans (", "CREATE TABLE scans_v4 ("))
        names = ", ".join(columns)
        connection.execute(f"INSERT INTO scans_v4 ({names}) SELECT {names} FROM scans")
        connection.execute("DROP TABLE scans")  # its indexes and triggers go with it
        connection.execute("ALTER TABLE scans_v4 RENAME TO scans")
    rolled = {row[1] for row in connection.execute("PRAGMA table_info(rollup)")}
    if rolled and "kind" not in rolled:
        for statement in (
            "DROP TRIGGER IF EXISTS rollup_on_insert",
            "DROP TRIGGER IF EXISTS rollup_on_review",
            "DROP TABLE rollup",
        ):
            connection.execute(statement)


def upgraded_head_mac(seq: int, digest: str, key: bytes) -> str:
    """The signature of an audit head an upgrade starts at the last event (the chain before it unkeyed)."""
    return AuditHead(int(seq), str(digest)).expected_mac(key)
