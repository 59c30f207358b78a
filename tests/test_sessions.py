"""Session tokens that let a page reload sign the browser in again: live, idle-expired, forgotten, never stored."""

from __future__ import annotations

from core.services.sessions import SessionRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_live_token_resumes_its_user_and_counts_as_activity() -> None:
    clock = Clock()
    registry = SessionRegistry(idle_seconds=1800, clock=clock)
    token = registry.issue("dr-a", "radiologist")
    clock.now += 1700
    assert registry.resume(token) == ("dr-a", "radiologist")
    clock.now += 1700  # the resume was activity: still live
    assert registry.touch(token) and registry.resume(token) == ("dr-a", "radiologist")


def test_an_idle_token_a_forgotten_one_and_an_unknown_one_resume_nobody() -> None:
    clock = Clock()
    registry = SessionRegistry(idle_seconds=1800, clock=clock)
    idle, forgotten = registry.issue("a", "supervisor"), registry.issue("b", "admin")
    registry.forget(forgotten)
    clock.now += 1801
    assert registry.resume(idle) is None and not registry.touch(idle)
    assert registry.resume(forgotten) is None and registry.resume("made-up") is None and registry.resume(None) is None


def test_every_sign_in_gets_a_new_unguessable_token_and_only_its_hash_is_kept() -> None:
    registry = SessionRegistry()
    first, second = registry.issue("dr-a", "radiologist"), registry.issue("dr-a", "radiologist")
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
    state = {auth.ACTOR_KEY: boss, auth.SEEN_KEY: time.time() - 20 * 60}
    monkeypatch.setattr(auth.st, "session_state", state)
    monkeypatch.setattr(auth, "_browser_token", lambda: None)
    monkeypatch.setattr(auth.resources, "current_store", lambda: store)
    monkeypatch.setattr(auth.resources, "session_registry", lambda: SessionRegistry())
    seen = state[auth.SEEN_KEY]
    assert auth.current_actor(activity=False) == boss and state[auth.SEEN_KEY] == seen  # checked, not refreshed
    state[auth.SEEN_KEY] = time.time() - 31 * 60
    assert auth.current_actor(activity=False) is None and auth.ACTOR_KEY not in state  # expired while refreshing
    state.update({auth.ACTOR_KEY: boss, auth.SEEN_KEY: seen})
    assert auth.current_actor() == boss and state[auth.SEEN_KEY] > seen  # a user's own action is activity
