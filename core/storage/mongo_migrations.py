"""MongoDB's schema versions (:mod:`core.storage.migrations` lists what each changed): the steps that upgrade an
older database in place, its version kept in the ``meta`` collection (``_id: "schema"``)."""

from __future__ import annotations

import contextlib
import logging
from contextlib import suppress
from typing import Any

from core.domain.results import record_id
from core.errors import StoreError
from core.storage.migrations import NIFTI_ORIENTATION_OF_OLD_PIXELS, OLD_NIFTI_ORIENTATION, upgraded_head_mac
from core.storage.mongo_people import AUDIT_INDEXES
from core.storage.protocol import SCHEMA_VERSION

logger = logging.getLogger("btd.storage")


def migrate_mongo(
    database: Any, collection: Any, validator: dict[str, Any] | None = None, key: bytes | None = None
) -> int:
    """Bring a MongoDB collection to :data:`SCHEMA_VERSION`; returns the version found. ``key``: the audit key,
    which signs an audit head the upgrade makes.

    Version 1 documents are re-keyed by inserting the merged copy under its new ``_id`` before deleting the old
    ones, so an interrupted upgrade loses nothing and the next start finishes it (inserts are idempotent).
    """
    meta = database["meta"]
    state = meta.find_one({"_id": "schema"})
    found = int(state["version"]) if state else (1 if collection.find_one({}, {"_id": 1}) else SCHEMA_VERSION)
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"The results database has schema version {found}, newer than this release understands "
            f"({SCHEMA_VERSION}); upgrade the application."
        )
    if found == 1:
        merged = _mongo_v1_to_v2(collection)
        logger.warning("event=store_migrated store=mongodb from=1 to=2 merged_duplicates=%d", merged)
    if found < 3:
        moved = _mongo_v2_to_v3(database, collection)
        logger.warning("event=store_migrated store=mongodb to=3 reviews_moved=%d", moved)
    if found < 4:
        collection.update_many({"kind": {"$exists": False}}, {"$set": {"kind": "scan"}})
        try:  # a user without collMod keeps the old validator, which refuses NIfTI series: said in the log
            if validator is not None:
                database.command("collMod", collection.name, validator=validator)
        except Exception as error:
            validator_not_installed(error)
        logger.warning("event=store_migrated store=mongodb to=4")
    if found < 7:
        fixed = collection.update_many(
            {"kind": "series", "image_format": "nifti", "geometry.orientation": OLD_NIFTI_ORIENTATION},
            {"$set": {"geometry.orientation": NIFTI_ORIENTATION_OF_OLD_PIXELS}},
        ).modified_count
        # an event's sequence number is its _id (it read a "seq" field no version wrote: KeyError on every call)
        last = database["audit"].find_one({}, {"hash": 1}, sort=[("_id", -1)])
        if last is not None:  # the chain's head starts at its last event, as SQLite's upgrade starts (and signs) it
            seq, digest = int(last["_id"]), str(last["hash"])
            mac = upgraded_head_mac(seq, digest, key) if key is not None else ""
            database["meta"].update_one(
                {"_id": "audit_head"},
                {"$setOnInsert": {"seq": seq, "hash": digest, "keyed_since": 0, "mac": mac}},
                upsert=True,
            )
        logger.warning("event=store_migrated store=mongodb to=7 nifti_orientations_fixed=%d", fixed)
    if found < 8:
        logger.warning("event=store_migrated store=mongodb to=8 audit_indexes=built")
    if found < 10:
        filled = _mongo_required_defaults(collection)
        logger.warning("event=store_migrated store=mongodb to=10 required_fields_filled=%d", filled)
    for keys in AUDIT_INDEXES:  # on every start, as the results' indexes are: a new database runs no version step
        database["audit"].create_index(keys)
    database["reviews"].create_index([("result_id", 1), ("created_at", 1)])  # a result's history, every open
    if found != SCHEMA_VERSION or state is None:
        meta.update_one({"_id": "schema"}, {"$set": {"version": SCHEMA_VERSION}}, upsert=True)
    return found


