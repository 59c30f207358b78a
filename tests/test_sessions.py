"""Session tokens that let a page reload sign the browser in again: live, idle-expired, forgotten, never stored."""

from __future__ import annotations

import pytest

from core.services.access import Actor
from core.services.sessions import SessionRegistry

DOCTOR = Actor("dr-a", "radiologist", "c0ffee")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_live_token_resumes_its_user_and_counts_as_activity() -> None:
    clock = Clock()
    registry = SessionRegistry(idle_seconds=1800, clock=clock)
    token = registry.issue(DOCTOR)
    clock.now += 1700
    assert registry.resume(token) == DOCTOR and registry.resume(token).credential == "c0ffee"
    clock.now += 1700  # the resume was activity: still live
    assert registry.touch(token) and registry.resume(token) == DOCTOR


def test_an_idle_token_a_forgotten_one_and_an_unknown_one_resume_nobody() -> None:
    clock = Clock()
    registry = SessionRegistry(idle_seconds=1800, clock=clock)
    idle, forgotten = registry.issue(Actor("a", "supervisor")), registry.issue(Actor("b", "admin"))
    registry.forget(forgotten)
    clock.now += 1801
    assert registry.resume(idle) is None and not registry.touch(idle)
    assert registry.resume(forgotten) is None and registry.resume("made-up") is None and registry.resume(None) is None


def test_every_sign_in_gets_a_new_unguessable_token_and_only_its_hash_is_kept() -> None:
    registry = SessionRegistry()
    first, second = registry.issue(DOCTOR), registry.issue(DOCTOR)
    assert first != second and len(first) >= 40
    assert first not in repr(registry._entries) and second not in repr(registry._entries)


def test_a_timed_refresh_checks_the_session_but_never_keeps_it_alive(monkeypatch, tmp_path) -> None:
    """The Statistics page refreshes itself every 25 s: counted as activity, an unattended session never expired."""
    import time

    from core.services.access import Actor
    from core.storage.sqlite import SQLiteStore
    from ui import auth

    store = SQLiteStore(tmp_path / "results.sqlite3")
    boss = Actor("boss", "supervisor")
    state = {auth.ACTOR_KEY: boss, auth.SEEN_KEY: time.monotonic() - 20 * 60}
    monkeypatch.setattr(auth.st, "session_state", state)
    monkeypatch.setattr(auth, "_browser_token", lambda: None)
    monkeypatch.setattr(auth.resources, "current_store", lambda: store)
    monkeypatch.setattr(auth.resources, "session_registry", lambda: SessionRegistry())
    seen = state[auth.SEEN_KEY]
    assert auth.current_actor(activity=False) == boss and state[auth.SEEN_KEY] == seen  # checked, not refreshed
    state[auth.SEEN_KEY] = time.monotonic() - 31 * 60
    assert auth.current_actor(activity=False) is None and auth.ACTOR_KEY not in state  # expired while refreshing
    state.update({auth.ACTOR_KEY: boss, auth.SEEN_KEY: seen})
    assert auth.current_actor() == boss and state[auth.SEEN_KEY] > seen  # a user's own action is activity


def test_signing_out_of_a_single_sign_on_session_ends_the_identity_cookie_too(monkeypatch, tmp_path) -> None:
    """Streamlit's identity cookie lasts 30 days: sign-out and idle expiry cleared only our session, and the next
    run signed the same user straight back in from the cookie."""
    from core.services.access import Actor
    from core.storage.sqlite import SQLiteStore
    from ui import auth

    store = SQLiteStore(tmp_path / "results.sqlite3")
    state: dict = {}
    logouts: list[bool] = []

    class Identity:
        is_logged_in = True

        def to_dict(self) -> dict:
            return {"email": "dr.z@hospital.example", "email_verified": True, "groups": ["radiologist"]}

    class Rerun(Exception):
        pass

    monkeypatch.setattr(auth.st, "session_state", state)
    monkeypatch.setattr(auth.st, "user", Identity())
    monkeypatch.setattr(auth.st, "logout", lambda: logouts.append(True))
    monkeypatch.setattr(auth.st, "rerun", lambda **_: (_ for _ in ()).throw(Rerun()))
    monkeypatch.setattr(auth.resources, "current_store", lambda: store)
    monkeypatch.setattr(auth.resources, "session_registry", lambda: SessionRegistry())
    monkeypatch.setattr(auth.resources, "secrets", lambda: {"auth": {"role_claim": "groups"}})
    with pytest.raises(Rerun):  # signed in: the page runs again as this user
        auth._single_sign_on(store)
    assert state[auth.ACTOR_KEY].name == "dr.z@hospital.example"
    auth.sign_out()
    assert logouts == [True] and auth.ACTOR_KEY not in state
    state[auth.ACTOR_KEY] = Actor("dr.z@hospital.example", "radiologist")  # a reloaded tab, resumed by our cookie
    auth.sign_out()
    assert logouts == [True, True]  # its identity cookie ends too
    Identity.is_logged_in = False  # a local password session: no identity cookie to end
    auth.sign_out()
    assert logouts == [True, True]


