"""The set-up every page calls first (idempotent: a page may run with or without the entry script)."""

from __future__ import annotations

import logging
import sys

import streamlit as st

from core.errors import ModelError, StoreError
from ui import resources


def configure_logging() -> None:
    """One structured line per event on stderr (``event=... code=...``), set up once per process."""
    logger = logging.getLogger("btd")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def setup_page(title: str) -> None:
    """Page config and the sidebar: which model answers and where results are kept, with their health."""
    configure_logging()
    st.set_page_config(page_title=f"{title} · Brain MRI triage", page_icon="🧠", layout="wide")
    with st.sidebar:
        st.markdown("### Model")
        try:
            card = resources.current_card()
        except ModelError as error:
            st.error(str(error))
        else:
            st.markdown(f"**{card.name}** · version {card.version}")
            validation = (card.metrics or {}).get("validation") or {}
            if validation.get("accuracy") is not None:
                st.caption(
                    f"Validation ({validation.get('n', '?')} held-out scans): accuracy "
                    f"{validation['accuracy']:.1%}, tumour sensitivity {validation['tumour_sensitivity']:.1%}, "
                    f"specificity {validation['tumour_specificity']:.1%}."
                )
        st.markdown("### Storage")
        try:
            store = resources.current_store()
        except StoreError as error:
            st.error(str(error))
            return
        problem = resources.storage_health(store.describe(), store)
        if problem:
            st.error(f"{store.describe()}: {problem}")
        else:
            st.success(store.describe(), icon=":material/check_circle:")
        st.caption("A decision aid for trained readers; every verdict needs a radiologist's review.")