MONGO_REQUIRED_DEFAULTS = {"geometry": {}, "review_count": 0, "timings_ms": {}}  # neutral: nothing claimed


def _mongo_required_defaults(collection: Any) -> int:
    """Give results written before a required field existed its neutral value: MongoDB checks a whole document
    against the validator on every update, so one missing field refused every review of an old result (version 4
    installed the validator requiring ``geometry`` without adding it). Returns how many fields were filled."""
    missing = {"$or": [{name: {"$exists": False}} for name in MONGO_REQUIRED_DEFAULTS]}
    filled = 0
    for document in collection.find(missing, {name: 1 for name in MONGO_REQUIRED_DEFAULTS}):
        values = {name: value for name, value in MONGO_REQUIRED_DEFAULTS.items() if name not in document}
        collection.update_one({"_id": document["_id"]}, {"$set": values})  # every missing field in one update:
        filled += len(values)  # the validator checks the whole document after each
    return filled


def _mongo_v1_to_v2(collection: Any) -> int:
    from pymongo.errors import DuplicateKeyError

    groups: dict[str, list[dict[str, Any]]] = {}
    for document in collection.find({"frame": {"$exists": False}}):
        key = record_id(document["image_sha256"], document["model_name"], document["model_version"])
        groups.setdefault(key, []).append(document)
    merged = 0
    for key, copies in groups.items():
        copies.sort(key=lambda d: (d["created_at"], d["_id"]))
        keep = dict(copies[0])
        references = [d["patient_ref"] for d in copies if d.get("patient_ref")]
        reviewed = sorted((d for d in copies if d.get("reviewed_at")), key=lambda d: d["reviewed_at"])
        keep.update(_id=key, frame=None, patient_ref=references[-1] if references else None)
        keep["confidence"] = keep["tumour_probability"] if keep["is_tumour"] else 1.0 - keep["tumour_probability"]
        if reviewed:
            for field in ("reviewer", "review_verdict", "final_label", "review_note", "reviewed_at"):
                keep[field] = reviewed[-1].get(field)
        with suppress(DuplicateKeyError):  # an interrupted upgrade already wrote it
            collection.insert_one(keep)
        collection.delete_many({"_id": {"$in": [d["_id"] for d in copies if d["_id"] != key]}})
        merged += len(copies) - 1
    return merged


def _mongo_v2_to_v3(database: Any, collection: Any) -> int:
    """Move each result's one version-2 review into the reviews collection (as the SQLite upgrade does), as its
    review number 1: two app processes upgrading at once (or one resumed after a crash) move it once."""
    from pymongo.errors import DuplicateKeyError

    moved = 0
    for document in collection.find({"reviewed_at": {"$ne": None}, "review_count": {"$exists": False}}):
        action = "agree" if document.get("review_verdict") == "agree" else "override"
        final = document.get("final_label") or document["label"]
        review = {
            "_id": f"{document['_id']}:1",
            "n": 1,
            "result_id": document["_id"],
            "reviewer": document.get("reviewer") or "unknown",
            "created_at": document["reviewed_at"],
            "action": action,
            "model_label": document["label"],
            "final_label": final,
            "reasons": [],
            "note": document.get("review_note") or "",
        }
        with contextlib.suppress(DuplicateKeyError):  # moved by another process (or before a crash): kept once
            database["reviews"].insert_one(review)
        collection.update_one(  # only while not moved: never over a review saved since by another process
            {"_id": document["_id"], "review_count": {"$exists": False}},
            {
                "$set": {
                    "review_verdict": action,
                    "final_label": final,
                    "review_count": 1,
                    "first_reviewed_at": document["reviewed_at"],
                },
                "$unset": {"review_note": ""},
            },
        )
        moved += 1
    collection.update_many({"review_count": {"$exists": False}}, {"$set": {"review_count": 0}})
    return moved


def validator_not_installed(error: Exception) -> None:
    """The log line for a schema validator the server refused (the user may not create or change one): the store
    works on, unvalidated, and the operator is told. A collection another replica created first is no refusal."""
    if type(error).__name__ != "CollectionInvalid":
        logger.warning("event=store_validator_not_installed error=%s", type(error).__name__)
