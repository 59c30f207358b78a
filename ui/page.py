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


def validation_line(validation: dict) -> str | None:
    """What the card measured on the patients it would be used on, as the README states it: the glioma patients'
    clear tumour sections found and tumour-free sections cleared (the pooled figures it showed, 89 % sensitivity,
    counted the public collection's flattered 99 % with them and named no source), and why they are optimistic."""
    targets = (((validation.get("per_source") or {}).get("LGG") or {}).get("targets") or {}).get("all") or {}
    found, cleared = (targets.get(k) or {} for k in ("sensitivity", "specificity"))
    if found.get("value") is None or cleared.get("value") is None:
        return None
    found_pc, cleared_pc = round(found["value"] * 100), round(cleared["value"] * 100)
    return (
        f"On glioma patients held out of training, at the hospitals it trained on: {found_pc} % of their clear "
        f"tumour sections found, {cleared_pc} % of their tumour-free sections cleared. Optimistic: its calibration, "
        "review band, gate and series rule were fitted on those patients, and at a hospital it never saw it does "
        "worse (the README's Limits)."
    )


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
            if line := validation_line((card.metrics or {}).get("validation") or {}):
                st.caption(line)
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
