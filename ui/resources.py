"""Process-wide resources, built once and shared by every session (nothing per patient is cached here).

The model card is read without TensorFlow, so pages that only show it (Statistics) never load the model.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import streamlit as st

from core.config import (
    data_dir,
    missing_secrets,
    model_card_path,
    mongodb_uri,
    patient_key,
    secrets_mistake,
    warn_if_readable,
)
from core.errors import StoreError
from core.model.card import ModelCard
from core.model.classifier import Classifier
from core.model.explain import Explainer
from core.services.resources import (
    checked_patient_key,
    load_classifier,
    load_explainer,
    open_image_store,
    open_results_store,
)
from core.services.sessions import SessionRegistry
from core.storage.images import ImageStore
from core.storage.protocol import Store

logger = logging.getLogger("btd.ui")


def secrets() -> Mapping[str, Any]:
    """The Streamlit secrets as a plain mapping; empty when no secrets file exists or it cannot be read (then
    :func:`secrets_problem` says why, and no database is opened)."""
    try:
        return st.secrets.to_dict()
    except Exception:  # no secrets.toml: Streamlit raises rather than returning an empty mapping
        return {}


def secrets_problem() -> str | None:
    """Why the secrets file named cannot be used (not there, a TOML typo, its permissions), or None. Read as
    empty, it opened the embedded database and made new keys beside it, while the command line refused it."""
    from streamlit import config

    for name in config.get_option("secrets.files"):  # one named but not there (BTD_SECRETS mistyped): not "none"
        if problem := missing_secrets(Path(name)):
            return problem
    try:
        return secrets_mistake(st.secrets.to_dict())
    except Exception:
        import tomllib

        for name in config.get_option("secrets.files"):  # each file, or each .toml of a folder (a mounted secret)
            path = Path(name).expanduser()
            for file in [path] if path.is_file() else sorted(path.glob("*.toml")) if path.is_dir() else []:
                try:
                    tomllib.loads(file.read_text())
                except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
                    return f"the secrets file {file} cannot be read ({type(error).__name__}): fix it"
        return None


@st.cache_resource(show_spinner=False)
def session_registry() -> SessionRegistry:
    """Signed-in browsers' session tokens (hashes only), shared by every session of this server."""
    return SessionRegistry()


@st.cache_resource(show_spinner=False)
def _card(card_path: str) -> ModelCard:
    return ModelCard.from_file(card_path)


def current_card() -> ModelCard:
    """The served model's card (no TensorFlow import)."""
    return _card(str(model_card_path()))


def _settle_heap() -> None:
    """Exempt what the model load left in memory from later garbage collections. TensorFlow and the model make
    ~370,000 long-lived objects; a full collection walks them all (~150 ms on 2 cores), and Streamlit runs one
    after every script run (two with Keras loaded: ``runner.postScriptGC`` and its Keras reset). Frozen after a
    last collection, they are skipped; what sessions create later is still collected."""
    gc.collect()
    gc.freeze()


def _no_keras_reset() -> None:
    """Streamlit's after-run clean-up without its Keras reset (see :func:`keep_keras_state`); its other step closes
    matplotlib figures, and the app draws none (Plotly)."""


def keep_keras_state() -> bool:
    """Stop Streamlit from resetting Keras after every script run. Its ``keras.backend.clear_session()`` is meant
    for scripts that build a model on every run; this app loads one model per process and builds none, so the reset
    only empties TensorFlow's kernel cache (the next verdict re-instantiates the model's functions: ~0.2 s of CPU
    per upload on 2 cores) and runs a full garbage collection. Streamlit has no setting for it, so its private
    hook is replaced; False (and a log line) when the pinned Streamlit no longer has it (a test fails then)."""
    from streamlit.runtime.scriptrunner import script_runner

    if not callable(getattr(script_runner, "_clean_problem_modules", None)):
        logger.warning("event=keras_reset_hook_missing")
        return False
    script_runner._clean_problem_modules = _no_keras_reset  # Streamlit looks the name up after each run
    return True


@st.cache_resource(show_spinner="Loading the model…")
def _classifier(card_path: str) -> Classifier:
    """The model named by ``card_path``, hash-checked and loaded once for every session."""
    classifier = load_classifier(card_path)
    keep_keras_state()
    _settle_heap()
    return classifier


def current_classifier() -> Classifier:
    return _classifier(str(model_card_path()))