def test_single_sign_on_is_off_while_its_cookie_secret_is_the_examples_placeholder_or_short(monkeypatch) -> None:
    from ui import auth

    for secret in ("REPLACE_WITH_A_LONG_RANDOM_STRING", "short", ""):
        monkeypatch.setattr(auth.resources, "secrets", lambda s=secret: {"auth": {"cookie_secret": s}})
        assert "cookie secret" in auth._sso_refusal()
    monkeypatch.setattr(auth.resources, "secrets", lambda: {"auth": {"cookie_secret": "q7" * 20}})
    monkeypatch.setattr("core.config.authlib_installed", lambda: False)  # st.login cannot work without it
    assert "Authlib" in auth._sso_refusal()
    monkeypatch.setattr("core.config.authlib_installed", lambda: True)
    assert auth._sso_refusal() is None


def test_signing_out_in_one_tab_signs_the_browsers_other_tabs_out_at_their_next_run(monkeypatch, tmp_path) -> None:
    """The tabs of one browser share its session token: after a sign-out in one (the token forgotten), another
    went on working under the same user for up to 30 minutes."""

    from core.services.access import Actor
    from core.storage.sqlite import SQLiteStore
    from ui import auth

    doctor = Actor("dr-a", "radiologist")
    registry, token, other_tab = browser_session(monkeypatch, SQLiteStore(tmp_path / "results.sqlite3"), doctor)
    assert auth.current_actor() == doctor and auth.current_actor(activity=False) == doctor
    registry.forget(token)  # the first tab signed out
    assert auth.current_actor(activity=False) is None and auth.ACTOR_KEY not in other_tab
    assert "another tab" in other_tab["signed_out_reason"]


def browser_session(monkeypatch, store, doctor):
    """A signed-in browser's page session for ``doctor`` (its token bound, its cookie presented): (registry, token,
    session state)."""
    import time

    from ui import auth

    registry = SessionRegistry()
    token = registry.issue(doctor)
    state = {auth.ACTOR_KEY: doctor, auth.SEEN_KEY: time.monotonic(), auth.TOKEN_KEY: token, auth.BOUND_KEY: True}
    monkeypatch.setattr(auth.st, "session_state", state)
    monkeypatch.setattr(auth, "_browser_token", lambda: token)
    monkeypatch.setattr(auth.resources, "current_store", lambda: store)
    monkeypatch.setattr(auth.resources, "session_registry", lambda: registry)
    return registry, token, state


def test_a_password_set_by_an_administrator_ends_the_sessions_it_opened_and_a_reload_does_not_resume_them(
    monkeypatch, tmp_path
) -> None:
    """Resetting a stolen or shared password left the intruder signed in (the page run and a reload alike); the
    user's own new sign-in goes on working, and a role change keeps the session."""

    from core.services import accounts
    from core.services.access import COMMAND_LINE
    from core.storage.sqlite import SQLiteStore
    from ui import auth

    store = SQLiteStore(tmp_path / "results.sqlite3")
    accounts.add_account(store, COMMAND_LINE, "dr-a", "radiologist", "first password 1")
    doctor = accounts.sign_in(store, "dr-a", "first password 1")
    assert doctor.credential == accounts.credential_of(store.get_account("dr-a"))
    assert accounts.refreshed_actor(store, doctor).credential == doctor.credential
    registry, token, state = browser_session(monkeypatch, store, doctor)
    accounts.set_role(store, COMMAND_LINE, "dr-a", "supervisor")
    kept = auth.current_actor()  # a role change keeps the session, and its credential
    assert kept == accounts.Actor("dr-a", "supervisor") and kept.credential == doctor.credential
    accounts.set_password(store, COMMAND_LINE, "dr-a", "second password 2")
    assert auth.current_actor() is None and "set its password" in state["signed_out_reason"]
    fresh = {}
    monkeypatch.setattr(auth.st, "session_state", fresh)
    token = registry.issue(doctor)  # a reload presenting an old session
    monkeypatch.setattr(auth, "_browser_token", lambda: token)
    assert auth.current_actor() is None and registry.resume(token) is None
    renewed = accounts.sign_in(store, "dr-a", "second password 2")
    assert renewed.credential != doctor.credential and accounts.refreshed_actor(store, renewed) is not None


