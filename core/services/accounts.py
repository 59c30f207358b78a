"""Local accounts and signing in: Argon2 password hashes (argon2-cffi), throttling, roles, audit events.

- Passwords: at least 12 characters; stored only as Argon2id hashes; never logged, never in an event.
- Signing in: a wrong password adds to the account's failures; the fifth in a row locks it for 15 minutes
  (``MAX_FAILURES``, ``LOCK_MINUTES``; an admin can end it with :func:`unlock`). Every refusal gets the same
  message after the same time (``REFUSAL_SECONDS``), so neither timing nor wording tells which names exist. Every
  attempt is an audit event (an unknown name is recorded as "unknown", not as typed: people type patient names in
  the wrong field).
- Sessions expire after ``IDLE_MINUTES`` without activity (checked by the UI at every run and once a minute).
- Single sign-on: :mod:`core.services.single_sign_on`.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from contextlib import suppress
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from core.domain.people import ROLES, Account, check_password
from core.errors import AccountLocked, InvalidRecord, SignInFailed, StoreError
from core.services import audit
from core.services.access import ACCOUNTS, NOBODY, VIA_ACCOUNT, VIA_CLAIM, Actor, require
from core.services.passwords import LOCK_MINUTES, MAX_FAILURES, BoundedHasher, claimed, failed
from core.services.single_sign_on import single_sign_on_ready
from core.storage.protocol import Store

IDLE_MINUTES = 30
SESSION_HOURS = 12  # the longest a sign-in lasts, however busy (the cookie's own lifetime): a role taken from an
# identity provider's claim, never read again, is re-read at the next sign-in
REFUSAL_SECONDS = 1.0  # longer than any refusal's own work: each takes this long
REFUSED = (
    f"Wrong account name or password. After {MAX_FAILURES} failed attempts in a row an account is locked for "
    f"{LOCK_MINUTES} minutes."
)  # every refusal says the same, so that the answer never tells which account names exist


def _hasher() -> Any:
    from argon2 import PasswordHasher

    return BoundedHasher(PasswordHasher())  # two at a time in the process: a flood of sign-ins took gigabytes


@cache
def _dummy_hash() -> str:
    """A real hash of a random secret: checking a password against it costs what a real check costs."""
    return _hasher().hash(secrets.token_hex(16))


def _no_twin(store: Store, name: str) -> None:
    if twin := next((a.name for a in store.accounts() if a.name.lower() == name.lower()), None):  # "Alice" beside
        raise InvalidRecord(f"An account named {twin} exists already (names differ only in case).")  # "alice"


def add_account(
    store: Store, actor: Actor, name: str, role: str, password: str | None, temporary: bool = False
) -> Account:
    """Create an account (admins; ``password`` None for a single-sign-on account; ``temporary``: its owner must
    choose another at the first sign-in, before anything else)."""
    require(actor, ACCOUNTS)
    if not name.isascii():  # "admin" with a Cyrillic "a", or a full-width "ROOT": another account in the trail
        raise InvalidRecord(
            "A new account name uses ASCII letters, digits and . _ @ - only (names in other scripts can look exactly "
            "like another account's)."
        )
    if store.get_account(name) is not None:
        raise InvalidRecord(f"An account named {name} exists already.")
    _no_twin(store, name)
    if password is not None:
        check_password(password)
    account = Account(
        name,
        role,
        _hasher().hash(password) if password else None,
        created_at=datetime.now(UTC),
        must_change=temporary and password is not None,
    )
    with store.atomic():  # the change and its audit event: both or neither
        _no_twin(store, name)  # again where writers queue (SQLite): "DrJones" and "drjones" made at once were both
        # created, each checked before the other's seconds of password hashing ended
        if not store.insert_account(account.validate()):  # created meanwhile (the page and the command line)
            raise InvalidRecord(f"An account named {name} exists already.")
        try:
            audit.record(store, actor, "account_created", name, role=role, temporary=account.must_change)
        except StoreError:  # SQLite rolls the unit back; MongoDB needs the undo (an admin stood, unaudited)
            if not getattr(store, "rolls_back", True):
                with suppress(StoreError):
                    store.uncreate_account(account)
            raise
    return account


def _manages(account: Account, sso: bool) -> bool:
    """An enabled admin who can sign in to the app: with a password, or by single sign-on when it is set up (a
    password-less admin with none counted as the other admin, and the last one who could sign in was disabled)."""
    return account.role == "admin" and not account.disabled and (bool(account.password_hash) or sso)


ONLY_ADMIN = "{} is the only enabled admin who can sign in; make another account admin (with a password) first."


def _keep_an_admin(store: Store, account: Account, updated: Account) -> None:
    """Refuse a change that would leave no enabled admin who can sign in (nobody could manage accounts from the
    app again)."""
    sso = single_sign_on_ready()
    leaves = _manages(account, sso) and not _manages(updated, sso)
    if leaves and not any(_manages(a, sso) for a in store.accounts() if a.name != account.name):
        raise InvalidRecord(ONLY_ADMIN.format(account.name))


# Each change reads the account, checks it and writes only the fields it changes, on the condition that the fields
# it read still hold (compare and set): SQLite runs it in one unit of work with its audit event; on MongoDB (no
# transaction) two admins' changes, or a change during a sign-in, never write back a stale copy of the account
# (a role change once undid a password reset made meanwhile), a change that left no enabled admin after all (two
# admins disabling each other at once) is undone, and so is one whose audit event cannot be written (a promotion
# to admin stood unaudited while the admin was told it failed).
CHANGED_MEANWHILE = "The account {} was changed by someone else meanwhile; look again and retry."


def _change(
    store: Store,
    actor: Actor,
    account: Account,
    changes: dict[str, Any],
    checked: tuple[str, ...],
    event: str,
    **details: Any,
) -> Account:
    """Write ``changes`` to ``account`` if the ``checked`` fields still hold what was read, with the audit ``event``;
    undone (and refused) when that left no enabled admin or the event cannot be written."""
    expected = {field: getattr(account, field) for field in checked}
    if not store.update_account(account.name, changes, expected):
        raise InvalidRecord(CHANGED_MEANWHILE.format(account.name))
    updated = replace(account, **changes)
    try:
        sso = single_sign_on_ready()
        if _manages(account, sso) and not any(_manages(a, sso) for a in store.accounts()):
            raise InvalidRecord(ONLY_ADMIN.format(account.name))
        audit.record(store, actor, event, account.name, **details)
    except (InvalidRecord, StoreError):
        with suppress(StoreError):  # SQLite rolls the unit back anyway; MongoDB needs the undo
            undo = {field: getattr(account, field) for field in changes}
            store.update_account(account.name, undo, {field: getattr(updated, field) for field in changes})
        raise
    return updated


def _not_yourself(actor: Actor, name: str, what: str) -> None:
    """An admin does not disable or re-role their own account (they were signed out by their own change, the
    account left to whoever else is admin): another administrator does it."""
    if actor.name.lower() == name.lower() and actor.role == "admin":
        raise InvalidRecord(f"You cannot {what} your own account; ask another administrator.")


def set_role(store: Store, actor: Actor, name: str, role: str) -> Account:
    require(actor, ACCOUNTS)
    if role not in ROLES:
        raise InvalidRecord(f"A role is one of {', '.join(ROLES)}.")
    _not_yourself(actor, name, "change the role of")
    with store.atomic():  # the read, the check, the change and its audit event: both or neither
        account = _existing(store, name)
        if account.role == role:  # no change, no event claiming one ("role radiologist, was radiologist")
            raise InvalidRecord(f"{name} is {role} already: nothing changed.")
        _keep_an_admin(store, account, replace(account, role=role))
        return _change(
            store,
            actor,
            account,
            {"role": role},
            ("role", "disabled"),
            "account_role_changed",
            role=role,
            was=account.role,
        )


def set_disabled(store: Store, actor: Actor, name: str, disabled: bool = True) -> Account:
    require(actor, ACCOUNTS)
    if disabled:
        _not_yourself(actor, name, "disable")
    with store.atomic():  # the read, the check, the change and its audit event: both or neither
        account = _existing(store, name)
        if account.disabled == disabled:  # "enable" on an enabled account also ended its lock, audited as neither
            raise InvalidRecord(f"{name} is {'disabled' if disabled else 'enabled'} already: nothing changed.")
        _keep_an_admin(store, account, replace(account, disabled=disabled))
        changes: dict[str, Any] = {"disabled": disabled, "failed_count": 0, "locked_until": None}
        if disabled:  # its sessions end now and stay ended once it is enabled again (an idle one resumed)
            changes["sessions_from"] = datetime.now(UTC)
        event = "account_disabled" if disabled else "account_enabled"
        return _change(store, actor, account, changes, ("role", "disabled"), event)


def unlock(store: Store, actor: Actor, name: str) -> Account:
    """End a sign-in lock now (admins): the answer when someone keeps an account locked by failing on purpose."""
    require(actor, ACCOUNTS)
    with store.atomic():  # the read, the change and its audit event: both or neither
        account = _existing(store, name)
        if not account.failed_count and account.locked_until is None:
            raise InvalidRecord(f"{name} is not locked and has no failed sign-ins: nothing changed.")
        changes = {"failed_count": 0, "locked_until": None}
        return _change(store, actor, account, changes, ("password_hash",), "account_unlocked")


def set_password(store: Store, actor: Actor, name: str, password: str, temporary: bool = False) -> Account:
    """An administrator sets ``name``'s password (its sessions end); ``temporary``: its owner must choose another at
    the next sign-in, before anything else (the administrator knows this one). A single-sign-on account so becomes
    a password account (its identity no longer enters: one named like an account with a password gets no entry),
    and its event says so (``was``: the change of sign-in went unrecorded)."""
    require(actor, ACCOUNTS)
    if actor.name.lower() == name.lower() and actor.role == "admin":  # it signed them out as if someone else had
        raise InvalidRecord(OWN_PASSWORD)
    check_password(password)
    new_hash = _hasher().hash(password)  # the slow part, before the unit of work
    with store.atomic():  # the read, the change and its audit event: both or neither
        account = _existing(store, name)
        changes = {"password_hash": new_hash, "failed_count": 0, "locked_until": None, "must_change": temporary}
        was = {} if account.password_hash else {"was": SINGLE_SIGN_ON}
        return _change(
            store, actor, account, changes, ("password_hash",), "account_password_set", temporary=temporary, **was
        )


SINGLE_SIGN_ON = "single sign-on"
OWN_PASSWORD = (
    "Your own password is changed with Change my password in the sidebar, which asks for the current one and keeps "
    "you signed in; nothing changed."
)


def change_own_password(store: Store, actor: Actor, current: str, new: str, now: datetime | None = None) -> Actor:
    """A signed-in user's own password changed, once the current one is checked there (a wrong one counts as a
    failed sign-in: five lock the account, as at the sign-in form; an open session is no way round the lock).
    Returns the session's actor anew: its other sessions end (the new password's fingerprint is not theirs), this one
    goes on, no longer than it would have (its sign-in time stays). A single-sign-on account's password is its
    provider's. The change is written only over the account as it was checked: an administrator's reset or disable
    in between wins (one was overwritten by a change written over the account as read again)."""
    from argon2.exceptions import InvalidHashError, VerificationError

    if not actor.credential:
        raise InvalidRecord("This account signs in through single sign-on: change the password with your provider.")
    check_password(new)
    if new == current:
        raise InvalidRecord("The new password is the one in use: choose another.")
    now = now or datetime.now(UTC)
    account = _existing(store, actor.name)
    if refreshed_actor(store, actor) is None:  # outlived, disabled, or a password set since this session began
        raise InvalidRecord("This session is no longer current: sign in again.")
    hasher = _hasher()
    attempt = claimed(store, actor.name, now)
    if attempt is None:
        audit.record(store, actor, "password_change_refused", actor.name, reason="locked")
        raise AccountLocked("Too many wrong passwords: the account is locked for a while; nothing changed.")
    try:
        hasher.verify(account.password_hash, current)
    except (VerificationError, InvalidHashError):
        locked = failed(store, actor.name, attempt, now)
        audit.record(store, actor, "password_change_failed", actor.name, failures=attempt, locked=locked)
        raise InvalidRecord("The current password is wrong: nothing changed.") from None
    store.end_sign_in(actor.name, True)
    new_hash = hasher.hash(new)  # the slow part, before the unit of work
    with store.atomic():  # over the account as checked: a reset or a disable since makes it refused
        changes = {"password_hash": new_hash, "failed_count": 0, "locked_until": None, "must_change": False}
        checked = ("password_hash", "disabled", "sessions_from")
        updated = _change(store, actor, account, changes, checked, "account_password_changed")
    return replace(actor, credential=credential_of(updated), must_change=False)


def credential_of(account: Account) -> str:
    """A fingerprint of the account's password hash (a new salt at every password set: a new fingerprint); empty
    for an account without a password."""
    return hashlib.sha256(account.password_hash.encode()).hexdigest()[:16] if account.password_hash else ""


def refreshed_actor(store: Store, actor: Actor) -> Actor | None:
    """The signed-in ``actor`` as its account stands now: None once its sign-in is :data:`SESSION_HOURS` old, once the
    account is disabled (or was, since the session signed in: enabling it again does not bring the session back) or its
    password was set since the session signed in with it (an administrator's answer to a stolen or shared password must
    end the sessions it opened), its current role after an admin changed it. One indexed read; a session calls it on
    every run and fragment run, so a change reaches open sessions at their next interaction. A password sign-in whose
    account is gone (forgotten, or a backup from before it was restored) ends. Single sign-on keeps to where its role
    came from: a role from the provider's claim stays as it signed in (a local account of that name gave the next run
    its own role: someone removed from the admin group stayed admin) and ends when its sign-in would be refused now
    (that account disabled or given a password); a role from the local account follows the account and ends with it, or
    once it has a password."""
    if outlived(actor):  # a reload, a download or a fragment too, not only a page run
        return None
    account = store.get_account(actor.name)
    if account is not None and ended(actor, account):
        return None
    if actor.via == VIA_CLAIM:
        refused = account is not None and (account.disabled or account.password_hash is not None)
        return None if refused else actor
    if account is None:
        return None if actor.credential or actor.via == VIA_ACCOUNT else actor
    if account.disabled or (actor.credential and actor.credential != credential_of(account)):
        return None
    if actor.via == VIA_ACCOUNT and account.password_hash is not None:
        return None
    if (account.role, account.must_change) == (actor.role, actor.must_change):
        return actor
    return replace(actor, role=account.role, must_change=account.must_change)


def outlived(actor: Actor, now: datetime | None = None) -> bool:
    """Whether ``actor`` signed in more than :data:`SESSION_HOURS` ago (never for the command line)."""
    if actor.signed_in_at is None:
        return False
    return (now or datetime.now(UTC)) - actor.signed_in_at > timedelta(hours=SESSION_HOURS)


def ended(actor: Actor, account: Account) -> bool:
    """Whether ``actor`` signed in before ``account`` was last disabled (its sessions then ended; the time is
    stored to the millisecond, so a sign-in within that millisecond counts as before)."""
    if account.sessions_from is None:
        return False
    return actor.signed_in_at is None or actor.signed_in_at < account.sessions_from + timedelta(milliseconds=1)


def list_accounts(store: Store, actor: Actor) -> list[Account]:
    require(actor, ACCOUNTS)
    return store.accounts()


def _existing(store: Store, name: str) -> Account:
    account = store.get_account(name)
    if account is None:
        raise InvalidRecord(f"No account named {name}.")
    return account


def sign_in(store: Store, name: str, password: str, now: datetime | None = None) -> Actor:
    """The actor for ``name`` when ``password`` is right; :class:`SignInFailed` or :class:`AccountLocked` else,
    never sooner than :data:`REFUSAL_SECONDS` after the attempt began: the refusals' different store work (none
    for an unknown name, a counted failure for a known one) no longer tells which names exist."""
    started = time.monotonic()
    try:
        return _sign_in(store, name, password, now)
    except SignInFailed:
        time.sleep(max(0.0, started + REFUSAL_SECONDS - time.monotonic()))
        raise


# who a refused sign-in is recorded as: whoever typed it is not known (recorded as the account's own action, an
# attacker's guesses at a name read as that user's doings when the trail was filtered by account); the account is
# the event's target


def _sign_in(store: Store, name: str, password: str, now: datetime | None) -> Actor:
    from argon2.exceptions import InvalidHashError, VerificationError

    now = now or datetime.now(UTC)
    hasher = _hasher()
    account = store.get_account(name)
    if account is None or account.password_hash is None:
        with suppress(VerificationError, InvalidHashError):
            hasher.verify(_dummy_hash(), password)  # the same work as a real check: timing does not tell
        audit.record(store, NOBODY, "sign_in_failed", None, reason="unknown account")
        raise SignInFailed(REFUSED)
    attempt = claimed(store, name, now)  # claimed atomically: parallel tries cannot share one count
    if attempt is None:
        with suppress(VerificationError, InvalidHashError):
            hasher.verify(_dummy_hash(), password)  # as long as any other refusal
        audit.record(store, NOBODY, "sign_in_refused", name, reason="locked")
        raise AccountLocked(REFUSED)
    try:
        hasher.verify(account.password_hash, password)
    except (VerificationError, InvalidHashError):
        locked = failed(store, name, attempt, now)
        audit.record(store, NOBODY, "sign_in_failed", name, failures=attempt, locked=locked)
        raise SignInFailed(REFUSED) from None
    store.end_sign_in(name, True)
    verified = account.password_hash
    account = store.get_account(name) or account  # as it stands after the check: disabled or reset meanwhile?
    if account.disabled or account.password_hash != verified:
        reason = "disabled" if account.disabled else "password changed during sign-in"
        audit.record(store, NOBODY, "sign_in_refused", name, reason=reason)
        raise SignInFailed(REFUSED)
    if hasher.check_needs_rehash(verified):
        stronger = hasher.hash(password)
        if _rehash(store, account, stronger):  # the session carries the fingerprint of the hash it signed in with
            account = replace(account, password_hash=stronger)
    actor = Actor(  # signed in now (``now`` is the lock's clock)
        name, account.role, credential_of(account), signed_in_at=datetime.now(UTC), must_change=account.must_change
    )
    audit.record(store, actor, "sign_in", name)
    return actor


def _rehash(store: Store, seen: Account, new_hash: str) -> bool:
    """Store a stronger hash of the same password, unless the password changed since ``seen`` was read (an admin's
    reset meanwhile: the session then keeps the old hash's fingerprint, which the reset ends); whether it did."""
    return store.update_account(seen.name, {"password_hash": new_hash}, {"password_hash": seen.password_hash})
