"""Signing in and out, idle expiry, and the role check every page runs before it shows anything.

The acting user lives in this session's state (server-side); a page reload signs the browser in again through its
session cookie (:mod:`core.services.sessions`), to which the script session is bound. Local accounts sign in with a form
(:func:`core.services.accounts.sign_in`: Argon2, throttling, audit); when ``[auth]`` is configured in
``.streamlit/secrets.toml`` a button signs in through Streamlit's ``st.login`` (OIDC) and the identity provider's
claims are mapped to a role (:func:`core.services.single_sign_on.external_actor`, the claim named by ``[auth]
role_claim`` or the ``--sso`` local account of that e-mail; refused while ``cookie_secret`` is a placeholder). Signing
out ends the provider's identity cookie too. The services check the role again for everything they do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress

import streamlit as st

from core.config import first_admin_command, sso_refusal
from core.domain.people import MAX_PASSWORD, MIN_PASSWORD
from core.errors import AccessDenied, InvalidRecord, SignInFailed, StoreError
from core.services import accounts, audit, single_sign_on
from core.services.access import OPEN_RESULT, Actor, allowed
from core.services.sessions import COOKIE
from ui import resources

ACTOR_KEY, SEEN_KEY = "actor", "actor_seen"
TOKEN_KEY, BOUND_KEY, COOKIE_KEY = "session_token", "session_bound", "cookie_to_write"


def _write_cookie(token: str | None) -> None:
    """Set (or, with None, delete) the session cookie in the browser: SameSite=Strict, Secure over HTTPS, no
    longer than a working day. JavaScript sets it, so it cannot be HttpOnly (Streamlit sets no cookies of its own
    choosing); the token alone is useless once signed out or idle, and the deployment's CSP limits scripts."""
    value, age = (token, accounts.SESSION_HOURS * 3600) if token else ("", 0)
    st.html(
        f"<script>document.cookie = '{COOKIE}={value}; Path=/; SameSite=Strict; Max-Age={age}'"
        " + (location.protocol === 'https:' ? '; Secure' : '');</script>",
        unsafe_allow_javascript=True,
    )


def write_pending_cookie() -> None:
    """Write the cookie a sign-in or sign-out asked for (once; called by every page's set-up)."""
    if COOKIE_KEY in st.session_state:
        _write_cookie(st.session_state.pop(COOKIE_KEY))


def _browser_token() -> str | None:
    """The session cookie this connection's browser presented (None without one; AppTest has no browser)."""
    value = st.context.cookies.get(COOKIE)
    return value if isinstance(value, str) and value else None


def _resumed_actor() -> Actor | None:
    """The user of a live session cookie presented by this page load, as the account stands now."""
    token = _browser_token()
    try:
        registry, store = resources.session_registry(), resources.current_store()
        known = registry.resume(token)
        if known is None:
            return None
        actor = accounts.refreshed_actor(store, known)
    except StoreError:
        return None
    if actor is None:
        registry.forget(token)
        return None
    st.session_state[ACTOR_KEY], st.session_state[SEEN_KEY] = actor, time.monotonic()
    st.session_state[TOKEN_KEY], st.session_state[BOUND_KEY] = token, True
    with suppress(StoreError):
        audit.record(store, actor, "session_resumed", actor.name)
    return actor


def current_actor(activity: bool = True) -> Actor | None:
    """The signed-in user, or None (also after ``IDLE_MINUTES`` without activity: the session then signs out).
    ``activity=False`` (a timed refresh): the checks without counting as the user's activity."""
    actor = st.session_state.get(ACTOR_KEY)
    if actor is None:
        actor = _resumed_actor()
        if actor is None:
            return None
    if accounts.outlived(actor):  # busy all day: a sign-in still ends after a working day
        sign_out("session lifetime")
        st.session_state["signed_out_reason"] = (
            f"Your session ended after {accounts.SESSION_HOURS} hours; sign in again."
        )
        return None
    token, cookie = st.session_state.get(TOKEN_KEY), _browser_token()
    if token and cookie == token:
        st.session_state[BOUND_KEY] = True
    elif st.session_state.get(BOUND_KEY):  # this connection lacks the browser's secret: not the signed-in browser
        sign_out("session cookie missing")
        return None
    now = time.monotonic()
    seen = st.session_state.get(SEEN_KEY, now)
    registry = resources.session_registry()
    # idle here, but the browser's session is in use in another of its tabs (they share the token, kept alive by
    # that tab's activity): this tab goes on with it; ending it forgot the token and signed the busy tab out
    if now - seen > accounts.IDLE_MINUTES * 60 and not (token and registry.alive(token)):
        sign_out("expired")
        st.session_state["signed_out_reason"] = "Your session expired after 30 minutes without activity."
        return None
    if token and not (registry.touch(token) if activity else registry.alive(token)):
        # signed out in another tab of this browser (they share the token), or the token idled out there
        sign_out("signed out elsewhere")
        st.session_state["signed_out_reason"] = "This session was signed out in another tab or window."
        return None
    if activity:  # the touch above: a reload later finds the cookie's session as active as this one
        st.session_state[SEEN_KEY] = now
    try:
        current = accounts.refreshed_actor(resources.current_store(), actor)
    except StoreError:
        return actor  # the database is down: the pages say so; the session itself stays
    if current is None:
        sign_out("account disabled or password set")
        st.session_state["signed_out_reason"] = (
            "An administrator disabled your account or set its password: sign in again (if you may)."
        )
        return None
    if current != actor:
        st.session_state[ACTOR_KEY] = current
    return current