def test_an_export_made_after_the_session_ended_elsewhere_is_refused(monkeypatch, tmp_path) -> None:
    """The audit export's data is made when its button is pressed, outside any page run: an admin signed out in
    another tab (or idle for an hour) still downloaded the whole trail from the page as it was drawn."""
    import time

    from core.services.access import Actor
    from ui import auth

    registry = SessionRegistry()
    admin = Actor("admin-a", "admin")
    token = registry.issue(admin)
    state = {auth.ACTOR_KEY: admin, auth.SEEN_KEY: time.monotonic(), auth.TOKEN_KEY: token, auth.BOUND_KEY: True}
    monkeypatch.setattr(auth.st, "session_state", state)
    monkeypatch.setattr(auth.resources, "session_registry", lambda: registry)
    alive = auth.still_signed_in()
    assert alive()
    registry.forget(token)  # signed out in another tab
    assert not alive()


def fragment_session(monkeypatch, tmp_path):
    """A radiologist's page session as a fragment sees it (no browser cookie), and the reruns it asks for:
    (store, doctor, session state, reruns)."""
    import time

    from core.services import accounts
    from core.services.access import COMMAND_LINE
    from core.storage.sqlite import SQLiteStore
    from ui import auth

    store = SQLiteStore(tmp_path / "results.sqlite3")
    accounts.add_account(store, COMMAND_LINE, "root", "admin", "a long enough password")
    accounts.add_account(store, COMMAND_LINE, "dr-a", "radiologist", "another long password")
    doctor = accounts.sign_in(store, "dr-a", "another long password")
    state = {auth.ACTOR_KEY: doctor, auth.SEEN_KEY: time.monotonic()}
    monkeypatch.setattr(auth.st, "session_state", state)
    monkeypatch.setattr(auth, "_browser_token", lambda: None)
    monkeypatch.setattr(auth.resources, "current_store", lambda: store)
    monkeypatch.setattr(auth.resources, "session_registry", lambda: SessionRegistry())
    reruns: list[str] = []
    monkeypatch.setattr(auth.st, "rerun", lambda scope="app": reruns.append(scope))
    return store, doctor, state, reruns


def test_a_fragment_reruns_the_whole_app_when_the_role_changed_since_the_page_ran(monkeypatch, tmp_path) -> None:
    """A radiologist demoted to supervisor kept paging through a viewer's images: only the fragment reran, and it
    checked expiry and a disabled account but not the role, which the page's own check would refuse."""
    from core.services import accounts
    from core.services.access import COMMAND_LINE
    from ui import auth

    store, doctor, _, reruns = fragment_session(monkeypatch, tmp_path)
    assert auth.fragment_actor() == doctor and reruns == []
    accounts.set_role(store, COMMAND_LINE, "dr-a", "supervisor")
    assert auth.fragment_actor().role == "supervisor" and reruns == ["app"]  # the page then refuses its images


def test_an_unattended_page_ends_with_its_session_without_a_click(monkeypatch, tmp_path) -> None:
    """Idle expiry took effect at the next interaction only: the Worklist's and History's images stayed on an
    unattended screen past the idle limit. Every page's sidebar checks the session once a minute (a timed run,
    never the user's activity) and reruns the app, which then shows the sign-in form."""
    import ast
    import inspect
    import time

    from core.services import accounts
    from ui import auth, page

    tree = ast.parse(inspect.getsource(page))
    watch = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "idle_watch")
    assert [ast.unparse(d) for d in watch.decorator_list] == ["st.fragment(run_every=IDLE_CHECK_SECONDS)"]
    assert "auth.fragment_actor(activity=False)" in ast.unparse(watch)
    setup = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "setup_page")
    assert "idle_watch()" in ast.unparse(setup) and page.IDLE_CHECK_SECONDS <= 60
    _, _, state, reruns = fragment_session(monkeypatch, tmp_path)
    seen = state[auth.SEEN_KEY]
    page.idle_watch.__wrapped__()  # the fragment's body, as a timed run calls it
    assert reruns == [] and state[auth.SEEN_KEY] == seen  # a timed check is no activity: the idle clock runs on
    state[auth.SEEN_KEY] = time.monotonic() - accounts.IDLE_MINUTES * 60 - 1
    page.idle_watch.__wrapped__()
    assert reruns == ["app"] and auth.ACTOR_KEY not in state  # signed out: the rerun shows the sign-in form


