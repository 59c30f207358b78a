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