def _start_session(actor: Actor) -> None:
    """A new session token for a user who has just signed in (rotated at every sign-in); the next run writes it."""
    registry = resources.session_registry()
    registry.forget(st.session_state.get(TOKEN_KEY))
    token = registry.issue(actor)
    st.session_state[TOKEN_KEY], st.session_state[BOUND_KEY], st.session_state[COOKIE_KEY] = token, False, token


PASSWORD_CHANGED = "password_changed"


def password_form(actor: Actor) -> None:
    """The sidebar's "Change my password" for an account signed in with a password: the current one, the new one
    twice; a change starts this session anew (its other sessions end)."""
    if not actor.credential:
        return
    if st.session_state.pop(PASSWORD_CHANGED, False):
        st.success("Password changed. Your other sessions have ended.")
    with st.popover("Change my password"):
        _password_fields(actor)


def temporary_password_screen(actor: Actor) -> None:
    """All a user signed in with a temporary password sees (the services refuse the rest): choose a new one."""
    st.title("Choose a new password")
    st.info(
        "An administrator set your password: it is a temporary one. Choose your own before going on; the "
        "administrator will not know it."
    )
    _password_fields(actor)
    st.button("Sign out", on_click=sign_out, key="sign-out-temporary")


def _password_fields(actor: Actor) -> None:
    """The current password and the new one twice, in a form that changes it (:func:`password_form`)."""
    with st.form("own-password", clear_on_submit=True):
        current = st.text_input("Current password", type="password")  # one set before the limit too
        new = st.text_input(
            "New password", type="password", max_chars=MAX_PASSWORD, help=f"At least {MIN_PASSWORD} characters."
        )
        again = st.text_input("New password again", type="password", max_chars=MAX_PASSWORD)
        if not st.form_submit_button("Change password"):
            return
        if new != again:
            st.error("The two new passwords differ: nothing changed.")
            return
        try:
            renewed = accounts.change_own_password(resources.current_store(), actor, current, new)
        except (InvalidRecord, SignInFailed, StoreError) as error:
            st.error(str(error))
            return
        st.session_state[ACTOR_KEY], st.session_state[SEEN_KEY] = renewed, time.monotonic()
        _start_session(renewed)  # a new token, written to the browser's cookie by the run that follows at once (a
        st.session_state[PASSWORD_CHANGED] = True  # reload before it sent the forgotten one: signed out), whose
        st.rerun()  # page holds the renewed actor (this run's refused its downloads)


def fragment_actor(activity: bool = True) -> Actor:
    """For the top of every fragment (auto-refresh, viewers): the same checks as a page run (idle expiry, account
    disabled, role changed); when the session has ended, the whole app reruns and shows the sign-in form. A timed
    refresh passes ``activity=False``: it never keeps an unattended session alive. A role changed since the page
    ran reruns the whole app too, whose page then checks it: a radiologist demoted to supervisor kept paging
    through the images a viewer fragment held."""
    before = st.session_state.get(ACTOR_KEY)
    actor = current_actor(activity)
    if actor is None or (before is not None and actor.role != before.role):
        st.rerun(scope="app")
    return actor  # type: ignore[return-value]


def callback_actor(permission: str) -> Actor | None:
    """For a button's or a field's callback, which Streamlit runs before the page script and so before its
    sign-in check: the actor as a page run would find it now (idle expiry, a disabled account, a changed role),
    or None when the session has ended or the role no longer allows ``permission`` (the callback then does
    nothing, and the page run that follows shows the sign-in form or the refusal)."""
    actor = current_actor()
    return actor if actor is not None and not actor.must_change and allowed(actor, permission) else None


