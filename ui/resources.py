"""Process-wide resources, built once and shared by every session (nothing per patient is cached here)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import streamlit as st

from core.classifier import Classifier
from core.config import data_dir, model_card_path, mongodb_uri, patient_key
from core.explain import Explainer
from core.store import MongoStore, SQLiteStore, open_store


def secrets() -> Mapping[str, Any]:
    """The Streamlit secrets as a plain mapping; empty when no secrets file exists."""
    try:
        return st.secrets.to_dict()
    except Exception:  # no secrets.toml: Streamlit raises rather than returning an empty mapping
        return {}


@st.cache_resource(show_spinner="Loading the model…")
def classifier(card_path: str) -> Classifier:
    """The model named by ``card_path``, hash-checked and loaded once for every session."""
    return Classifier.from_card(Path(card_path))


def current_classifier() -> Classifier:
    return classifier(str(model_card_path()))


@st.cache_resource(show_spinner=False)
def store(uri: str | None, directory: str) -> SQLiteStore | MongoStore:
    """The results database client (MongoDB when a URI is configured, else the embedded SQLite file)."""
    return open_store(uri, Path(directory))


def current_store() -> SQLiteStore | MongoStore:
    return store(mongodb_uri(secrets()), str(data_dir()))


@st.cache_resource(show_spinner=False)
def _patient_key(shared: bool, configured: str | None) -> bytes | None:
    del configured  # part of the cache key only: a changed secret gives a new key
    return patient_key(secrets(), shared)


def current_patient_key() -> bytes | None:
    identity = secrets().get("identity") or {}
    return _patient_key(bool(mongodb_uri(secrets())), identity.get("hmac_key"))


@st.cache_data(ttl=10, show_spinner=False)
def storage_health(description: str, _store: Any) -> str | None:
    """None when the database answers, else the reason (checked at most every 10 s)."""
    del description  # cache key
    try:
        _store.ping()
    except Exception as error:  # StoreError subclasses carry a message safe to show
        return str(error)
    return None


@st.cache_resource(show_spinner=False)
def explainer(card_path: str) -> Explainer:
    """Grad-CAM for the served model (model-level state only, shared by every session)."""
    return Explainer(classifier(card_path))


def current_explainer() -> Explainer:
    return explainer(str(model_card_path()))
