"""A consistent backup of the embedded store while the app runs: the database through SQLite's online backup (a
copy of the file alone holds nothing written since the last checkpoint: those pages are in its ``-wal`` file), with
the key files that read it (the audit key, the patient-reference key) and the de-identified images. MongoDB is
backed up with the server's own tools (``mongodump``)."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from core.errors import StoreError
from core.storage import DATABASE_FILE

KEY_FILES = ("audit.key", "patient-ref.key")


def backup_embedded(data_dir: Path, out: Path) -> dict[str, Any]:
    """Copy the embedded store of ``data_dir`` into the new folder ``out`` (created 0700; refused when it exists);
    returns what it holds. Restore it by stopping the app and using the folder as the data folder (never beside an
    old ``-wal`` file: SQLite would lay the old file's pages over the restored one)."""
    database = data_dir / DATABASE_FILE
    if not database.exists():
        raise StoreError("There is no embedded results database in the data folder to back up.")
    try:
        out.mkdir(mode=0o700, parents=False)
    except FileExistsError as error:
        raise StoreError("The backup folder exists already; name a new one.") from error
    except OSError as error:
        raise StoreError(f"The backup folder cannot be created ({error.strerror or error}).") from error
    target = out / DATABASE_FILE
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        with (
            sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as source,
            sqlite3.connect(target) as copy,
        ):
            source.backup(copy)  # a consistent snapshot, the write-ahead log included, while others write
        with sqlite3.connect(f"file:{target}?mode=ro", uri=True) as check:
            results = check.execute("SELECT count(*) FROM scans").fetchone()[0]
            whole = check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    except sqlite3.Error as error:
        raise StoreError(f"The database could not be backed up ({error}).") from error
    if not whole:
        raise StoreError("The backup did not pass SQLite's integrity check; keep the data folder as it is.")
    keys = []
    for name in KEY_FILES:
        if (data_dir / name).exists():
            shutil.copy2(data_dir / name, out / name)
            keys.append(name)
    images = 0
    if (data_dir / "images").is_dir():
        shutil.copytree(data_dir / "images", out / "images")
        images = sum(1 for _ in (out / "images").rglob("*.png"))
    return {"backup": str(out), "results": results, "keys": keys, "images": images}
