"""Building the process-wide resources from configuration: the model and the results store.

The UI caches what these return (``st.cache_resource``); the CLI calls them once per command. Nothing here runs
at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.config import (
    audit_key,
    data_dir,
    file_secrets,
    lesion_card_path,
    model_card_path,
    mongodb_uri,
    patient_key,
)
from core.errors import ConfigError, ModelError, StoreError
from core.identity import fingerprint
from core.model.classifier import Classifier, with_segmenter
from core.model.explain import Explainer
from core.services import audit
from core.services.access import SETTINGS, Actor, require
from core.storage import DATABASE_FILE, open_store, stamps
from core.storage.images import FolderImages, GridFSImages, ImageStore
from core.storage.protocol import Store


def load_classifier(card_path: str | Path | None = None, lesions: bool = True) -> Classifier:
    """The model named by ``card_path`` (default: ``BTD_MODEL`` or the shipped card), hash-checked and loaded, with
    the lesion segmenter beside it (``BTD_LESION_MODEL`` or the shipped one) unless ``lesions`` is False."""
    if card_path is None and not model_card_path().is_file():  # said where the path came from (a card given with
        # --model or --member was told "BTD_MODEL names it", which it did not)
        raise ModelError(f"Model card not found: {model_card_path()} (BTD_MODEL names it, else the shipped card).")
    classifier = Classifier.from_card(Path(card_path) if card_path else model_card_path())
    if not lesions:
        return classifier
    lesion_card = lesion_card_path()
    if lesion_card is not None and os.environ.get("BTD_LESION_MODEL") and not lesion_card.is_file():
        # a mistyped path turned lesion outlines and volumes off without a word (the shipped card may be absent)
        raise ModelError(
            f"The lesion model card {lesion_card} (BTD_LESION_MODEL) is not a file; set BTD_LESION_MODEL=none to "
            "run without lesion outlines and volumes."
        )
    return with_segmenter(classifier, lesion_card)


def load_explainer(classifier: Classifier) -> Explainer:
    return Explainer(classifier)


def open_results_store(
    secrets: Mapping[str, Any] | None = None,
    existing: bool = False,
    same_key: bool = True,
    another_key: str = audit.ANOTHER_KEY,
) -> Store:
    """The configured database for a command: MongoDB when a URI is set (environment or secrets: by default the
    app's secrets file, :func:`core.config.file_secrets`), else the embedded SQLite file. ``existing``: refuse an
    embedded database that is not there yet rather than create it (a command that reads or changes what is stored,
    run with a mistyped data folder, made an empty database and its keys there and answered "intact").
    ``same_key``: refuse a database whose audit trail another key signs (:func:`audit.key_doubt`; off for
    ``audit verify``, which says what does not hold), in the words ``another_key`` (the app's and the commands'
    differ). Opened for the app and the commands alike (the app's own copy of these steps once drifted from it)."""
    secrets = file_secrets() if secrets is None else secrets
    uri = mongodb_uri(secrets)
    path = data_dir() / DATABASE_FILE
    if not uri:  # one known to have been there has vanished: said so, before its audit key (gone with it) is
        stamps.check(path)  # blamed ("fix the configuration") and by `users add` too (it said "bad configuration")
    if existing and not uri and not path.exists():
        raise StoreError(
            f"There is no results database in {data_dir()} (BTD_DATA_DIR): nothing was read or made. Check the "
            "folder; the app's first start (or `users add`) makes a new one."
        )
    if existing and not uri and path.stat().st_size == 0:  # a database cut to nothing (a full disk, a copy that
        stamps.check(path)  # failed): it was made anew over, and `predict --save` answered "saved"
        raise StoreError(
            f"The results database in {data_dir()} (BTD_DATA_DIR) is an empty file: nothing was read or made. "
            "Restore it from a backup, or remove the empty file for a new database."
        )
    store = open_store(uri, data_dir(), audit_key(secrets, shared_database=bool(uri)))
    if same_key and audit.key_doubt(store) is not None:  # the newest event edited under the server's key: not the
        raise StoreError(another_key)  # key's fault (every command refused, blaming the key); verify names it
    return store


def open_image_store(store: Store) -> ImageStore:
    """Where de-identified pixels are kept: GridFS beside a MongoDB store, else ``<data dir>/images``."""
    database = getattr(store, "_db", None)
    return GridFSImages(database) if database is not None else FolderImages(data_dir() / "images")


def open_for_saving() -> tuple[Store, ImageStore, bytes | None]:
    """The database the app uses, which must exist (a mistyped data folder is no new database), its image store
    and the patient-reference key: what the command line saves studies with. Raises :class:`StoreError`, or
    ValueError when a key cannot be made or is not the database's (:func:`checked_patient_key`)."""
    store = open_results_store(existing=True)
    images = open_image_store(store)
    return store, images, checked_patient_key(store, _configured_patient_key())


def _configured_patient_key() -> bytes | None:
    """The patient-reference key the command's settings give (the server's, as for every command)."""
    return patient_key(file_secrets(), shared_database=bool(mongodb_uri(file_secrets())))


WRONG_PATIENT_KEY = (
    "the patient-reference key is not the one this database's patient references were made with (another "
    "installation's, or another backup's key file; with MongoDB, another server's BTD_HMAC_KEY): with it each "
    "patient's new results would be filed apart from their History. Restore the key from the same backup as the "
    "database (patient references stay off until then); if this key is the right one (the one recorded was used "
    "by mistake, or lost before any reference was made), an administrator accepts it with `python -m core store "
    "accept-key`"
)


def accept_patient_key(store: Store, actor: Actor) -> tuple[str, bool]:
    """Record the configured patient-reference key (the command's settings: the server's, as for every command) as
    the one this database's references are made with, an administrator's decision, audited with the fingerprint it
    replaces; (its fingerprint, whether it changed anything). :class:`ConfigError` when none is configured."""
    require(actor, SETTINGS)
    key = _configured_patient_key()
    if key is None:
        raise ConfigError("no patient-reference key is configured: there is none to accept")
    ours, recorded = fingerprint(key), store.key_check("patient_reference", fingerprint(key))
    if recorded == ours:  # recorded already (or now, the database having none): nothing to replace
        return ours, False
    audit.record(store, actor, "patient_key_accepted", None, fingerprint=ours, replaced=recorded)  # before the change
    return store.key_check("patient_reference", ours, replace=True), True


def checked_patient_key(store: Store, key: bytes | None) -> bytes | None:
    """``key``, once the database agrees it is the one its patient references were made with (the first key used
    with it is recorded, as a fingerprint); a :class:`ConfigError` otherwise (:data:`WRONG_PATIENT_KEY`)."""
    if key is not None and store.key_check("patient_reference", fingerprint(key)) != fingerprint(key):
        raise ConfigError(WRONG_PATIENT_KEY)
    return key
