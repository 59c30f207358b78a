"""Signing in and out, idle expiry, and the role check every page runs before it shows anything.

The acting user lives in this session's state only (server-side). Local accounts sign in with a form
(:func:`core.services.accounts.sign_in`: Argon2, throttling, audit); when ``[auth]`` is configured in
``.streamlit/secrets.toml`` a button signs in through Streamlit's ``st.login`` (OIDC) and the identity provider's
claims are mapped to a role (:func:`core.services.accounts.external_actor`, the claim named by ``[auth]
role_claim`` or the local account of that e-mail). The services check the role again for everything they do.
"""

from __future__ import annotations

import time
from contextlib import suppress

import streamlit as st

from core.config import first_admin_command
from core.errors import SignInFailed, StoreError
from core.services import accounts, audit
from core.services.access import Actor, allowed
from ui import resources

ACTOR_KEY, SEEN_KEY = "actor", "actor_seen"


def current_actor() -> Actor | None:
    """The signed-in user, or None (also after ``IDLE_MINUTES`` without activity: the session then signs out)."""
    actor = st.session_state.get(ACTOR_KEY)
    if actor is None:
        return None
    now = time.time()
    seen = st.session_state.get(SEEN_KEY, now)
    if now - seen > accounts.IDLE_MINUTES * 60:
        sign_out("expired")
        st.session_state["signed_out_reason"] = "Your session expired after 30 minutes without activity."
        return None
    st.session_state[SEEN_KEY] = now
    try:
        current = accounts.refreshed_actor(resources.current_store(), actor)
    except StoreError:
        return actor  # the database is down: the pages say so; the session itself stays
    if current is None:
        sign_out("account disabled")
        st.session_state["signed_out_reason"] = "Your account has been disabled by an administrator."
        return None
    if current != actor:
        st.session_state[ACTOR_KEY] = current
    return current


def fragment_actor() -> Actor:
    """For the top of every fragment (auto-refresh, viewers): the same checks as a page run (idle expiry, account
    disabled, role changed); when the session has ended, the whole app reruns and shows the sign-in form."""
    actor = current_actor()
    if actor is None:
        st.rerun(scope="app")
    return actor  # type: ignore[return-value]


def sign_out(reason: str = "signed out") -> None:
    actor = st.session_state.get(ACTOR_KEY)
    if actor is not None:
        with suppress(StoreError):  # signing out works while the database is down; the session ends either way
            audit.record(resources.current_store(), actor, "sign_out", actor.name, reason=reason)
    for key in list(st.session_state.keys()):
        del st.session_state[key]  # nothing of this user's session stays: uploads, results, filters


def _sso_configured() -> bool:
    return bool(resources.secrets().get("auth"))


def sign_in_screen() -> None:
    """The only thing a visitor sees: a sign-in form (and a single-sign-on button when configured)."""
    st.title("Brain MRI triage")
    st.caption("A decision aid for trained readers. Sign in to continue.")
    if message := st.session_state.pop("signed_out_reason", None):
        st.info(message)
    try:
        store = resources.current_store()
    except StoreError as error:
        st.error(f"Sign-in is unavailable: the results database cannot be opened ({error}).")
        return
    if _sso_configured():
        _single_sign_on(store)
    form = st.empty()  # emptied on success, so the form does not linger greyed while the model loads
    with form.form("sign-in", enter_to_submit=True):
        name = st.text_input("Account")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        try:
            actor = accounts.sign_in(store, name.strip(), password)
        except SignInFailed as error:
            st.error(str(error))
        except StoreError as error:
            st.error(f"Sign-in is unavailable right now: {error}")
        else:
            st.session_state[ACTOR_KEY], st.session_state[SEEN_KEY] = actor, time.time()
            form.empty()
            st.info(f"Signed in as {actor.name}. Loading…")
            st.rerun()
    try:
        empty = not store.accounts()
    except StoreError:
        empty = False
    if empty:
        st.info("No accounts exist yet. Create the first administrator on the server, with this server's settings:")
        st.code(first_admin_command(resources.secrets()), language="bash", wrap_lines=True)


def _single_sign_on(store) -> None:
    config = resources.secrets().get("auth") or {}
    user = st.user
    if getattr(user, "is_logged_in", False):
        try:
            actor = accounts.external_actor(store, user.to_dict(), config.get("role_claim"))
        except SignInFailed as error:
            st.error(str(error))
            st.button("Sign out of the identity provider", on_click=st.logout)
            return
        st.session_state[ACTOR_KEY], st.session_state[SEEN_KEY] = actor, time.time()
        st.rerun()
    st.button("Sign in with your organisation's account", on_click=st.login, type="primary")
    st.divider()


def require(permission: str | None) -> Actor:
    """The signed-in actor when its role grants ``permission`` (None: any signed-in user); otherwise the page
    shows the sign-in screen or the refusal and stops."""
    actor = current_actor()
    if actor is None:
        sign_in_screen()
        st.stop()
    if permission is not None and not allowed(actor, permission):
        st.error(f"The {actor.role} role may not {permission}.")
        st.stop()
    return actor
