"""The SQLite schema of the current version: the results table and its covering indexes, the people tables
(accounts, append-only reviews and audit trail, with an index for each of its filters), the sections of series and
the roll-ups the dashboard sums. :mod:`core.storage.migrations` brings older files here."""

from __future__ import annotations

import sqlite3

from core.domain.results import TURNAROUND_CAP_H

SCANS = """
CREATE TABLE IF NOT EXISTS scans (
    id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    patient_ref TEXT CHECK (patient_ref IS NULL OR length(patient_ref) = 64),
    uploader TEXT,
    image_sha256 TEXT NOT NULL CHECK (length(image_sha256) = 64),
    image_format TEXT NOT NULL CHECK (image_format IN ('png', 'jpeg', 'dicom', 'nifti')),
    image_width INTEGER NOT NULL CHECK (image_width > 0),
    image_height INTEGER NOT NULL CHECK (image_height > 0),
    image_bytes INTEGER NOT NULL CHECK (image_bytes > 0),
    frame INTEGER CHECK (frame IS NULL OR frame >= 0),
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    label TEXT NOT NULL,
    is_tumour INTEGER NOT NULL CHECK (is_tumour IN (0, 1)),
    tumour_probability REAL NOT NULL CHECK (tumour_probability BETWEEN 0 AND 1),
    confidence REAL NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    probabilities TEXT NOT NULL,
    roi TEXT NOT NULL,
    timings_ms TEXT NOT NULL,
    gate TEXT NOT NULL DEFAULT 'accepted' CHECK (gate IN ('accepted', 'needs_review', 'rejected')),
    gate_score REAL,
    reviewer TEXT,
    review_verdict TEXT,
    final_label TEXT,
    review_note TEXT,
    reviewed_ms INTEGER,
    review_count INTEGER NOT NULL DEFAULT 0,
    image_key TEXT,
    first_reviewed_ms INTEGER,
    kind TEXT NOT NULL DEFAULT 'scan' CHECK (kind IN ('scan', 'series')),
    study_ref TEXT CHECK (study_ref IS NULL OR length(study_ref) = 64),
    section_count INTEGER CHECK (section_count IS NULL OR section_count > 0),
    geometry TEXT NOT NULL DEFAULT '{}',
    lesion_px INTEGER CHECK (lesion_px IS NULL OR lesion_px >= 0),
    lesion_mm2 REAL CHECK (lesion_mm2 IS NULL OR lesion_mm2 >= 0),
    lesion_ml REAL CHECK (lesion_ml IS NULL OR lesion_ml >= 0),
    study_unread INTEGER CHECK (study_unread IS NULL OR study_unread >= 0),
    CHECK ((kind = 'series') = (section_count IS NOT NULL))
)"""
LESION_COLUMNS = (  # version 9: the lesion segmenter's area and volume (added in place to older tables)
    "lesion_px INTEGER CHECK (lesion_px IS NULL OR lesion_px >= 0)",
    "lesion_mm2 REAL CHECK (lesion_mm2 IS NULL OR lesion_mm2 >= 0)",
    "lesion_ml REAL CHECK (lesion_ml IS NULL OR lesion_ml >= 0)",
)
STUDY_UNREAD_COLUMN = "study_unread INTEGER CHECK (study_unread IS NULL OR study_unread >= 0)"  # version 11
# review_note is kept only so that a version-2 file's notes can be moved into the reviews table.

INDEXES = (
    "CREATE INDEX IF NOT EXISTS scans_by_time ON scans (created_ms, model_version, label, gate, is_tumour, confidence)",
    "CREATE INDEX IF NOT EXISTS scans_by_label "
    "ON scans (label, gate, is_tumour, confidence, created_ms, model_version)",
    "CREATE INDEX IF NOT EXISTS scans_by_version "
    "ON scans (model_version, model_name, created_ms, label, gate, is_tumour, confidence)",
    "CREATE INDEX IF NOT EXISTS scans_by_quarter "
    "ON scans (created_ms / 900000, created_ms, is_tumour, model_version, label, gate)",
    "CREATE INDEX IF NOT EXISTS scans_by_confidence "
    "ON scans (CAST(confidence * 20 AS INTEGER), created_ms, model_version, label, gate)",
    "CREATE INDEX IF NOT EXISTS scans_by_patient ON scans (patient_ref, created_ms) WHERE patient_ref IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS scans_unreviewed ON scans (review_count, gate, created_ms)",
    "CREATE INDEX IF NOT EXISTS scans_disagreements ON scans (gate, created_ms) "
    "WHERE review_count > 0 AND final_label IS NOT NULL AND final_label != label",
    "CREATE INDEX IF NOT EXISTS scans_studies ON scans (kind, COALESCE(study_ref, id), created_ms, is_tumour, gate, "
    "model_version, label, study_ref, id, study_unread) WHERE kind = 'series'",  # series grouped by study in order
    "CREATE INDEX IF NOT EXISTS scans_quality ON scans (created_ms / 900000, created_ms, model_version, gate, "
    "is_tumour, tumour_probability, review_count, label, final_label, first_reviewed_ms)",
)
# Covering indexes let every dashboard query stream through one index in group order (no sort of a million
# rows): by label for the summary, by model for the version table, by quarter-hour (every time zone's offset is
# a multiple of 15 minutes) for calendar days, by twentieth of confidence for the histogram.