def test_an_idle_tab_never_signs_out_the_tab_of_the_same_browser_in_use(monkeypatch, tmp_path) -> None:
    """Statistics left open in one tab expired after 30 minutes and forgot the token every tab of the browser
    shares: the tab in use was signed out at its next click."""
    import time

    from core.services import accounts
    from core.services.access import COMMAND_LINE
    from core.storage.sqlite import SQLiteStore
    from ui import auth

    store = SQLiteStore(tmp_path / "results.sqlite3")
    accounts.add_account(store, COMMAND_LINE, "boss", "supervisor", "a long enough password")
    boss = accounts.sign_in(store, "boss", "a long enough password")
    clock = Clock()
    registry = SessionRegistry(idle_seconds=1800, clock=clock)
    token = registry.issue(boss)
    monkeypatch.setattr(auth, "_browser_token", lambda: token)
    monkeypatch.setattr(auth.resources, "current_store", lambda: store)
    monkeypatch.setattr(auth.resources, "session_registry", lambda: registry)
    idle = {
        auth.ACTOR_KEY: boss,
        auth.SEEN_KEY: time.monotonic() - 31 * 60,
        auth.TOKEN_KEY: token,
        auth.BOUND_KEY: True,
    }
    busy = {auth.ACTOR_KEY: boss, auth.SEEN_KEY: time.monotonic(), auth.TOKEN_KEY: token, auth.BOUND_KEY: True}
    monkeypatch.setattr(auth.st, "session_state", busy)
    assert auth.current_actor() == boss  # the tab in use: its click touches the shared token
    monkeypatch.setattr(auth.st, "session_state", idle)
    assert auth.current_actor(activity=False) == boss  # the idle tab's timed refresh goes on with it
    monkeypatch.setattr(auth.st, "session_state", busy)
    assert auth.current_actor() == boss and registry.alive(token)
    clock.now += 1801  # then every tab left alone: the shared token idles out, and the idle tab ends
    monkeypatch.setattr(auth.st, "session_state", idle)
    said = []
    monkeypatch.setattr(auth, "sign_out", lambda reason: said.append(reason))
    assert auth.current_actor(activity=False) is None and not registry.alive(token)
    assert said == ["expired"]  # idle here, and nowhere else busy: expired (not "signed out elsewhere")


def test_a_sign_in_ends_after_a_working_day_however_busy(monkeypatch, tmp_path) -> None:
    """A session kept busy lasted for ever, and with it a role taken from the identity provider's claim, never
    read again."""
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    from core.services import accounts
    from core.services.access import COMMAND_LINE
    from core.storage.sqlite import SQLiteStore
    from ui import auth

    store = SQLiteStore(tmp_path / "results.sqlite3")
    accounts.add_account(store, COMMAND_LINE, "dr-a", "radiologist", "first password 1")
    doctor = accounts.sign_in(store, "dr-a", "first password 1")
    registry, token, state = browser_session(monkeypatch, store, doctor)
    assert auth.current_actor() == doctor
    state[auth.ACTOR_KEY] = replace(doctor, signed_in_at=datetime.now(UTC) - timedelta(hours=12, minutes=1))
    assert auth.current_actor() is None and "ended after 12 hours" in state["signed_out_reason"]
    assert not accounts.outlived(COMMAND_LINE)  # the command line has no sign-in to outlive
    old = replace(doctor, signed_in_at=datetime.now(UTC) - timedelta(hours=13))  # a reload or a download: ended too
    assert accounts.refreshed_actor(store, old) is None
    token = registry.issue(old)
    fresh: dict = {}
    monkeypatch.setattr(auth.st, "session_state", fresh)
    monkeypatch.setattr(auth, "_browser_token", lambda: token)
    assert auth.current_actor() is None and registry.resume(token) is None  # not resumed, its token forgotten


def test_a_secrets_file_that_cannot_be_read_opens_no_database_and_makes_no_key(monkeypatch, tmp_path) -> None:
    """A TOML typo read as "no secrets": the app opened the embedded database and made new keys there, while the
    command line refused the same file (and the configured MongoDB was never used)."""
    from streamlit import config

    from core.errors import StoreError
    from ui import resources

    broken = tmp_path / "secrets.toml"
    broken.write_text('[mongodb\nuri = "mongodb://db.example"\n')

    class Unreadable:
        def to_dict(self):
            raise ValueError("not TOML")

    monkeypatch.setattr(resources.st, "secrets", Unreadable())
    good = tmp_path / "good.toml"
    good.write_text('[identity]\nhmac_key = "x"\n')
    files = [str(good), str(broken)]  # the broken one is named, not the first that exists
    monkeypatch.setattr(config, "get_option", lambda name: files if name == "secrets.files" else None)
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(StoreError, match=r"secrets\.toml cannot be read \(TOMLDecodeError"):
        resources.current_store()
    with pytest.raises(ValueError, match="cannot be read"):
        resources.current_patient_key()
    assert not (tmp_path / "data").exists()  # no database, no key file made
    folder = tmp_path / "mounted"  # a folder of secrets (a mounted secret): its .toml files are read
    folder.mkdir()
    broken.rename(folder / "secrets.toml")
    files[:] = [str(folder)]
    assert "mounted/secrets.toml cannot be read" in resources.secrets_problem()
    (folder / "secrets.toml").unlink()  # no file at all: nothing configured, the embedded database as before
    assert resources.secrets_problem() is None


