"""The de-identified image store: decoded pixels kept for review, content-addressed, for a retention period.

What is kept is the decoded grayscale slice re-encoded as PNG by OpenCV (no text chunks, no EXIF, no DICOM
header: nothing of the uploaded file but its pixels), under the SHA-256 of that PNG. Two implementations:
- :class:`FolderImages` (embedded mode): ``<data dir>/images/ab/cd/<key>.png``, files created 0600;
- :class:`GridFSImages` (MongoDB): a GridFS bucket ``images``, the key as the file name.
Both record when an image was stored, so :meth:`purge` can delete what is older than the retention period.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.errors import StoreError, StoreUnavailable
from core.imaging.raster import encode_png

_KEY = re.compile(r"^[0-9a-f]{64}$")


class ImageStore(Protocol):
    def put(self, pixels: np.ndarray) -> str: ...
    def get(self, key: str) -> bytes | None: ...
    def delete(self, key: str, stored_before: datetime | None = None) -> bool: ...
    def expired(self, before: datetime) -> list[str]: ...
    def stored_keys(self) -> list[str]: ...
    def sweep(self, started_before: datetime) -> int: ...
    def purging(self) -> AbstractContextManager[None]: ...


ANOTHER_PURGE = "Another purge of the stored images is running: try again once it has finished."
PURGE_LEASE_S = 3600  # GridFS: a purge's claim, ended by the purge or, if it died, by this many seconds


def encode(pixels: np.ndarray) -> bytes:
    """The pixels as a PNG with nothing but pixels in it."""
    try:
        return encode_png(pixels)
    except ValueError as error:  # pragma: no cover - a uint8 2-D array always encodes
        raise StoreError("The image could not be encoded for the image store.") from error


def _check(key: str) -> None:
    if not _KEY.match(key):
        raise StoreError("Not an image key.")


class FolderImages:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @contextmanager
    def purging(self) -> Iterator[None]:
        """One purge at a time (the page's and a scheduled command's): two at once each recorded every expired
        image as deleted by it, and the trail claimed twice the deletions there were. A lock file beside the
        images, held while the purge runs; another purge meanwhile is refused (:data:`ANOTHER_PURGE`)."""
        import fcntl

        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            handle = open(self.root / ".purge.lock", "a")  # noqa: SIM115 -- closed below, its lock with it
        except OSError as error:  # a read-only image folder: nothing could be deleted, and nothing is claimed
            raise StoreUnavailable("The image store cannot be changed.") from error
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as error:
                raise StoreUnavailable(ANOTHER_PURGE) from error
            except OSError:  # a file system without locks (ENOLCK): purged unlocked, as before
                pass
            yield

    def _path(self, key: str) -> Path:
        _check(key)
        return self.root / key[:2] / key[2:4] / f"{key}.png"

    def put(self, pixels: np.ndarray) -> str:
        data = encode(pixels)
        key = hashlib.sha256(data).hexdigest()
        path = self._path(key)
        if path.exists():  # the same pixels saved again (another model's result): kept a whole period from now
            try:
                os.utime(path)
                return key
            except FileNotFoundError:
                pass  # purged meanwhile: written again below
            except OSError as error:
                raise StoreUnavailable(f"The image store cannot be written to ({error.strerror or error}).") from error
        draft = path.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            for folder in (self.root, path.parent.parent, path.parent):  # each its owner's alone: listed, the
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # names and times said how many, and when
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())  # a full disk shows here, not later
            os.replace(draft, path)
        except OSError as error:
            with suppress(OSError):  # never a half-written .part left behind (its folder may not be one: ENOTDIR)
                draft.unlink(missing_ok=True)
            raise StoreUnavailable(f"The image store cannot be written to ({error.strerror or error}).") from error
        return key

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:  # the folder is no folder (ENOTDIR), unreadable, ...: what every caller handles
            raise StoreUnavailable(f"The image store cannot be read ({error.strerror or error}).") from error

    def delete(self, key: str, stored_before: datetime | None = None) -> bool:
        """Delete an image (only if it was last stored before ``stored_before``, when given: one saved again
        since a purge listed it stays)."""
        path = self._path(key)
        # moved aside first, then its age read there: the same pixels saved again between a check and the unlink
        # were deleted (a result saved a moment before opened as "no longer kept"); now a save either refreshed it
        # before the move (it is moved back) or finds no file and writes it anew
        aside = path.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}.purge")
        try:
            os.rename(path, aside)
            if stored_before is not None and aside.stat().st_mtime >= stored_before.timestamp():
                os.replace(aside, path)
                return False
            aside.unlink()
        except FileNotFoundError:  # another purge took it first
            return False
        except OSError as error:
            raise StoreUnavailable(f"The image store cannot be changed ({error.strerror or error}).") from error
        return True

    def stored_keys(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("??/??/*.png")) if self.root.is_dir() else []

    def expired(self, before: datetime) -> list[str]:
        """The keys of images last stored before ``before`` (one another purge deleted meanwhile is not one)."""
        limit = before.timestamp()
        found = []
        for key in self.stored_keys():
            try:
                if self._path(key).stat().st_mtime < limit:
                    found.append(key)
            except FileNotFoundError:
                continue
        return found

    def sweep(self, started_before: datetime) -> int:
        """Delete the drafts (``.part``) of writes, and the images a purge had moved aside (``.purge``), older than
        ``started_before``: a process killed between writing one and renaming it into place (or between moving one
        aside and deleting it) left its pixels where no purge looked."""
        if not self.root.is_dir():
            return 0
        swept = 0
        for draft in [*self.root.glob("??/??/.*.part"), *self.root.glob("??/??/.*.purge")]:
            try:  # an image moved aside keeps its (old) time of storing: its move is its change time
                status = draft.stat()
                if (status.st_ctime if draft.suffix == ".purge" else status.st_mtime) < started_before.timestamp():
                    draft.unlink()
                    swept += 1
            except FileNotFoundError:
                continue
        return swept


@contextmanager
def _mongo_errors() -> Iterator[None]:
    """pymongo's failures as the store errors every caller handles (the database gone mid-session reached the
    pages and the CLI as a traceback, and the PACS watch dropped the study instead of retrying it)."""
    from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError, WTimeoutError

    try:
        yield
    except (ConnectionFailure, ExecutionTimeout, WTimeoutError) as error:  # ServerSelectionTimeoutError too
        raise StoreUnavailable("MongoDB cannot be reached right now (image store).") from error
    except PyMongoError as error:
        raise StoreError(f"MongoDB refused the image store's operation ({type(error).__name__}).") from error


class GridFSImages:
    def __init__(self, database: Any) -> None:
        import gridfs

        self._bucket = gridfs.GridFSBucket(database, bucket_name="images")
        self._files, self._chunks = database["images.files"], database["images.chunks"]
        self._meta = database["meta"]

    @contextmanager
    def purging(self) -> Iterator[None]:
        """One purge at a time, as :meth:`FolderImages.purging`: a claim in ``meta`` that ends with the purge, or
        after :data:`PURGE_LEASE_S` when the process holding it died."""
        from pymongo.errors import DuplicateKeyError

        now, token = datetime.now(UTC), os.urandom(8).hex()
        with _mongo_errors():
            try:
                self._meta.find_one_and_update(
                    {"_id": "images_purge", "until": {"$lt": now}},
                    {"$set": {"until": now + timedelta(seconds=PURGE_LEASE_S), "token": token}},
                    upsert=True,
                )
            except DuplicateKeyError as error:  # held, and not expired
                raise StoreUnavailable(ANOTHER_PURGE) from error
        try:
            yield
        finally:
            with suppress(StoreError), _mongo_errors():
                self._meta.delete_one({"_id": "images_purge", "token": token})

    def put(self, pixels: np.ndarray) -> str:
        data = encode(pixels)
        key = hashlib.sha256(data).hexdigest()
        now = datetime.now(UTC)  # the same pixels saved again: kept a whole period from now
        with _mongo_errors():
            if self._files.update_many({"filename": key}, {"$set": {"uploadDate": now}}).matched_count == 0:
                self._bucket.upload_from_stream(key, data, metadata={"stored_at": now})
        return key

    def get(self, key: str) -> bytes | None:
        import gridfs

        _check(key)
        with _mongo_errors():
            try:
                return self._bucket.open_download_stream_by_name(key).read()
            except gridfs.errors.NoFile:
                return None

    def delete(self, key: str, stored_before: datetime | None = None) -> bool:
        _check(key)
        query: dict[str, Any] = {"filename": key}
        if stored_before is not None:
            query["uploadDate"] = {"$lt": stored_before}
        deleted = False
        with _mongo_errors():
            for document in list(self._files.find(query, {"_id": 1})):
                # the file's entry removed only while it is still as old (a save that refreshed it meanwhile keeps
                # it), then its chunks: deleted by id alone, a refreshed image went
                if self._files.delete_one({"_id": document["_id"], **query}).deleted_count:
                    self._chunks.delete_many({"files_id": document["_id"]})
                    deleted = True
        return deleted

    def stored_keys(self) -> list[str]:
        with _mongo_errors():
            return sorted(self._files.distinct("filename"))

    def expired(self, before: datetime) -> list[str]:
        """The keys of images last stored before ``before``."""
        with _mongo_errors():
            found = self._files.find({"uploadDate": {"$lt": before}}, {"filename": 1})
            return sorted({d["filename"] for d in found})

    def sweep(self, started_before: datetime) -> int:
        """Delete the chunks of images whose file document is gone (GridFS deletes the document first, then its
        chunks: a timeout or a crash between the two left de-identified pixels no purge found again), for uploads
        started before ``started_before`` (an upload in progress writes its chunks before its document); returns
        how many images' chunks it removed."""
        from bson import ObjectId

        chunks = self._files.database["images.chunks"]
        with _mongo_errors():
            listed = set(self._files.distinct("_id"))
            orphans = [
                files_id
                for files_id in chunks.distinct("files_id")
                if files_id not in listed
                and isinstance(files_id, ObjectId)
                and files_id.generation_time < started_before
            ]
            if orphans:
                chunks.delete_many({"files_id": {"$in": orphans}})
        return len(orphans)