PEOPLE = (
    """CREATE TABLE IF NOT EXISTS accounts (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('radiologist', 'supervisor', 'admin')),
        password_hash TEXT,
        disabled INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
        failed_count INTEGER NOT NULL DEFAULT 0,
        locked_until_ms INTEGER,
        created_ms INTEGER NOT NULL,
        sessions_from_ms INTEGER,
        must_change INTEGER NOT NULL DEFAULT 0 CHECK (must_change IN (0, 1))
    )""",
    """CREATE TABLE IF NOT EXISTS reviews (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        result_id TEXT NOT NULL REFERENCES scans (id),
        reviewer TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('agree', 'override')),
        model_label TEXT NOT NULL,
        final_label TEXT NOT NULL,
        reasons TEXT NOT NULL DEFAULT '[]',
        note TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX IF NOT EXISTS reviews_by_result ON reviews (result_id, seq)",
    """CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        role TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE
    )""",
    "CREATE INDEX IF NOT EXISTS audit_by_action ON audit (action, at_ms)",
    # the chain's head (last sequence number and hash), kept apart from the events: deleting the last events
    # leaves a head that no longer matches them (core.services.audit.verify)
    "CREATE TABLE IF NOT EXISTS audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, "
    "hash TEXT NOT NULL, keyed_since INTEGER NOT NULL DEFAULT 0, mac TEXT NOT NULL DEFAULT '')",
    *(
        f"CREATE TRIGGER IF NOT EXISTS {table}_append_only_{verb.lower()} BEFORE {verb} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} are append-only'); END"
        for table in ("reviews", "audit")
        for verb in ("UPDATE", "DELETE")
    ),
)


# Version 8: each filter of the audit page reads through an index in the order shown (newest first: time, then the
# sequence number, which SQLite keeps after an index's columns), and the last event a check of the chain found
# intact is kept apart from the events, so that the next check re-hashes only what came after it.
AUDIT_SEARCH = (
    "CREATE INDEX IF NOT EXISTS audit_by_time ON audit (at_ms)",
    "CREATE INDEX IF NOT EXISTS audit_by_actor ON audit (actor, at_ms)",
    "CREATE INDEX IF NOT EXISTS audit_by_target ON audit (target, at_ms) WHERE target IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS audit_verified (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, "
    "hash TEXT NOT NULL, mac TEXT NOT NULL DEFAULT '')",
)

SECTIONS = """CREATE TABLE IF NOT EXISTS sections (
    record_id TEXT NOT NULL REFERENCES scans (id),
    idx INTEGER NOT NULL CHECK (idx >= 0),
    position REAL NOT NULL,
    tumour_probability REAL CHECK (tumour_probability IS NULL OR tumour_probability BETWEEN 0 AND 1),
    label TEXT,
    skipped TEXT,
    CHECK ((skipped IS NULL) = (tumour_probability IS NOT NULL AND label IS NOT NULL)),
    PRIMARY KEY (record_id, idx)
) WITHOUT ROWID"""

# Roll-ups: one row per UTC quarter-hour, kind (scan or series), model, verdict and gate decision, kept up to date
# by triggers in the same transaction as every insert and review, so the dashboard sums about a third as many
# narrow rows as it would read index entries. Every time zone's day is a whole number of quarters.
_ROLLUP_VALUES = (
    "NEW.created_ms / 900000, NEW.kind, NEW.model_name, NEW.model_version, NEW.label, NEW.gate, 1, NEW.is_tumour, "
    "NEW.confidence, NEW.tumour_probability, NEW.tumour_probability * NEW.tumour_probability, "
    "NEW.review_count > 0, NEW.review_count > 0 AND NEW.final_label = NEW.label, NEW.created_ms, NEW.created_ms"
)
ROLLUP = (
    """CREATE TABLE IF NOT EXISTS rollup (
        quarter INTEGER NOT NULL,
        kind TEXT NOT NULL,
        model_name TEXT NOT NULL,
        model_version TEXT NOT NULL,
        label TEXT NOT NULL,
        gate TEXT NOT NULL,
        n INTEGER NOT NULL,
        tumour INTEGER NOT NULL,
        confidence_sum REAL NOT NULL,
        probability_sum REAL NOT NULL,
        probability_squares REAL NOT NULL,
        reviewed INTEGER NOT NULL,
        agreed INTEGER NOT NULL,
        first_ms INTEGER NOT NULL,
        last_ms INTEGER NOT NULL,
        PRIMARY KEY (quarter, kind, model_version, model_name, label, gate)
    ) WITHOUT ROWID""",
    "CREATE TRIGGER IF NOT EXISTS rollup_on_insert AFTER INSERT ON scans BEGIN "
    "INSERT INTO rollup (quarter, kind, model_name, model_version, label, gate, n, tumour, confidence_sum, "
    f"probability_sum, probability_squares, reviewed, agreed, first_ms, last_ms) VALUES ({_ROLLUP_VALUES}) "
    "ON CONFLICT (quarter, kind, model_version, model_name, label, gate) DO UPDATE SET n = n + 1, "
    "tumour = tumour + excluded.tumour, confidence_sum = confidence_sum + excluded.confidence_sum, "
    "probability_sum = probability_sum + excluded.probability_sum, "
    "probability_squares = probability_squares + excluded.probability_squares, "
    "reviewed = reviewed + excluded.reviewed, agreed = agreed + excluded.agreed, "
    "first_ms = min(first_ms, excluded.first_ms), last_ms = max(last_ms, excluded.last_ms); END",
    "CREATE TRIGGER IF NOT EXISTS rollup_on_review AFTER UPDATE OF review_count, final_label ON scans BEGIN "
    "UPDATE rollup SET reviewed = reviewed + (NEW.review_count > 0) - (OLD.review_count > 0), "
    "agreed = agreed + (NEW.review_count > 0 AND NEW.final_label IS NOT NULL AND NEW.final_label = NEW.label) "
    "- (OLD.review_count > 0 AND OLD.final_label IS NOT NULL AND OLD.final_label = OLD.label) "
    "WHERE quarter = NEW.created_ms / 900000 AND kind = NEW.kind AND model_version = NEW.model_version "
    "AND model_name = NEW.model_name AND label = NEW.label AND gate = NEW.gate; END",
)


# Whole UTC days: the same sums per day (a two-year range reads ~10,000 rows instead of ~250,000 quarters), the
# confidence histogram, the confusion of verdicts against final labels and the review turnaround. A range is
# summed from the whole days it holds plus its partial days at either end (quarters or the results themselves);
# a local calendar day is its UTC day corrected by the quarters it shares with a neighbour, read through
# ``rollup_by_slot`` (quarter of the day). Only shown (not refused) reviewed results enter the review tables.
_DAY = "NEW.created_ms / 86400000"
_SHOWN_REVIEWED = "{0}.review_count > 0 AND {0}.gate != 'rejected'"
_CONFUSION_KEY = "(day, kind, model_version, label, final_label)"
_TURNAROUND_HOURS = (
    "min(CAST(({0}.first_reviewed_ms - {0}.created_ms) / 3600000 AS INTEGER), " + str(TURNAROUND_CAP_H) + ")"
)
DAYS = (
    ROLLUP[0].replace("rollup (", "rollup_day (", 1).replace("quarter", "day"),
    """CREATE TABLE IF NOT EXISTS confidence_day (
        day INTEGER NOT NULL, kind TEXT NOT NULL, model_version TEXT NOT NULL, label TEXT NOT NULL,
        gate TEXT NOT NULL, twentieth INTEGER NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (day, kind, model_version, label, gate, twentieth)
    ) WITHOUT ROWID""",
    f"""CREATE TABLE IF NOT EXISTS confusion_day (
        day INTEGER NOT NULL, kind TEXT NOT NULL, model_version TEXT NOT NULL, label TEXT NOT NULL,
        final_label TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY {_CONFUSION_KEY}
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS turnaround_day (
        day INTEGER NOT NULL, kind TEXT NOT NULL, model_version TEXT NOT NULL, hours INTEGER NOT NULL,
        n INTEGER NOT NULL, PRIMARY KEY (day, kind, model_version, hours)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS rollup_by_slot ON rollup (quarter % 96, quarter, n, tumour, reviewed, agreed, "
    "probability_sum, probability_squares)",
    "CREATE TRIGGER IF NOT EXISTS days_on_insert AFTER INSERT ON scans BEGIN "
    + ROLLUP[1]
    .split(" BEGIN ", 1)[1]
    .replace("INSERT INTO rollup (quarter,", "INSERT INTO rollup_day (day,")
    .replace("NEW.created_ms / 900000", _DAY)
    .replace("ON CONFLICT (quarter,", "ON CONFLICT (day,")
    .removesuffix(" END")
    + f" INSERT INTO confidence_day VALUES ({_DAY}, NEW.kind, NEW.model_version, NEW.label, NEW.gate, "
    "CAST(NEW.confidence * 20 AS INTEGER), 1) ON CONFLICT DO UPDATE SET n = n + 1; "
    f"INSERT INTO confusion_day SELECT {_DAY}, NEW.kind, NEW.model_version, NEW.label, COALESCE(NEW.final_label, ''), "
    f"1 WHERE {_SHOWN_REVIEWED.format('NEW')} ON CONFLICT DO UPDATE SET n = n + 1; "
    f"INSERT INTO turnaround_day SELECT {_DAY}, NEW.kind, NEW.model_version, {_TURNAROUND_HOURS.format('NEW')}, 1 "
    f"WHERE {_SHOWN_REVIEWED.format('NEW')} AND NEW.first_reviewed_ms IS NOT NULL ON CONFLICT DO UPDATE SET n = n + 1; "
    "END",
    "CREATE TRIGGER IF NOT EXISTS days_on_review AFTER UPDATE OF review_count, final_label, first_reviewed_ms ON scans "
    "BEGIN "
    + ROLLUP[2]
    .split(" BEGIN ", 1)[1]
    .replace("UPDATE rollup SET", "UPDATE rollup_day SET")
    .replace("quarter = NEW.created_ms / 900000", f"day = {_DAY}")
    .removesuffix(" END")
    + f" UPDATE confusion_day SET n = n - 1 WHERE {_SHOWN_REVIEWED.format('OLD')} AND day = OLD.created_ms / 86400000 "
    "AND kind = OLD.kind AND model_version = OLD.model_version AND label = OLD.label "
    "AND final_label = COALESCE(OLD.final_label, ''); "
    f"INSERT INTO confusion_day SELECT {_DAY}, NEW.kind, NEW.model_version, NEW.label, COALESCE(NEW.final_label, ''), "
    f"1 WHERE {_SHOWN_REVIEWED.format('NEW')} ON CONFLICT DO UPDATE SET n = n + 1; "
    f"UPDATE turnaround_day SET n = n - 1 WHERE {_SHOWN_REVIEWED.format('OLD')} AND OLD.first_reviewed_ms IS NOT NULL "
    "AND day = OLD.created_ms / 86400000 AND kind = OLD.kind AND model_version = OLD.model_version "
    f"AND hours = {_TURNAROUND_HOURS.format('OLD')}; "
    f"INSERT INTO turnaround_day SELECT {_DAY}, NEW.kind, NEW.model_version, {_TURNAROUND_HOURS.format('NEW')}, 1 "
    f"WHERE {_SHOWN_REVIEWED.format('NEW')} AND NEW.first_reviewed_ms IS NOT NULL ON CONFLICT DO UPDATE SET n = n + 1; "
    "END",
)


# Days shifted by whole hours: day d of shift h holds the UTC instants [d * 24 h - h, (d + 1) * 24 h - h), every two
# hours from -10 h to +14 h (shift 0 is ``rollup_day``), so that a calendar day of any zone (-11 h to +14 h,
# daylight saving included) is a shifted day corrected by the quarters of an hour or less at each end. Only the
# sums a per-day figure needs; the review trigger updates one row per shift.
SHIFT_HOURS = (-10, -8, -6, -4, -2, 2, 4, 6, 8, 10, 12, 14)
_SHIFTS = ", ".join(f"({hours})" for hours in SHIFT_HOURS)
SHIFTED = (
    """CREATE TABLE IF NOT EXISTS rollup_shifted (
        shift INTEGER NOT NULL, day INTEGER NOT NULL, kind TEXT NOT NULL, model_name TEXT NOT NULL,
        model_version TEXT NOT NULL, label TEXT NOT NULL, gate TEXT NOT NULL, n INTEGER NOT NULL,
        tumour INTEGER NOT NULL, probability_sum REAL NOT NULL, probability_squares REAL NOT NULL,
        reviewed INTEGER NOT NULL, agreed INTEGER NOT NULL,
        PRIMARY KEY (shift, day, kind, model_version, model_name, label, gate)
    ) WITHOUT ROWID""",
    "CREATE TRIGGER IF NOT EXISTS shifted_on_insert AFTER INSERT ON scans BEGIN "
    "INSERT INTO rollup_shifted SELECT column1, (NEW.created_ms + column1 * 3600000) / 86400000, NEW.kind, "
    "NEW.model_name, NEW.model_version, NEW.label, NEW.gate, 1, NEW.is_tumour, NEW.tumour_probability, "
    "NEW.tumour_probability * NEW.tumour_probability, NEW.review_count > 0, "
    f"NEW.review_count > 0 AND NEW.final_label = NEW.label FROM (VALUES {_SHIFTS}) WHERE true "
    "ON CONFLICT DO UPDATE SET n = n + 1, tumour = tumour + excluded.tumour, "
    "probability_sum = probability_sum + excluded.probability_sum, "
    "probability_squares = probability_squares + excluded.probability_squares, "
    "reviewed = reviewed + excluded.reviewed, agreed = agreed + excluded.agreed; END",
    "CREATE TRIGGER IF NOT EXISTS shifted_on_review AFTER UPDATE OF review_count, final_label ON scans BEGIN "
    + " ".join(
        ROLLUP[2]
        .split(" BEGIN ", 1)[1]
        .replace("UPDATE rollup SET", "UPDATE rollup_shifted SET")
        .replace(
            "quarter = NEW.created_ms / 900000",
            f"shift = {hours} AND day = (NEW.created_ms + {hours * 3_600_000}) / 86400000",
        )
        .removesuffix(" END")
        for hours in SHIFT_HOURS
    )
    + " END",
)


def create_schema(connection: sqlite3.Connection) -> None:
    # statement by statement: executescript would commit the migration's transaction half-way
    for statement in (SCANS, *INDEXES, *PEOPLE, *AUDIT_SEARCH, SECTIONS, *ROLLUP, *DAYS, *SHIFTED):
        connection.execute(statement)


def fill_rollup(connection: sqlite3.Connection) -> None:
    """Build the roll-ups of the results already there (an upgraded file: its rows predate the triggers)."""
    measures = (
        "kind, model_name, model_version, label, gate, count(*), sum(is_tumour), sum(confidence), "
        "sum(tumour_probability), sum(tumour_probability * tumour_probability), sum(review_count > 0), "
        "sum(review_count > 0 AND final_label = label), min(created_ms), max(created_ms) FROM scans GROUP BY {0}, "
        "kind, model_version, model_name, label, gate"
    )
    shown_reviewed = _SHOWN_REVIEWED.format("scans")
    for table, statement in (
        ("rollup", f"SELECT created_ms / 900000, {measures.format('created_ms / 900000')}"),
        ("rollup_day", f"SELECT created_ms / 86400000, {measures.format('created_ms / 86400000')}"),
        (
            "confidence_day",
            "SELECT created_ms / 86400000, kind, model_version, label, gate, "
            "CAST(confidence * 20 AS INTEGER), count(*) FROM scans GROUP BY 1, 2, 3, 4, 5, 6",
        ),
        (
            "confusion_day",
            "SELECT created_ms / 86400000, kind, model_version, label, COALESCE(final_label, ''), "
            f"count(*) FROM scans WHERE {shown_reviewed} GROUP BY 1, 2, 3, 4, 5",
        ),
        (
            "turnaround_day",
            f"SELECT created_ms / 86400000, kind, model_version, {_TURNAROUND_HOURS.format('scans')}, "
            f"count(*) FROM scans WHERE {shown_reviewed} AND first_reviewed_ms IS NOT NULL GROUP BY 1, 2, 3, 4",
        ),
        (
            "rollup_shifted",
            "SELECT column1, (created_ms + column1 * 3600000) / 86400000 AS day, kind, model_name, "
            "model_version, label, gate, count(*), sum(is_tumour), sum(tumour_probability), "
            "sum(tumour_probability * tumour_probability), sum(review_count > 0), "
            f"sum(review_count > 0 AND final_label = label) FROM scans, (VALUES {_SHIFTS}) "
            "GROUP BY column1, day, kind, model_version, model_name, label, gate",
        ),
    ):
        connection.execute(f"DELETE FROM {table}")
        connection.execute(f"INSERT INTO {table} {statement}")