def still_signed_in() -> Callable[[], bool]:
    """For work Streamlit runs later, outside any page run (a download's data, made when its button is pressed):
    whether this session is still signed in then. Signed out in another tab, or idle too long, an export made
    from the page as it was drawn is refused."""
    token, registry = st.session_state.get(TOKEN_KEY), resources.session_registry()
    return lambda: token is None or registry.alive(token)  # no token: a test's session, without a browser


def audited_download(store, actor: Actor, permission: str, make: Callable[[Actor], bytes]) -> Callable[[], bytes]:
    """A download's data made when its button is pressed (Streamlit runs it outside any page run): refused once
    this session has ended, the account is disabled or its role no longer allows ``permission``; ``make`` records
    the audit event first and then returns the file, so a download the trail cannot record is not made."""
    alive = still_signed_in()

    def made() -> bytes:
        if not alive():
            raise AccessDenied("This session has ended: sign in again to download.")
        current = accounts.refreshed_actor(store, actor)
        if current is None or not allowed(current, permission):
            raise AccessDenied("This account may no longer download this.")
        return make(current)

    return made


def report_download(actor: Actor, pdf: bytes, name: str) -> None:
    """The button of a PDF report already made (its making was the audit event): its bytes handed over only while
    this session lives and the account may still open results (given as bytes, Streamlit served them from a
    media address that answers without the session, after sign-out or expiry too)."""
    try:
        data: bytes | Callable[[], bytes] = audited_download(
            resources.current_store(), actor, OPEN_RESULT, lambda _: pdf
        )
        why = None
    except StoreError as error:
        data, why = b"", f"Not now: the account cannot be checked ({error})."
    st.download_button("Download the report (PDF)", data, name, "application/pdf", disabled=why is not None, help=why)


def sign_out(reason: str = "signed out") -> None:
    """End this session (every way it ends: the button, idle expiry, a disabled account). A session signed in
    through the identity provider also ends Streamlit's identity cookie (``st.logout``): it lasts 30 days, and the
    next run signed the same user straight back in, so sign-out and expiry did nothing on a shared workstation."""
    actor = st.session_state.get(ACTOR_KEY)
    # the identity cookie, whichever way this session was signed in (a reloaded or new tab resumes through our own
    # cookie and would not know it came from the provider)
    via_provider = _sso_configured() and bool(getattr(st.user, "is_logged_in", False))
    if actor is not None:
        with suppress(StoreError):  # signing out works while the database is down; the session ends either way
            audit.record(resources.current_store(), actor, "sign_out", actor.name, reason=reason)
    resources.session_registry().forget(st.session_state.get(TOKEN_KEY))
    for key in list(st.session_state.keys()):
        del st.session_state[key]  # nothing of this user's session stays: uploads, results, filters
    st.session_state[COOKIE_KEY] = None  # and the browser forgets its cookie
    if via_provider:
        st.logout()


def _sso_configured() -> bool:
    return bool(resources.secrets().get("auth"))


def _sso_refusal() -> str | None:
    return sso_refusal(resources.secrets())


def sign_in_screen() -> None:
    """The only thing a visitor sees: a sign-in form (and a single-sign-on button when configured)."""
    write_pending_cookie()  # a sign-out's, when the entry script shows this form: the browser forgets its cookie
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
        if refusal := _sso_refusal():
            st.error(refusal)
        else:
            _single_sign_on(store)
    form = st.empty()  # emptied on success, so the form does not linger greyed while the model loads
    with form.form("sign-in", enter_to_submit=True):
        name = st.text_input("Account")
        password = st.text_input("Password", type="password")  # one set before the limit still signs in
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        try:
            actor = accounts.sign_in(store, name.strip(), password)
        except SignInFailed as error:
            st.error(str(error))
        except StoreError as error:
            st.error(f"Sign-in is unavailable right now: {error}")
        else:
            st.session_state[ACTOR_KEY], st.session_state[SEEN_KEY] = actor, time.monotonic()
            _start_session(actor)
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
            actor = single_sign_on.external_actor(store, user.to_dict(), config.get("role_claim"))
        except SignInFailed as error:
            st.error(str(error))
            st.button("Sign out of the identity provider", on_click=st.logout)
            return
        st.session_state[ACTOR_KEY], st.session_state[SEEN_KEY] = actor, time.monotonic()
        _start_session(actor)
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
    if actor.must_change:  # a temporary password: nothing else until it is replaced (the services refuse anyway)
        write_pending_cookie()
        temporary_password_screen(actor)
        st.stop()
    if permission is not None and not allowed(actor, permission):
        st.error(f"The {actor.role} role may not {permission}.")
        st.stop()
    return actor
