"""The set-up every page calls first (idempotent: a page may run with or without the entry script): page config,
sign-in and the role check, and the sidebar."""

from __future__ import annotations

import streamlit as st

from core.errors import ModelError, StoreError
from core.logs import configure_logging
from core.services.access import STORAGE_DETAILS, Actor, allowed
from ui import auth, resources
from ui.wording import plain

IDLE_CHECK_SECONDS = 60


@st.fragment(run_every=IDLE_CHECK_SECONDS)
def idle_watch() -> None:
    """The session's checks once a minute without the user (never counted as activity): an unattended screen ends
    with its session, the sign-in form in place of the images (they stayed on the Worklist or History until the
    next click, whatever the idle limit)."""
    auth.fragment_actor(activity=False)


def setup_page(title: str, permission: str | None) -> Actor:
    """Page config, then the signed-in actor allowed ``permission`` (else the sign-in form or a refusal, and the
    page stops), then the sidebar: who is signed in, the model, and the storage's health (its location for
    admins only)."""
    configure_logging()
    st.set_page_config(page_title=f"{title} · Brain MRI triage", page_icon="🧠", layout="wide")
    actor = auth.require(permission)
    auth.write_pending_cookie()  # a sign-in's: the browser keeps the session across reloads
    with st.sidebar:
        idle_watch()
        st.markdown(f"Signed in as **{plain(actor.name)}** · {actor.role}")  # a name is text, never Markdown
        st.button("Sign out", on_click=auth.sign_out, key="sign-out")
        auth.password_form(actor)
        st.markdown("### Model")
        try:
            card = resources.current_card()
        except ModelError as error:
            st.error(str(error))
        else:
            st.markdown(f"**{card.name}** · version {card.version}")
            validation = (card.metrics or {}).get("validation") or {}
            if validation.get("accuracy") is not None:
                st.caption(  # what the figures are: its calibration was fitted on these scans, many of the public
                    # collection's have a mirrored copy or the next section in training, and they come from the
                    # hospitals it trained on (at one it never saw it does worse: the README's limits)
                    f"Validation ({validation.get('n', '?')} scans held out of training, many with a mirrored copy "
                    f"or a neighbouring section in it; its calibration and review band were fitted on them): "
                    f"accuracy {validation['accuracy']:.1%}, tumour sensitivity "
                    f"{validation['tumour_sensitivity']:.1%}, specificity {validation['tumour_specificity']:.1%}. "
                    "Optimistic; lower at a hospital it never saw."
                )
        st.markdown("### Storage")
        try:
            store = resources.current_store()
        except StoreError as error:
            st.error(str(error))
            return actor
        where = store.describe() if allowed(actor, STORAGE_DETAILS) else "Results database"
        problem = resources.storage_health(store.describe(), store)
        if problem:
            st.error(f"{where}: {problem}")
        else:
            st.success(f"{where}: ready", icon=":material/check_circle:")
        if allowed(actor, STORAGE_DETAILS):  # the one who fixes it: it was said on the Scan page alone, which
            try:  # administrators cannot open (their sidebar said "ready")
                resources.current_patient_key()
            except ValueError as error:
                st.warning(f"Patient references are off: {error}.", icon=":material/key_off:")
        st.caption("A decision aid for trained readers; every verdict needs a radiologist's review.")
    return actor
