"""A consistent backup of the embedded store while the app runs: the database through SQLite's online backup (a
copy of the file alone holds nothing written since the last checkpoint: those pages are in its ``-wal`` file), with
the key files that read it (the audit key, the patient-reference key), the de-identified images and the PACS
watch's state. The backup can re-identify patients (the patient-reference key beside the pseudonyms): keep it as
the data folder is kept. MongoDB is backed up with the server's own tools (``mongodump``)."""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from core.errors import StoreError
from core.storage import DATABASE_FILE, WATCH_STATE, read_only_uri

KEY_FILES = ("audit.key", "patient-ref.key")


def backup_embedded(data_dir: Path, out: Path) -> dict[str, Any]:
    """Copy the embedded store of ``data_dir`` into the new folder ``out`` (0700; refused when it exists or lies
    inside the data folder); returns what it holds. Written into a draft folder beside ``out`` and renamed into
    place: a backup cut short (a full disk, a file it cannot read) leaves nothing that looks like a backup. Restore
    it by stopping the app and using the folder as the data folder (never beside an old ``-wal`` file: SQLite would
    lay the old file's pages over the restored one)."""
    database = check_target(data_dir, out)
    draft = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        draft.mkdir(mode=0o700)
        made = _copy(data_dir, database, draft)
        os.replace(draft, out)
    except (OSError, sqlite3.Error) as error:
        shutil.rmtree(draft, ignore_errors=True)
        raise StoreError(
            f"The backup could not be written whole ({getattr(error, 'strerror', None) or error})."
        ) from error
    except BaseException:  # a store error, or Ctrl-C: never a hidden copy of the database and its keys left
        shutil.rmtree(draft, ignore_errors=True)
        raise
    note = (  # only what it holds: a site whose references are keyed elsewhere has no key file here
        "holds the patient-reference key: keep it as the data folder"
        if "patient-ref.key" in made["keys"]
        else "keep it as the data folder is kept"
    )
    return {"backup": str(out), **made, "note": note}


def check_target(data_dir: Path, out: Path) -> Path:
    """The database to back up into the new folder ``out``; a StoreError when there is none, or ``out`` exists or
    lies inside the data folder (checked before anything is written, the backup's audit event included)."""
    database = data_dir / DATABASE_FILE
    if not database.exists():
        raise StoreError("There is no embedded results database in the data folder to back up.")
    if out.resolve().is_relative_to(data_dir.resolve()):
        raise StoreError("The backup folder lies inside the data folder; name one outside it.")
    if out.exists() or out.is_symlink():
        raise StoreError("The backup folder exists already; name a new one.")
    return database


def _copy(data_dir: Path, database: Path, draft: Path) -> dict[str, Any]:
    # the PACS watch's place in the change feed, copied before the database: every study it names as handled is
    # then in the copy (the watch saves a study's results before its state). Restored without it, the watch went
    # through the PACS's whole history again: every study pulled, purged images stored again, reports sent again
    watch = (data_dir / WATCH_STATE).exists()
    if watch:
        shutil.copy2(data_dir / WATCH_STATE, draft / WATCH_STATE)
    target = draft / DATABASE_FILE
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    source = closing(sqlite3.connect(read_only_uri(database), uri=True, timeout=5))
    with source as reading, closing(sqlite3.connect(target)) as copy:
        reading.backup(copy)  # a consistent snapshot, the write-ahead log included, while others write
    with closing(sqlite3.connect(read_only_uri(target), uri=True)) as check:
        results = check.execute("SELECT count(*) FROM scans").fetchone()[0]
        if check.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise StoreError("The backup did not pass SQLite's integrity check; keep the data folder as it is.")
    for leftover in (draft / f"{DATABASE_FILE}-wal", draft / f"{DATABASE_FILE}-shm"):
        leftover.unlink(missing_ok=True)
    keys = [name for name in KEY_FILES if (data_dir / name).exists()]
    for name in keys:
        shutil.copy2(data_dir / name, draft / name)
    images = 0
    if (data_dir / "images").is_dir():  # without drafts (".part") and images a purge moved aside (".purge")
        shutil.copytree(data_dir / "images", draft / "images", ignore=shutil.ignore_patterns(".*"), copy_function=_kept)
        images = sum(1 for _ in (draft / "images").rglob("*.png"))
    return {"results": results, "keys": keys, "images": images, "watch_state": watch}


def _kept(source: str, target: str) -> None:
    """Copy an image unless it went while the backup ran (a purge deleted it): one such image failed the backup."""
    try:
        shutil.copy2(source, target)
    except FileNotFoundError:
        if os.path.exists(source):  # the target's folder is missing, say: a real failure
            raise