def test_a_secrets_file_named_but_not_there_opens_no_database_and_is_logged_once(monkeypatch, tmp_path, caplog):
    """``make run BTD_SECRETS=<a mistyped path>`` served the sign-in page on a new embedded database with new keys,
    and the server's log said nothing (a failure to open showed on the sign-in page alone)."""
    import logging

    from streamlit import config

    from core.errors import StoreError
    from ui import resources

    files = [str(tmp_path / "secret.toml")]
    monkeypatch.setattr(config, "get_option", lambda name: files if name == "secrets.files" else None)
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(resources, "_last_health", {})
    with caplog.at_level(logging.ERROR, logger="btd.ui"):
        for _ in range(3):
            with pytest.raises(StoreError, match=r"No database is opened: the secrets file .*secret\.toml.*not exist"):
                resources.current_store()
    assert not (tmp_path / "data").exists()
    logged = [r.getMessage() for r in caplog.records if "event=store_unopened" in r.getMessage()]
    assert len(logged) == 1 and "code=store_error" in logged[0] and "secret.toml" in logged[0]


def test_a_mistyped_secret_opens_no_database_in_the_app_either(monkeypatch, tmp_path) -> None:
    """The app read ``[mongo] url`` as no MongoDB and opened the embedded database beside a configured one."""
    from core.errors import StoreError
    from ui import resources

    class Typo:
        def to_dict(self):
            return {"mongo": {"url": "mongodb://db.example"}}

    monkeypatch.setattr(resources.st, "secrets", Typo())
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    assert "has no setting url" in resources.secrets_problem()
    with pytest.raises(StoreError, match=r"No database is opened: \[mongo\] in the secrets file has no setting url"):
        resources.current_store()
    assert not (tmp_path / "data").exists()


def test_the_app_opens_no_database_whose_audit_trail_another_key_signs(monkeypatch, tmp_path) -> None:
    """Only the commands checked the key: the app, started under a rotated or mistyped BTD_AUDIT_KEY, wrote every
    sign-in under it, and the trail read as tampered with from then on, under either key."""
    from core.errors import StoreError
    from core.services import audit
    from core.services.access import COMMAND_LINE
    from ui import resources

    class NoSecrets:
        def to_dict(self):
            return {}

    monkeypatch.setattr(resources.st, "secrets", NoSecrets())
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BTD_AUDIT_KEY", "the server's audit key, long enough")
    resources._store.clear()
    audit.record(resources.current_store(), COMMAND_LINE, "store_backup", None)
    resources._store.clear()
    monkeypatch.setenv("BTD_AUDIT_KEY", "another audit key, just as long")
    with pytest.raises(StoreError, match="not signed with the app's audit key"):
        resources.current_store()
    monkeypatch.setenv("BTD_AUDIT_KEY", "the server's audit key, long enough")
    store = resources.current_store()  # the refusal is not kept: started again with the right key, it opens
    assert len(store.audit_events()) == 1 and audit.verify(store).intact
    from tests.test_audit_trail import tamper

    tamper(store, 1, actor="someone-else")  # the newest event edited: no reason to lock everyone out
    resources._store.clear()
    assert not audit.verify(resources.current_store()).intact  # opened; verify names the edit
    resources._store.clear()


def test_idle_expiry_runs_on_a_clock_that_a_step_of_the_wall_clock_never_moves(monkeypatch) -> None:
    """Idle time was wall-clock time: with the clock stepped back an hour (a time sync), a session idle for 88
    minutes was still alive."""
    import time

    stopped = time.time() - 3600
    monkeypatch.setattr(time, "time", lambda: stopped)  # stepped back, and standing still
    registry = SessionRegistry(idle_seconds=0.05)
    assert registry._clock is time.monotonic  # by default (the wall clock was bound as the default before)
    token = registry.issue(Actor("dr-a", "radiologist"))
    time.sleep(0.1)
    assert registry.resume(token) is None