@st.cache_resource(show_spinner=False)
def _explainer(card_path: str) -> Explainer:
    """Grad-CAM for the served model (model-level state only, shared by every session)."""
    explainer = load_explainer(_classifier(card_path))
    _settle_heap()
    return explainer


def current_explainer() -> Explainer:
    return _explainer(str(model_card_path()))


@st.cache_resource(show_spinner=False)
def _store(uri: str | None, directory: str) -> Store:
    """The results database client (MongoDB when a URI is configured, else the embedded SQLite file); a secrets file
    other accounts may read is logged once here, as the commands log it."""
    from streamlit import config

    del uri, directory  # the cache key only: the store is the one the settings name now
    for name in config.get_option("secrets.files"):
        warn_if_readable(Path(name).expanduser())
    try:  # a start under a rotated or mistyped key wrote every sign-in under it, and the trail read as tampered
        return open_results_store(secrets(), another_key=ANOTHER_KEY)  # with, for good: refused, as by the commands
    except ValueError as error:  # a configured key too short or malformed: every page says so, none crashes
        raise StoreError(f"The audit key is not usable ({error}); fix the configuration.") from error


ANOTHER_KEY = (
    "The last event of this database's audit trail is not signed with the app's audit key (BTD_AUDIT_KEY, [audit] "
    "key in the secrets file, else the data folder's audit.key): nothing was read or written. Start the app with "
    "the key that signs the trail; if the trail was edited, `python -m core audit verify` says where."
)


_last_health: dict[str, str] = {}  # the last state logged per store ("opening": why none could be opened)


def current_store() -> Store:
    """The database every page reads and writes. A configuration that opens none is said on the pages and, once
    per reason, in the server's log (it showed on the sign-in page alone: the service's log read as healthy)."""
    try:
        if problem := secrets_problem():  # no database guessed at: the configured one may be another
            raise StoreError(f"No database is opened: {problem}.")
        store = _store(mongodb_uri(secrets()), str(data_dir()))
    except StoreError as error:
        if _last_health.get("opening") != str(error):  # the message is safe to show: no credentials
            logger.error("event=store_unopened code=%s reason=%s", error.code, error)
            _last_health["opening"] = str(error)
        raise
    _last_health.pop("opening", None)
    return store


@st.cache_resource(show_spinner=False, ttl=60)  # checked again each minute: a key accepted since by an administrator
def _patient_key(shared: bool, configured: str | None, _store: Store, where: str) -> bytes | None:  # (store
    # accept-key) refuses this server's other one within a minute, not at its next restart
    del configured, where  # part of the cache key only: a changed secret or database gives a new check
    return checked_patient_key(_store, patient_key(secrets(), shared))


def current_patient_key() -> bytes | None:
    """The patient-reference key; a ValueError (the pages then turn references off and say why) also when the
    database its check reads cannot be read (the store's own error: the pages beside it name it too)."""
    if problem := secrets_problem():  # no key made beside a database that may not be the configured one
        raise ValueError(problem)
    identity = secrets().get("identity") or {}
    uri = mongodb_uri(secrets())
    try:
        return _patient_key(bool(uri), identity.get("hmac_key"), current_store(), f"{uri}|{data_dir()}")
    except StoreError as error:
        raise ValueError(str(error)) from error


@st.cache_data(ttl=10, show_spinner=False)
def storage_health(description: str, _store: Any) -> str | None:
    """None when a save would succeed, else the reason (checked at most every 10 s). A change of state is logged
    once (``event=store_state``), not on every page view."""
    problem, state = None, "healthy"
    try:
        _store.ping()
    except Exception as error:  # StoreError subclasses carry a message safe to show
        problem, state = str(error), getattr(error, "code", "store_error")
    if _last_health.get(description, "unknown") != state:
        logger.warning("event=store_state state=%s", state)
        _last_health[description] = state
    return problem


def patient_reference(text: str) -> str | None:
    """The keyed hash of what the user typed (None when nothing was typed or references are disabled)."""
    from core.identity import pseudonymise

    try:
        key = current_patient_key()
    except ValueError:  # a configured key that cannot be used: references are disabled (the Scan page says why)
        return None
    return pseudonymise(text, key)


def image_store(store: Store | None) -> ImageStore | None:
    """Where the de-identified pixels of saved results are kept (None without a database)."""
    return open_image_store(store) if store is not None else None
