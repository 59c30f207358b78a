"""A database that vanishes must not silently become a new, empty one.

When the embedded database file is first created its path is recorded in a small register kept *outside* the data
folder (``BTD_STATE_DIR``, else ``~/.local/state/brain-mri-triage/stores.json``). Opening a path that the register
says held a database, when the file is gone (a deleted or unmounted data folder, a wrong ``BTD_DATA_DIR``), is
refused with that reason instead of starting over with no accounts and no results; ``python -m core store forget``
starts a new database there on purpose.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

from core.errors import StoreError


class StoreVanished(StoreError):
    code = "store_vanished"


def register_file() -> Path:
    base = os.environ.get("BTD_STATE_DIR") or Path.home() / ".local" / "state" / "brain-mri-triage"
    return Path(base) / "stores.json"


def _read() -> dict[str, str]:
    path = register_file()
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as error:  # said, never silent: the protection is off until fixed
        logging.getLogger("btd.storage").warning(
            "event=store_register_unreadable error=%s fix=restore_or_remove_the_file", type(error).__name__
        )
        return {}


def _write(entries: dict[str, str]) -> None:
    path = register_file()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        draft.write_text(json.dumps(entries, indent=1, sort_keys=True))
        os.chmod(draft, 0o600)
        os.replace(draft, path)
    except OSError as error:  # a register that cannot be written protects nothing, but must not stop the app:
        # said in the server's log, so that an administrator knows a vanished database would not be caught
        logging.getLogger("btd.storage").warning(
            "event=store_register_not_written error=%s fix=set_BTD_STATE_DIR_to_a_writable_folder",
            error.strerror or type(error).__name__,
        )


def gone(database: Path) -> bool:
    """Missing, or emptied to 0 bytes with no write-ahead log beside it (SQLite opens an empty file as a new,
    empty database: a truncated file became one, and the sign-in page offered to create the first admin)."""
    if not database.exists():
        return True
    wal = database.with_name(database.name + "-wal")
    return database.stat().st_size == 0 and not (wal.exists() and wal.stat().st_size > 0)


def check(database: Path) -> None:
    """Raise :class:`StoreVanished` when ``database`` is missing (or emptied) but is known to have existed: by the
    register, or, for a file emptied to 0 bytes, by the images kept beside it (with the register unreadable, or
    another BTD_STATE_DIR's, an emptied file became a new database, and a purge deleted every image)."""
    if not gone(database):
        return
    created = _read().get(str(database.resolve()))
    if created is None and not (database.exists() and _images_beside(database)):
        return
    logging.getLogger("btd.storage").error("event=store_vanished path=%s", database)  # for the server's admin
    known = f"it was created {created}" if created else "emptied to 0 bytes, its images still kept"
    raise StoreVanished(  # shown to every role and on the sign-in page: no path
        f"The results database has disappeared ({known}); restore it from a backup, or start a new empty one on "
        "purpose with `python -m core store forget`."
    )


def _images_beside(database: Path) -> bool:
    """Whether the image store beside ``database`` (``images/``, :class:`core.storage.images.FolderImages`) keeps
    any image: a database was there."""
    folder = database.parent / "images"
    return folder.is_dir() and any(path.is_file() for path in folder.rglob("*.png"))


@contextmanager
def _changing() -> Iterator[None]:
    """The register read and written again by one process or thread at a time: two databases made at once under
    one state folder each wrote back the register as they had read it, and one was lost (deleted later, it came
    back as a new, empty database). Without a lock file that can be made, as without a writable register."""
    import fcntl

    path = register_file()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle = open(path.with_name(f".{path.name}.lock"), "a")  # noqa: SIM115 -- closed below, its lock with it
    except OSError:
        yield
        return
    with handle:
        with suppress(OSError):  # a file system without locks (ENOLCK: some NFS mounts): changed, unlocked
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def remember(database: Path) -> None:
    """Record that ``database`` exists (once)."""
    key = str(database.resolve())
    if key in _read():  # every start and command: the register read, not locked
        return
    with _changing():
        entries = _read()
        if key not in entries and database.exists():
            entries[key] = datetime.now(UTC).isoformat(timespec="seconds")
            _write(entries)


def forget(database: Path) -> bool:
    """Let a new database be created at ``database``; True when it was remembered."""
    with _changing():
        entries = _read()
        removed = entries.pop(str(database.resolve()), None) is not None
        if removed:
            _write(entries)
    return removed
