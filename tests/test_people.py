"""Accounts, sign-in, roles, reviews and the audit trail: every refusal proven where the data is read or written."""

from __future__ import annotations

import io
import json
import logging
import os
import pwd
import sqlite3
import sys
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from core.domain.results import WorklistQuery
from core.errors import AccessDenied, AccountLocked, InvalidRecord, SignInFailed
from core.services import accounts, audit, reviews, single_sign_on, statistics
from core.services.access import COMMAND_LINE, Actor
from core.services.resources import accept_patient_key
from core.services.triage import (
    NOT_SAVED,
    SAVED,
    SaveStatus,
    Triaged,
    apply_patient_reference,
    linked_to_saved,
    reference_for_saved,
    retry_save,
    save_record,
    triage,
)
from core.storage.images import FolderImages
from core.storage.sqlite import SQLiteStore
from tests.scans import CANARY, png_bytes, synthetic_slice
from tests.test_store import make_record

RADIOLOGIST, SUPERVISOR, ADMIN = Actor("dr-a", "radiologist"), Actor("boss", "supervisor"), Actor("root", "admin")
PASSWORD = "correct horse battery"


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(tmp_path / "results.sqlite3")


def actions(store: SQLiteStore) -> list[str]:
    return [e.action for e in store.audit_events()]


def test_sign_in_checks_the_argon2_hash_and_is_audited(store, caplog) -> None:
    accounts.add_account(store, COMMAND_LINE, "dr-a", "radiologist", PASSWORD)
    assert store.get_account("dr-a").password_hash.startswith("$argon2id$")
    with caplog.at_level(logging.DEBUG):
        assert accounts.sign_in(store, "dr-a", PASSWORD) == Actor("dr-a", "radiologist")
        with pytest.raises(SignInFailed, match="Wrong account name or password"):
            accounts.sign_in(store, "dr-a", "wrong password!")
        with pytest.raises(SignInFailed, match="Wrong account name or password"):  # the same words: no hint
            accounts.sign_in(store, f"{CANARY} Smith", PASSWORD)
    assert actions(store) == ["account_created", "sign_in", "sign_in_failed", "sign_in_failed"]
    failed = store.audit_events()[2]  # whoever typed it is not the account: its target (its owner's own doings, no)
    assert (failed.actor, failed.role, failed.target) == ("unknown", "none", "dr-a")
    trail = json.dumps([e.__dict__ for e in store.audit_events()], default=str)
    assert PASSWORD not in trail and "argon2" not in trail and CANARY not in trail  # not even the typed name
    assert PASSWORD not in caplog.text and "$argon2" not in caplog.text


def test_a_password_longer_than_any_that_can_be_set_is_refused_as_a_wrong_one_never_hashed_whole(store) -> None:
    """Megabytes typed or sent to the sign-in form were hashed whole in one of the process's two password slots."""
    from core.services.passwords import BoundedHasher

    accounts.add_account(store, COMMAND_LINE, "dr-a", "radiologist", PASSWORD)
    with pytest.raises(SignInFailed, match="Wrong account name or password"):
        accounts.sign_in(store, "dr-a", PASSWORD + "x" * 5_000_000)
    assert actions(store)[-1] == "sign_in_failed"
    seen = []

    class Inner:
        def verify(self, hashed: str, password: str) -> bool:
            seen.append(len(password))
            return True

    BoundedHasher(Inner()).verify("hash", "y" * 70_000)
    BoundedHasher(Inner()).verify("hash", "y" * 1025)  # set before the limit existed: it still signs in
    assert seen == [0, 1025]
    with pytest.raises(InvalidRecord, match="at most 1,024 characters"):
        accounts.add_account(store, COMMAND_LINE, "dr-b", "radiologist", "z" * 1000 + "w" * 25)


def test_five_failures_lock_the_account_for_fifteen_minutes(store) -> None:
    accounts.add_account(store, COMMAND_LINE, "dr-a", "radiologist", PASSWORD)
    now = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    for _ in range(5):
        with pytest.raises(SignInFailed):
            accounts.sign_in(store, "dr-a", "not the password", now)
    with pytest.raises(AccountLocked) as locked:  # even the right password
        accounts.sign_in(store, "dr-a", PASSWORD, now + timedelta(seconds=5))
    for _ in range(6):  # an unknown name, tried as often, gets the very same answer: names cannot be guessed
        with pytest.raises(SignInFailed) as unknown:
            accounts.sign_in(store, "nobody-here", "not the password", now)
    assert str(locked.value) == str(unknown.value) == accounts.REFUSED
    assert accounts.sign_in(store, "dr-a", PASSWORD, now + timedelta(minutes=16)).role == "radiologist"
    assert store.get_account("dr-a").failed_count == 0


@pytest.mark.parametrize("kind", ["sqlite", "mongomock"])
def test_a_lock_lost_to_a_database_failure_is_set_at_the_next_try_and_ends_like_any_other(tmp_path, kind) -> None:
    """The fifth wrong password's lock is written after its count: a database failure (or the server stopping) in
    between left the count at five with no lock, and every later try, the right password two days on included, was
    refused as locked, for good, until an administrator unlocked it."""
    from core.errors import StoreUnavailable

    if kind == "sqlite":
        store = SQLiteStore(tmp_path / "results.sqlite3")
    else:
        import mongomock

        from core.storage.mongo import MongoStore

        store = MongoStore(mongomock.MongoClient(tz_aware=True), collection="scans")
    accounts.add_account(store, COMMAND_LINE, "dr-a", "radiologist", PASSWORD)
    now = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    for _ in range(accounts.MAX_FAILURES - 1):
        with pytest.raises(SignInFailed):
            accounts.sign_in(store, "dr-a", "not the password", now)
    written = store.end_sign_in

    def failing(*_: object) -> None:
        raise StoreUnavailable("The results database is locked by another process; try again.")

    store.end_sign_in = failing  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        accounts.sign_in(store, "dr-a", "not the password", now)
    store.end_sign_in = written  # type: ignore[method-assign]
    assert store.get_account("dr-a").locked_until is None  # the lock lost
    later = now + timedelta(days=2)
    with pytest.raises(AccountLocked):  # the next try locks it, from then
        accounts.sign_in(store, "dr-a", PASSWORD, later)
    assert store.get_account("dr-a").locked_until is not None
    with pytest.raises(AccountLocked):
        accounts.sign_in(store, "dr-a", PASSWORD, later + timedelta(minutes=14))
    assert accounts.sign_in(store, "dr-a", PASSWORD, later + timedelta(minutes=16)).role == "radiologist"
    assert store.get_account("dr-a").failed_count == 0
    session = accounts.sign_in(store, "dr-a", PASSWORD, later + timedelta(minutes=17))
    for _ in range(accounts.MAX_FAILURES - 1):  # a password change's check counts and locks the same way
        with pytest.raises(InvalidRecord, match="current password is wrong"):
            accounts.change_own_password(store, session, "not the password", "another long password", later)
    store.end_sign_in = failing  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        accounts.change_own_password(store, session, "not the password", "another long password", later)
    store.end_sign_in = written  # type: ignore[method-assign]
    with pytest.raises(AccountLocked):
        accounts.change_own_password(store, session, PASSWORD, "another long password", later + timedelta(days=1))
    with pytest.raises(AccountLocked):
        accounts.sign_in(store, "dr-a", PASSWORD, later + timedelta(days=1, minutes=14))
    assert accounts.sign_in(store, "dr-a", PASSWORD, later + timedelta(days=1, minutes=16)).role == "radiologist"


def test_disabled_accounts_and_short_passwords_are_refused(store) -> None:
    with pytest.raises(InvalidRecord, match="12 characters"):
        accounts.add_account(store, COMMAND_LINE, "dr-b", "radiologist", "short")
    for weak in (" " * 12, "\t" * 14, "a" * 12):  # twelve spaces made an admin account
        with pytest.raises(InvalidRecord, match="one character repeated"):
            accounts.add_account(store, COMMAND_LINE, "dr-b", "admin", weak)
    for untypable in ("Long-enough\x00pass-1", "Long-enough\tpass-1", "Long-enough pass-1\x7f", "Long-enough\x85pass"):
        with pytest.raises(InvalidRecord, match="no control character"):  # a NUL: nobody could sign in with it
            accounts.add_account(store, COMMAND_LINE, "dr-b", "admin", untypable)
    for published in ("a long password", "A Long Password "):  # the first admin's, once printed on the sign-in
        with pytest.raises(InvalidRecord, match="printed in this project's documentation"):  # page: anybody's
            accounts.add_account(store, COMMAND_LINE, "admin", "admin", published)
    assert store.accounts() == []
    accounts.add_account(store, COMMAND_LINE, "dr-a", "radiologist", PASSWORD)
    accounts.set_disabled(store, ADMIN, "dr-a")
    with pytest.raises(SignInFailed):
        accounts.sign_in(store, "dr-a", PASSWORD)
    accounts.set_disabled(store, ADMIN, "dr-a", False)
    accounts.set_role(store, ADMIN, "dr-a", "supervisor")
    assert accounts.sign_in(store, "dr-a", PASSWORD).role == "supervisor"


def test_users_change_their_own_password_once_the_current_one_is_checked(store) -> None:
    """Only an administrator could set a password: a user who suspected theirs was seen had to ask for it."""
    accounts.add_account(store, COMMAND_LINE, "dr-a", "radiologist", PASSWORD)
    signed_in = accounts.sign_in(store, "dr-a", PASSWORD)
    other_tab = accounts.sign_in(store, "dr-a", PASSWORD)  # another of the user's sessions
    new = "a different passphrase"
    for current, password, refused in (
        (PASSWORD, "short", "12 characters"),
        (PASSWORD, PASSWORD, "the one in use"),
        ("not my password", new, "current password is wrong"),
    ):
        with pytest.raises(InvalidRecord, match=refused):
            accounts.change_own_password(store, signed_in, current, password)
    renewed = accounts.change_own_password(store, signed_in, PASSWORD, new)
    assert accounts.refreshed_actor(store, renewed) == signed_in  # this session goes on, under the new password
    assert renewed.signed_in_at == signed_in.signed_in_at  # and no longer than it would have
    assert accounts.refreshed_actor(store, other_tab) is None  # the others end
    assert accounts.sign_in(store, "dr-a", new).name == "dr-a"
    with pytest.raises(SignInFailed):
        accounts.sign_in(store, "dr-a", PASSWORD)
    trail = [(e.actor, e.action, e.target) for e in store.audit_events()]
    assert ("dr-a", "password_change_failed", "dr-a") in trail and ("dr-a", "account_password_changed", "dr-a") in trail
    assert PASSWORD not in str([e.detail for e in store.audit_events()])
    with pytest.raises(InvalidRecord, match="no longer current"):  # the old session's fingerprint: not its password
        accounts.change_own_password(store, other_tab, new, "yet another passphrase")
    with pytest.raises(InvalidRecord, match="single sign-on"):
        accounts.change_own_password(store, Actor("dr.x@hospital.example", "radiologist"), "", new)
    current = accounts.sign_in(store, "dr-a", new)
    for _ in range(accounts.MAX_FAILURES):  # an open session is no way round the lock
        with pytest.raises(InvalidRecord, match="wrong"):
            accounts.change_own_password(store, current, "guess number one", "yet another passphrase")
    with pytest.raises(SignInFailed):
        accounts.change_own_password(store, current, new, "yet another passphrase")  # locked, the right one too
    with pytest.raises(SignInFailed):
        accounts.sign_in(store, "dr-a", new)


def test_an_administrators_reset_during_a_users_own_change_wins_and_an_outlived_session_changes_nothing(
    store, monkeypatch
) -> None:
    """The user's change was written over the account as read again after the check: a reset (or a disable) made
    in between was overwritten. A session past its 12 hours got a new sign-in time from the change."""
    accounts.add_account(store, COMMAND_LINE, "dr-a", "radiologist", PASSWORD)
    signed_in = accounts.sign_in(store, "dr-a", PASSWORD)
    real = store.end_sign_in

    def reset_meanwhile(name, succeeded, locked_until=None):
        real(name, succeeded, locked_until)
        if succeeded:
            monkeypatch.setattr(store, "end_sign_in", real)
            accounts.set_password(store, ADMIN, "dr-a", "the administrator's reset")

    monkeypatch.setattr(store, "end_sign_in", reset_meanwhile)
    with pytest.raises(InvalidRecord, match="changed"):
        accounts.change_own_password(store, signed_in, PASSWORD, "a different passphrase")
    assert accounts.sign_in(store, "dr-a", "the administrator's reset").name == "dr-a"
    assert "account_password_changed" not in actions(store)
    current = accounts.sign_in(store, "dr-a", "the administrator's reset")
    old = replace(current, signed_in_at=datetime.now(UTC) - timedelta(hours=accounts.SESSION_HOURS + 1))
    with pytest.raises(InvalidRecord, match="no longer current"):
        accounts.change_own_password(store, old, "the administrator's reset", "a different passphrase")


def test_single_sign_on_identities_get_a_role_from_a_claim_or_a_local_account(store) -> None:
    claims = {"email": "dr.x@hospital.example", "email_verified": True, "groups": ["staff", "radiologist"]}
    assert single_sign_on.external_actor(store, claims, "groups") == Actor("dr.x@hospital.example", "radiologist")
    with pytest.raises(SignInFailed, match="no role"):
        single_sign_on.external_actor(store, {"email": "visitor@hospital.example", "email_verified": True})
    accounts.add_account(store, ADMIN, "visitor@hospital.example", "supervisor", None)
    assert (
        single_sign_on.external_actor(store, {"email": "visitor@hospital.example", "email_verified": True}).role
        == "supervisor"
    )


def test_a_single_sign_on_identity_never_takes_a_password_accounts_role_nor_an_unverified_email(store) -> None:
    """An identity whose e-mail claim read "admin" (or a colleague's address, unverified) got that account's role."""
    accounts.add_account(store, COMMAND_LINE, "admin", "admin", PASSWORD)
    for claims in (
        {"email": "admin", "email_verified": True, "sub": "idp-123"},
        {"email": "admin", "email_verified": True, "groups": ["radiologist"]},
    ):
        with pytest.raises(SignInFailed, match="local account with a password"):  # whatever role its claim gives
            single_sign_on.external_actor(store, claims, "groups")
    accounts.add_account(store, ADMIN, "dr.y@hospital.example", "radiologist", None)
    unverified = {"email": "dr.y@hospital.example", "email_verified": False, "sub": "idp-456"}
    for flag in (False, "false", 0, None):  # providers that send the claim as text or a number: "false" was verified
        with pytest.raises(SignInFailed, match="no role"):
            single_sign_on.external_actor(store, unverified | {"email_verified": flag})
    silent = {"email": "dr.y@hospital.example", "sub": "idp-456"}  # a provider that does not say (Entra ID's e-mail,
    with pytest.raises(SignInFailed, match="no role"):  # which its users may edit): taken as verified, anybody
        single_sign_on.external_actor(store, silent)  # who typed a colleague's address signed in as that colleague
    assert single_sign_on.external_actor(store, silent | {"groups": ["supervisor"]}, "groups").name == "idp-456"
    with pytest.raises(SignInFailed, match=r"This identity \(idp-456\) has no role"):  # named: an administrator
        single_sign_on.external_actor(store, silent)  # makes its --sso account under that name
    assert store.audit_events()[-1].detail.get("identity") == "idp-456"
    assert single_sign_on.external_actor(store, unverified | {"email_verified": "true"}).role == "radiologist"
    verified = unverified | {"email_verified": True}
    assert single_sign_on.external_actor(store, verified) == Actor("dr.y@hospital.example", "radiologist")
    # an account disabled under the e-mail still refuses the identity the provider does not vouch for: disabling
    # it was how an administrator kept a role-claim user out, and the subject's name walked past it
    accounts.set_disabled(store, ADMIN, "dr.y@hospital.example")
    with pytest.raises(SignInFailed, match="no role"):
        single_sign_on.external_actor(store, silent | {"groups": ["radiologist"]}, "groups")
    # a name with a line break in it, or one differing from an account's only in case: refused
    with pytest.raises(SignInFailed, match="characters the triage dashboard cannot show"):
        single_sign_on.external_actor(
            store, {"email": "dr\nx@corp.example", "email_verified": True, "groups": ["admin"]}, "groups"
        )
    with pytest.raises(SignInFailed, match="only in case"):
        single_sign_on.external_actor(
            store, {"email": "DR.Y@hospital.example", "email_verified": True, "groups": ["admin"]}, "groups"
        )
    assert actions(store)[-2:] == ["sign_in_failed", "sign_in_failed"]
    for name in ("o'brien@hospital.example", "auth0|5f7c1e", '"[a](b)"@corp.example'):  # real names sign in (the
        claims = {"sub": name, "groups": ["radiologist"]}  # page escapes Markdown wherever it shows a name)
        assert single_sign_on.external_actor(store, claims, "groups").name == name


def saved_upload(store) -> Triaged:
    """A saved upload as the Scan page keeps it: its reference is what a caller would change."""
    record = make_record(1, datetime(2026, 1, 1, tzinfo=UTC))
    return Triaged(record.image_sha256, 1, None, record=record, status=SaveStatus(SAVED, record_id=record.id))


@pytest.mark.parametrize(
    ("who", "call"),
    [
        (SUPERVISOR, lambda s, a: triage(png_bytes(synthetic_slice(128)), None, None, s, actor=a, patient_ref=None)),
        (ADMIN, lambda s, a: triage(png_bytes(synthetic_slice(128)), None, None, s, actor=a, patient_ref=None)),
        # the one writer every save goes through (a series, a PACS study, a retry): a script calling it as a
        # supervisor or an administrator saved a result under that name
        (SUPERVISOR, lambda s, a: save_record(make_record(2, datetime(2026, 1, 2, tzinfo=UTC)), s, a)),
        (ADMIN, lambda s, a: save_record(make_record(2, datetime(2026, 1, 2, tzinfo=UTC)), s, a)),
        (SUPERVISOR, lambda s, a: reviews.review_result(s, a, "0" * 64, "glioma")),
        (ADMIN, lambda s, a: reviews.review_result(s, a, "0" * 64, "glioma")),
        (SUPERVISOR, lambda s, a: reviews.worklist(s, a, WorklistQuery())),
        (SUPERVISOR, lambda s, a: reviews.open_result(s, None, a, "0" * 64, None, None)),
        (ADMIN, lambda s, a: reviews.open_result(s, None, a, "0" * 64, None, None)),
        (
            RADIOLOGIST,
            lambda s, a: statistics.dashboard(
                s, a, start_day=date(2026, 1, 1), end_day=date(2026, 1, 2), timezone="UTC", period="day"
            ),
        ),
        (RADIOLOGIST, lambda s, a: statistics.model_versions(s, a)),
        (RADIOLOGIST, lambda s, a: audit.events(s, a)),
        (SUPERVISOR, lambda s, a: audit.export_csv(s, a, {})),
        (RADIOLOGIST, lambda s, a: accounts.add_account(s, a, "x", "admin", PASSWORD)),
        (SUPERVISOR, lambda s, a: accounts.set_role(s, a, "dr-a", "admin")),
        (RADIOLOGIST, lambda s, a: accounts.list_accounts(s, a)),
        (None, lambda s, a: reviews.worklist(s, a, WorklistQuery())),
        (SUPERVISOR, lambda s, a: apply_patient_reference(saved_upload(s), s, "p" * 64, a)),
        (ADMIN, lambda s, a: retry_save(saved_upload(s), s, None, "p" * 64, a)),
        (SUPERVISOR, lambda s, a: reference_for_saved(s, a, saved_upload(s).record.id, "p" * 64, SaveStatus(SAVED))),
        (ADMIN, lambda s, a: linked_to_saved(saved_upload(s), s, "p" * 64, a)),  # a patient's reference written
        (RADIOLOGIST, lambda s, a: accept_patient_key(s, a)),
        (SUPERVISOR, lambda s, a: accept_patient_key(s, a)),
    ],
)
def test_every_service_refuses_the_roles_that_may_not_use_it(store, who, call) -> None:
    store.add(make_record(1, datetime(2026, 1, 1, tzinfo=UTC)))
    with pytest.raises(AccessDenied):
        call(store, who)
    assert store.summary().total == 1 and store.reviews_of(make_record(1, datetime.now(UTC)).id) == []


def test_a_review_is_recorded_with_its_history_and_audited(store, tmp_path, tiny_classifier) -> None:
    images = FolderImages(tmp_path / "images")
    result = triage(
        png_bytes(synthetic_slice(256, tumour=True)),
        tiny_classifier,
        None,
        store,
        actor=RADIOLOGIST,
        patient_ref=None,
        images=images,
    )
    assert result.status.state == "saved" and result.record.image_key in images.stored_keys()
    record_id = result.record.id
    assert [r.id for r in reviews.worklist(store, RADIOLOGIST, WorklistQuery())] == [record_id]
    opened = reviews.open_result(store, images, RADIOLOGIST, record_id, tiny_classifier, None)
    assert opened.view is not None and opened.view.prediction.label == result.record.label  # the same verdict
    other = next(label for label in ("glioma", "notumor") if label != result.record.label)
    updated = reviews.review_result(store, RADIOLOGIST, record_id, other, ["false_alarm"], "  looks normal ")
    assert updated.final_label == other and updated.disagrees and updated.review_count == 1
    assert reviews.worklist(store, RADIOLOGIST, WorklistQuery()) == []  # reviewed: off the unreviewed list
    assert [r.id for r in reviews.worklist(store, RADIOLOGIST, WorklistQuery(reviewed=True, disagreements=True))] == [
        record_id
    ]
    assert actions(store) == ["upload", "open", "review"]
    assert store.reviews_of(record_id)[0].note == "looks normal"
    first = store.audit_events()[-1].detail
    assert (first["final_label"], first["previous_final_label"], first["review_number"]) == (other, None, 1)
    reviews.review_result(store, Actor("dr-b", "radiologist"), record_id, result.record.label)  # what it replaced
    second = store.audit_events()[-1].detail
    assert (second["previous_final_label"], second["previous_reviewer"], second["review_number"]) == (
        other,
        RADIOLOGIST.name,
        2,
    )
    images.delete(result.record.image_key)
    assert "no longer kept" in reviews.open_result(store, images, RADIOLOGIST, record_id, tiny_classifier, None).note


def test_a_result_the_gate_refused_reopens_without_a_heat_map(
    store, tmp_path, tiny_classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kept image is a grey copy: reopened, it passed the colour check the upload had failed, and Grad-CAM was
    drawn beside "Refused by the input gate"."""
    from core.model.explain import Explainer
    from core.model.gate import REJECTED, GatePolicy

    images = FolderImages(tmp_path / "images")
    monkeypatch.setattr(tiny_classifier, "gate_policy", GatePolicy(max_colourfulness=-1))  # refuses at upload
    result = triage(png_bytes(synthetic_slice(256, tumour=True)), tiny_classifier, None, store, actor=RADIOLOGIST,
                    patient_ref=None, images=images)  # fmt: skip
    assert result.record.gate == REJECTED
    monkeypatch.undo()  # reopened, the image passes every check
    opened = reviews.open_result(
        store, images, RADIOLOGIST, result.record.id, tiny_classifier, Explainer(tiny_classifier)
    )
    assert opened.view is not None and opened.view.heat == {} and opened.view.outline == ()
    assert opened.view.prediction.gate.decision == REJECTED
    # and no reason of the reading again given as the refusal's ("review band" read as why it was refused)
    from dataclasses import replace as changed

    card = tiny_classifier.card  # every reading again in the review band: flagged, its reason the band's
    monkeypatch.setattr(tiny_classifier, "card", changed(card, rule=changed(card.rule, review_band=(0.0, 1.0))))
    opened = reviews.open_result(store, images, RADIOLOGIST, result.record.id, tiny_classifier, None)
    assert opened.view.prediction.gate.decision == REJECTED and opened.view.prediction.gate.reasons == ()


def test_a_save_that_cannot_be_audited_is_reported_not_saved(store, tiny_classifier, monkeypatch) -> None:
    from core.errors import StoreUnavailable

    def broken(event):
        raise StoreUnavailable("The audit trail cannot be written.")

    monkeypatch.setattr(store, "append_audit", broken)
    result = triage(png_bytes(synthetic_slice(256)), tiny_classifier, None, store, actor=RADIOLOGIST, patient_ref=None)
    assert result.status.state == NOT_SAVED and "the result was not saved" in result.status.message
    if isinstance(store, SQLiteStore):  # one unit of work: the record is not there either (MongoDB: a known limit)
        assert store.summary().total == 0 and store.get(result.record.id) is None


def test_retrying_a_save_after_the_database_was_down_keeps_the_image_with_the_result(
    store, tmp_path, tiny_classifier
) -> None:
    """Analysed while the database was down (no store, so no image store): 'Retry saving' must keep the image before
    it saves the result, never a result without the image its review needs."""
    scan = png_bytes(synthetic_slice(256, tumour=True))
    offline = triage(scan, tiny_classifier, None, None, actor=RADIOLOGIST, patient_ref=None, images=None)
    assert offline.status.state == NOT_SAVED and offline.record.image_key is None
    still_down = retry_save(offline, store, None, None, RADIOLOGIST)  # the database back, the image store not yet
    assert still_down.status.state == NOT_SAVED and "image store" in still_down.status.message
    assert store.get(offline.record.id) is None
    images = FolderImages(tmp_path / "images")
    saved = retry_save(still_down, store, images, None, RADIOLOGIST)
    assert saved.status.state == SAVED and saved.unsaved_pixels is None
    assert store.get(offline.record.id).image_key in images.stored_keys()
    opened = reviews.open_result(store, images, RADIOLOGIST, offline.record.id, tiny_classifier, None)
    assert opened.view is not None and "no longer kept" not in opened.note


def test_images_are_private_pixels_only_and_purged_after_retention(tmp_path) -> None:
    from PIL import Image, PngImagePlugin

    images = FolderImages(tmp_path / "images")
    key = images.put(synthetic_slice(128))
    assert images.put(synthetic_slice(128)) == key  # content-addressed
    path = next((tmp_path / "images").glob("??/??/*.png"))
    assert oct(path.stat().st_mode)[-3:] == "600"
    assert not Image.open(io.BytesIO(images.get(key))).info  # no text chunks, no EXIF
    assert images.expired(datetime.now(UTC) - timedelta(days=1)) == []
    assert images.expired(datetime.now(UTC) + timedelta(seconds=1)) == [key]
    del PngImagePlugin


def run_cli(args: list[str], capsys, stdin: str = "") -> tuple[int, list[dict]]:
    from core.cli import main

    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = main(args)
    finally:
        sys.stdin = old
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_a_password_is_asked_without_echo_at_a_terminal_and_missing_standard_input_is_said(
    tmp_path, monkeypatch, capsys
) -> None:
    """Typed at a terminal the password was echoed on the screen; with standard input closed (`<&-`) the command
    failed with an AttributeError."""
    import getpass

    from core.cli import main

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MONGODB_URI", raising=False)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    asked, typed = [], [PASSWORD, PASSWORD + "x"]  # asked twice: mistyped once, unseen, the account was lost
    monkeypatch.setattr(getpass, "getpass", lambda prompt: asked.append(prompt) or typed[len(asked) - 1])
    monkeypatch.setattr(sys, "stdin", Terminal(""))
    assert main(["users", "add", "root", "--role", "admin", "--password-stdin"]) == 2
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert "passwords typed differ" in line["error"]["message"] and PASSWORD not in json.dumps(line)
    assert not (tmp_path / "data" / "results.sqlite3").exists()  # asked before any database is opened
    asked, typed = [], [PASSWORD, PASSWORD]
    assert main(["users", "add", "root", "--role", "admin", "--password-stdin"]) == 0
    assert asked == ["Password (not shown): ", "The same password again: "]
    assert PASSWORD not in capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", None)
    assert main(["users", "set-password", "root", "--password-stdin"]) == 2
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert "no standard input" in line["error"]["message"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # `< /dev/null`: "at least 12 characters" was the answer
    assert main(["users", "set-password", "root", "--password-stdin"]) == 2
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert "no password on standard input" in line["error"]["message"]

    class Endless(io.StringIO):  # `< /dev/zero`: read until the command ran out of memory
        def readline(self, size: int = -1) -> str:
            assert 0 < size < 10_000, "an unbounded read"
            return "\0" * size

    monkeypatch.setattr(sys, "stdin", Endless())
    assert main(["users", "set-password", "root", "--password-stdin"]) == 2
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert "longer than a password may be (1,024 characters)" in line["error"]["message"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("x" * 1000 + "yz" * 20 + "\n"))  # a whole line, as long
    assert main(["users", "set-password", "root", "--password-stdin"]) == 2
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert "longer than a password may be" in line["error"]["message"]


def test_the_first_admin_is_made_at_the_command_line_and_audit_verify_finds_an_edited_event(
    tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    code, lines = run_cli(["users", "add", "root", "--role", "admin", "--password-stdin"], capsys, PASSWORD + "\n")
    assert code == 0 and lines[0]["created"] == {
        "name": "root",
        "role": "admin",
        "disabled": False,
        "sign_in": "password",
        "temporary_password": False,
        "locked_until": None,
    }
    assert run_cli(["users", "add", "dr-b", "--role", "radiologist", "--password-stdin"], capsys, "short\n")[0] == 2
    code, lines = run_cli(["users", "add", "sso@x.org", "--role", "supervisor", "--sso", "--temporary"], capsys)
    assert code == 0 and lines[0]["created"]["sign_in"] == "single sign-on"  # made ahead of single sign-on: said
    assert "cannot sign in until it is" in lines[0]["warning"] and "--temporary ignored" in lines[0]["notes"][0]
    assert run_cli(["users", "disable", "sso@x.org"], capsys)[1][0]["updated"]["disabled"] is True
    assert [line["name"] for line in run_cli(["users", "list"], capsys)[1]] == ["root", "sso@x.org"]
    code, lines = run_cli(["audit", "verify"], capsys)
    assert code == 0 and lines[0]["intact"] is True and lines[0]["events"] == 3 and lines[0]["keyed"] is True
    assert lines[0]["head"].startswith("3:hmac:")
    database = sqlite3.connect(tmp_path / "data" / "results.sqlite3")
    database.execute("DROP TRIGGER audit_append_only_update")  # someone with the file in hand
    database.execute("UPDATE audit SET actor = 'nobody' WHERE seq = 2")
    database.commit()
    code, lines = run_cli(["audit", "verify"], capsys)
    assert code == 1 and lines[0]["intact"] is False and lines[0]["first_bad_event"]["seq"] == 2
    reset = ["users", "set-password", "root", "--password-stdin", "--temporary"]  # its owner chooses another first
    code, lines = run_cli(reset, capsys, "a temporary passphrase\n")
    assert code == 0 and lines[0]["updated"]["temporary_password"] is True


def test_images_past_retention_are_purged_by_an_admin_only_and_audited(store, tmp_path, monkeypatch) -> None:
    import os

    from core.services import retention

    images = FolderImages(tmp_path / "images")
    old, new = images.put(synthetic_slice(128, seed=1)), images.put(synthetic_slice(128, seed=2))
    past = datetime.now(UTC).timestamp() - 100 * 86400
    os.utime(next((tmp_path / "images").glob(f"??/??/{old}.png")), (past, past))
    with pytest.raises(AccessDenied):
        retention.purge_images(store, images, RADIOLOGIST)
    monkeypatch.setenv("BTD_IMAGE_RETENTION_DAYS", "90")
    assert retention.purge_images(store, images, ADMIN).deleted == 1
    assert images.stored_keys() == [new] and store.audit_events()[-1].detail == {
        "older_than_days": 90,
        "deleted": 1,
        "kept_unread": 0,
    }
    with pytest.raises(ValueError, match="at least 1 day"):  # 0 or fewer days would delete unreviewed images too
        retention.purge_images(store, images, ADMIN, -1)
    assert images.stored_keys() == [new]
    for setting in ("180d", "1y", "0", "36501"):  # read as the default 90, a scheduled purge deleted kept images
        monkeypatch.setenv("BTD_IMAGE_RETENTION_DAYS", setting)
        with pytest.raises(ValueError, match="BTD_IMAGE_RETENTION_DAYS"):
            retention.purge_images(store, images, ADMIN)
    assert images.stored_keys() == [new]
    monkeypatch.setenv("BTD_IMAGE_RETENTION_DAYS", "3651")  # valid: over the page's old limit of 3,650
    assert retention.retention_days() == 3651
    # a purge that fails part way (an image folder read-only): its event said every image was deleted, none was
    from core.errors import StoreUnavailable

    older = [images.put(synthetic_slice(128, seed=seed)) for seed in (3, 4, 5)]
    for key in older:
        os.utime(next((tmp_path / "images").glob(f"??/??/{key}.png")), (past, past))
    deleting = images.delete

    def failing_after_one(key: str, stored_before: datetime | None = None) -> bool:
        if len(set(older) - set(images.stored_keys())) >= 1:
            raise StoreUnavailable("The image store cannot be written.")
        return deleting(key, stored_before)

    monkeypatch.setattr(images, "delete", failing_after_one)
    with pytest.raises(StoreUnavailable):
        retention.purge_images(store, images, ADMIN, 90)
    assert len(set(older) & set(images.stored_keys())) == 2
    purged, failed = store.audit_events()[-2:]
    assert (purged.action, purged.detail["deleted"]) == ("images_purged", 3)
    assert (failed.action, failed.detail) == ("images_purge_failed", {"deleted": 1, "code": "store_unavailable"})
    monkeypatch.setattr(images, "delete", deleting)

    def unsweepable(started_before: datetime) -> int:  # the folder's own error, not the store's
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images, "sweep", unsweepable)
    with pytest.raises(StoreUnavailable, match="image store cannot be changed"):
        retention.purge_images(store, images, ADMIN, 90)
    assert store.audit_events()[-1].action == "images_purge_failed"


@pytest.mark.parametrize("kind", ["folder", "gridfs"])
def test_a_purge_while_another_runs_is_refused_before_it_claims_anything(store, tmp_path, kind) -> None:
    """Two purges at once (the Accounts page's and a scheduled command) each recorded every expired image as deleted
    by it: the trail claimed 120 deletions of 60 images."""
    from core.errors import StoreUnavailable
    from core.services import retention
    from core.storage.images import GridFSImages

    if kind == "folder":
        images = FolderImages(tmp_path / "images")
    else:  # the claim alone (mongomock has no GridFS bucket): the purge's own steps are tested with the folder
        import mongomock

        images = GridFSImages.__new__(GridFSImages)
        images._meta = mongomock.MongoClient(tz_aware=True)["btd_purge"]["meta"]
    events = len(store.audit_events())
    with images.purging(), pytest.raises(StoreUnavailable, match="Another purge of the stored images is running"):
        retention.purge_images(store, images, ADMIN, 90)  # another purge under way: refused before its event
    assert len(store.audit_events()) == events  # nothing claimed
    if kind == "folder":  # ended: the next one runs
        assert retention.purge_images(store, images, ADMIN, 90).deleted == 0
        assert store.audit_events()[-1].action == "images_purged"
    else:  # ended, or its purge died: the claim is free again once its lease is over
        from datetime import timedelta

        with images.purging():
            pass
        with images.purging():
            stale = {"$set": {"until": datetime.now(UTC) - timedelta(seconds=1), "token": "a dead purge's"}}
            images._meta.update_one({"_id": "images_purge"}, stale)
        images._meta.update_one({"_id": "images_purge"}, stale, upsert=True)
        with images.purging():
            pass


def test_a_purge_keeps_the_images_of_results_nobody_has_reviewed_until_they_are(store, tmp_path) -> None:
    """The purge deleted the worklist's oldest unread cases' images, which were then agreed with unseen."""
    import os

    from core.domain.people import Review
    from core.services import retention

    images = FolderImages(tmp_path / "images")
    unread, read = images.put(synthetic_slice(128, seed=1)), images.put(synthetic_slice(128, seed=2))
    past = datetime.now(UTC).timestamp() - 100 * 86400
    for key in (unread, read):
        os.utime(next((tmp_path / "images").glob(f"??/??/{key}.png")), (past, past))
    now = datetime.now(UTC)
    waiting, done = replace(make_record(1, now), image_key=unread), replace(make_record(2, now), image_key=read)
    store.add(waiting), store.add(done)
    store.add_review(Review(done.id, "dr", datetime.now(UTC), "agree", done.label, done.label))
    assert store.unread_image_keys() == {unread}
    assert retention.purge_images(store, images, ADMIN, 90) == retention.Purged(1, 1)
    assert images.stored_keys() == [unread]
    assert store.audit_events()[-1].detail == {"older_than_days": 90, "deleted": 1, "kept_unread": 1}
    store.add_review(Review(waiting.id, "dr", datetime.now(UTC), "agree", waiting.label, waiting.label))
    assert retention.purge_images(store, images, ADMIN, 90).deleted == 1 and images.stored_keys() == []


def test_a_purge_deletes_the_drafts_a_killed_writer_left_and_carries_on_past_an_image_another_purge_took(
    store, tmp_path, monkeypatch
) -> None:
    """A process killed between writing an image's draft and renaming it left de-identified pixels no purge
    looked at; an image another purge deleted between the listing and its date check crashed the Accounts page."""
    import os

    from core.services import retention

    images = FolderImages(tmp_path / "images")
    kept = images.put(synthetic_slice(128, seed=1))
    folder = next((tmp_path / "images").glob(f"??/??/{kept}.png")).parent
    draft, fresh = folder / f".{'0' * 64}.123.456.part", folder / f".{'1' * 64}.123.789.part"
    draft.write_bytes(b"pixels"), fresh.write_bytes(b"being written now")
    past = datetime.now(UTC).timestamp() - 2 * 3600
    os.utime(draft, (past, past))
    assert retention.purge_images(store, images, ADMIN, 30).deleted == 0
    assert not draft.exists() and fresh.exists() and images.stored_keys() == [kept]  # a write under way is kept
    listed = images.stored_keys

    def then_gone() -> list[str]:
        keys = listed()
        next((tmp_path / "images").glob(f"??/??/{kept}.png")).unlink()  # another purge, meanwhile
        return keys

    monkeypatch.setattr(images, "stored_keys", then_gone)
    assert images.expired(datetime.now(UTC)) == []


def test_an_image_saved_again_is_kept_a_whole_period_from_then_and_a_purge_that_cannot_be_audited_deletes_nothing(
    store, tmp_path, monkeypatch
) -> None:
    import os

    from core.errors import StoreUnavailable
    from core.services import retention

    images = FolderImages(tmp_path / "images")
    key = images.put(synthetic_slice(128, seed=3))
    past = datetime.now(UTC).timestamp() - 100 * 86400
    os.utime(next((tmp_path / "images").glob(f"??/??/{key}.png")), (past, past))
    assert images.put(synthetic_slice(128, seed=3)) == key  # a new model's result on the same pixels, day 100
    assert retention.purge_images(store, images, ADMIN, 90).deleted == 0 and images.stored_keys() == [key]
    os.utime(next((tmp_path / "images").glob(f"??/??/{key}.png")), (past, past))

    def broken(event):
        raise StoreUnavailable("The audit trail cannot be written.")

    monkeypatch.setattr(store, "append_audit", broken)
    with pytest.raises(StoreUnavailable):
        retention.purge_images(store, images, ADMIN, 90)
    assert images.stored_keys() == [key]  # nothing deleted unaudited


def test_the_last_enabled_admin_cannot_be_demoted_or_disabled(store, tmp_path, monkeypatch) -> None:
    """(From the command line: an admin in the app does not change their own account at all, below.)"""
    accounts.add_account(store, COMMAND_LINE, "root", "admin", PASSWORD)
    with pytest.raises(InvalidRecord, match="only enabled admin"):
        accounts.set_role(store, COMMAND_LINE, "root", "radiologist")
    with pytest.raises(InvalidRecord, match="only enabled admin"):
        accounts.set_disabled(store, COMMAND_LINE, "root")
    assert store.get_account("root").role == "admin" and not store.get_account("root").disabled
    accounts.add_account(store, COMMAND_LINE, "sso-admin", "admin", None)  # no password, single sign-on is off:
    with pytest.raises(InvalidRecord, match="only enabled admin"):  # nobody could sign in as it
        accounts.set_disabled(store, COMMAND_LINE, "root")
    secrets = tmp_path / "secrets.toml"
    monkeypatch.setenv("BTD_SECRETS", str(secrets))
    monkeypatch.setattr("core.config.authlib_installed", lambda: True)
    # single sign-on the sign-in page refuses (the example's cookie secret, or no Authlib) signs nobody in: the
    # password-less admin was counted as one who could, and the last admin with a password was disabled
    secrets.write_text('[auth]\nredirect_uri = "https://t.example/oauth2callback"\ncookie_secret = "REPLACE_ME"\n')
    with pytest.raises(InvalidRecord, match="only enabled admin"):
        accounts.set_disabled(store, COMMAND_LINE, "root")
    secrets.write_text(f'[auth]\nredirect_uri = "https://t.example/oauth2callback"\ncookie_secret = "{"q7" * 20}"\n')
    with monkeypatch.context() as patched:
        patched.setattr("core.config.authlib_installed", lambda: False)
        with pytest.raises(InvalidRecord, match="only enabled admin"):
            accounts.set_disabled(store, COMMAND_LINE, "root")
    accounts.set_disabled(store, COMMAND_LINE, "root")  # single sign-on usable: the other admin can sign in
    accounts.set_disabled(store, COMMAND_LINE, "root", False)
    accounts.add_account(store, COMMAND_LINE, "second", "admin", PASSWORD)
    accounts.set_role(store, COMMAND_LINE, "root", "radiologist")  # another admin remains: allowed
    assert store.get_account("root").role == "radiologist"


def test_an_admin_does_not_disable_or_re_role_themselves_and_a_change_that_changes_nothing_is_refused(
    store,
) -> None:
    """An admin could disable or demote their own account (signed out by their own change); a role "changed" to the
    same role, an unlock of an account that was not locked were audited as changes; "enable" on an enabled account
    ended its sign-in lock, audited only as "account_enabled"."""
    accounts.add_account(store, COMMAND_LINE, "root", "admin", PASSWORD)
    accounts.add_account(store, COMMAND_LINE, "second", "admin", PASSWORD)
    accounts.add_account(store, COMMAND_LINE, "dr-a", "radiologist", PASSWORD)
    events = len(store.audit_events())
    with pytest.raises(InvalidRecord, match="cannot disable your own account; ask another administrator"):
        accounts.set_disabled(store, ADMIN, "root")
    with pytest.raises(InvalidRecord, match="cannot change the role of your own account"):
        accounts.set_role(store, ADMIN, "Root", "radiologist")
    with pytest.raises(InvalidRecord, match="dr-a is radiologist already: nothing changed"):
        accounts.set_role(store, ADMIN, "dr-a", "radiologist")
    with pytest.raises(InvalidRecord, match="dr-a is enabled already"):
        accounts.set_disabled(store, ADMIN, "dr-a", False)
    with pytest.raises(InvalidRecord, match="not locked and has no failed sign-ins"):
        accounts.unlock(store, ADMIN, "dr-a")
    assert len(store.audit_events()) == events and store.get_account("root").role == "admin"
    for _ in range(accounts.MAX_FAILURES):
        with pytest.raises(SignInFailed):
            accounts.sign_in(store, "dr-a", "wrong password here")
    assert store.get_account("dr-a").locked_until is not None
    with pytest.raises(InvalidRecord, match="enabled already"):  # it ended the lock, unaudited as such
        accounts.set_disabled(store, ADMIN, "dr-a", False)
    assert store.get_account("dr-a").locked_until is not None
    accounts.unlock(store, ADMIN, "dr-a")
    accounts.set_disabled(store, Actor("second", "admin"), "root")  # another administrator does it
    assert store.get_account("root").disabled
    assert [e.action for e in store.audit_events()[events:]][-2:] == ["account_unlocked", "account_disabled"]


def test_an_open_session_follows_its_accounts_role_and_ends_when_it_is_disabled(store) -> None:
    accounts.add_account(store, COMMAND_LINE, "root", "admin", PASSWORD)
    accounts.add_account(store, COMMAND_LINE, "boss", "supervisor", PASSWORD)
    session = accounts.sign_in(store, "boss", PASSWORD)
    assert accounts.refreshed_actor(store, session) == session
    accounts.set_role(store, ADMIN, "boss", "radiologist")
    assert accounts.refreshed_actor(store, session) == Actor("boss", "radiologist")
    accounts.set_disabled(store, ADMIN, "boss")
    assert accounts.refreshed_actor(store, session) is None
    sso = Actor("someone@example.org", "supervisor", via="claim")  # a role from the identity provider's claim
    assert accounts.refreshed_actor(store, sso) == sso
    accounts.add_account(store, COMMAND_LINE, "eve", "admin", PASSWORD)
    eve = accounts.sign_in(store, "eve", PASSWORD)
    with sqlite3.connect(store.path) as connection:  # no service deletes an account: as a backup from before it
        connection.execute("DELETE FROM accounts WHERE name = 'eve'")
    assert accounts.refreshed_actor(store, eve) is None  # a password sign-in whose account is gone (a restore)


def test_enabling_a_disabled_account_again_does_not_bring_back_its_sessions(store) -> None:
    """A session left idle while its account was disabled and enabled again resumed (the check at its next
    interaction found the account enabled): a disable now ends the sessions signed in before it, for good."""
    accounts.add_account(store, COMMAND_LINE, "boss", "supervisor", PASSWORD)
    before = accounts.sign_in(store, "boss", PASSWORD)
    claims = {"email": "dr.y@hospital.example", "email_verified": True}
    accounts.add_account(store, COMMAND_LINE, "dr.y@hospital.example", "radiologist", None)
    sso_before = single_sign_on.external_actor(store, claims)
    for name in ("boss", "dr.y@hospital.example"):
        accounts.set_disabled(store, ADMIN, name)
        accounts.set_disabled(store, ADMIN, name, False)
    ended = store.get_account("boss").sessions_from
    assert ended is not None and accounts.refreshed_actor(store, before) is None
    assert accounts.refreshed_actor(store, sso_before) is None
    after = accounts.sign_in(store, "boss", PASSWORD)  # a new sign-in is a new session
    assert accounts.refreshed_actor(store, after) == after
    sso_after = single_sign_on.external_actor(store, claims)
    assert accounts.refreshed_actor(store, sso_after) == sso_after
    accounts.set_role(store, ADMIN, "boss", "radiologist")  # other changes keep the time of the last disable
    assert store.get_account("boss").sessions_from == ended
    assert accounts.refreshed_actor(store, after).role == "radiologist"


@pytest.mark.heavy
def test_parallel_sign_ins_check_no_more_passwords_than_the_lockout_allows(tmp_path: Path, monkeypatch) -> None:
    """8 threads x 5 wrong passwords once had all 40 checked (each read the count and wrote the account back):
    the count is claimed atomically in the database now."""
    import threading

    path = tmp_path / "results.sqlite3"
    accounts.add_account(SQLiteStore(path), COMMAND_LINE, "dr-a", "radiologist", PASSWORD)
    checked, errors, real_hash = [], [], SQLiteStore(path).get_account("dr-a").password_hash
    real = accounts._hasher()

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        def verify(self, stored, password):
            if stored == real_hash:
                checked.append(password)
            return real.verify(stored, password)

    monkeypatch.setattr(accounts, "_hasher", lambda: Counting())
    barrier = threading.Barrier(8)

    def attacker(k: int) -> None:
        store = SQLiteStore(path)  # each request its own connection, as the server's sessions have
        barrier.wait()
        for i in range(5):
            try:
                accounts.sign_in(store, "dr-a", f"guess {k}-{i}!")
                errors.append("signed in with a wrong password")
            except SignInFailed:
                pass
            except Exception as error:  # a thread's failure must fail the test
                errors.append(repr(error))

    threads = [threading.Thread(target=attacker, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(checked) == accounts.MAX_FAILURES
    assert SQLiteStore(path).get_account("dr-a").locked_until is not None


@pytest.mark.parametrize("kind", ["sqlite", "mongomock"])
def test_a_sign_in_attempt_is_claimed_atomically_in_either_store(tmp_path: Path, kind: str) -> None:
    from core.domain.people import Account

    if kind == "sqlite":
        store = SQLiteStore(tmp_path / "results.sqlite3")
    else:
        import mongomock

        from core.storage.mongo import MongoStore

        store = MongoStore(mongomock.MongoClient(tz_aware=True), collection="scans_people")
    now = datetime(2026, 12, 1, 9, tzinfo=UTC)
    store.insert_account(Account("dr-a", "radiologist", "x", created_at=now))
    assert [store.begin_sign_in("dr-a", now) for _ in range(3)] == [1, 2, 3]
    store.end_sign_in("dr-a", False, now + timedelta(minutes=15))
    assert store.begin_sign_in("dr-a", now + timedelta(minutes=1)) is None  # locked: nothing claimed
    assert store.begin_sign_in("dr-a", now + timedelta(minutes=16)) == 1  # the lock has passed
    store.end_sign_in("dr-a", True)
    assert store.get_account("dr-a").failed_count == 0 and store.begin_sign_in("nobody", now) is None


def test_a_supervisor_reads_the_audit_trail_without_any_results_verdicts_or_patients(store, tiny_classifier) -> None:
    """The Audit page once showed a supervisor each review's result id, reader and final label."""
    record = make_record(7, datetime(2026, 11, 30, 9, tzinfo=UTC), "glioma")
    store.add(record)
    reviews.review_result(store, RADIOLOGIST, record.id, "notumor", ["false_alarm"], "")
    accounts.add_account(store, COMMAND_LINE, "dr-b", "radiologist", PASSWORD)
    seen = audit.events(store, SUPERVISOR)
    review = next(e for e in seen if e.action == "review")
    assert review.target is None and review.detail == {} and review.actor == "dr-a"  # who and when, not what
    assert next(e for e in seen if e.action == "account_created").target == "dr-b"
    full = next(e for e in audit.events(store, ADMIN) if e.action == "review")
    assert full.target == record.id and full.detail  # the admin's export keeps everything
    assert "glioma" not in json.dumps([e.__dict__ for e in seen], default=str)


def tampered(tmp_path: Path, monkeypatch, change) -> dict:
    """A trail of five events written through the CLI's store, then ``change`` applied to the file by someone who
    holds it (triggers dropped); what ``audit verify`` says then."""
    from core.services.resources import open_results_store

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    store = open_results_store()
    for k in range(5):
        audit.record(store, ADMIN, "account_created", f"user-{k}")
    head = audit.verify(store).head
    noted = (head.seq, head.hash)
    database = sqlite3.connect(tmp_path / "data" / "results.sqlite3")
    for trigger in ("audit_append_only_update", "audit_append_only_delete"):
        database.execute(f"DROP TRIGGER {trigger}")
    change(database)
    database.commit()
    database.close()
    return {"plain": audit.verify(open_results_store()), "noted": audit.verify(open_results_store(), noted)}


@pytest.mark.parametrize(
    "case",
    [
        "delete the last",
        "delete the last three",
        "delete all",
        "edit and re-hash",
        "delete the last and its head",
        "edit, re-hash and unkey the head",
        "delete the last and unkey the head",
        "delete all and the head",
    ],
)
def test_audit_verify_finds_deleted_tails_and_edits_rehashed_without_the_key(tmp_path, monkeypatch, case) -> None:
    """Deleting the last 1, 10 or all events read "intact"; so did an edit re-hashed with the app's own hash."""
    import hashlib

    def rehash(database) -> None:  # the attacker recomputes the chain with the unkeyed hash the code once used
        from core.domain.people import AuditEvent, event_hash

        rows = database.execute("SELECT seq, at_ms, actor, role, action, target, detail FROM audit ORDER BY seq")
        previous = "0" * 64
        for seq, at_ms, actor, role, action, target, detail in rows.fetchall():
            event = AuditEvent(
                datetime.fromtimestamp(at_ms / 1000, UTC),
                "nobody" if seq == 3 else actor,
                role,
                action,
                target,
                json.loads(detail),
                previous,
                "",
                seq,
            )
            digest = event_hash(event)
            database.execute(
                "UPDATE audit SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (event.actor, previous, digest, seq),
            )
            previous = digest
        database.execute("UPDATE audit_head SET hash = ?", (previous,))
        assert hashlib.sha256(b"") is not None

    changes = {
        "delete the last": lambda db: db.execute("DELETE FROM audit WHERE seq = 5"),
        "delete the last three": lambda db: db.execute("DELETE FROM audit WHERE seq >= 3"),
        "delete all": lambda db: db.execute("DELETE FROM audit"),
        "edit and re-hash": rehash,
        "delete the last and its head": lambda db: (
            db.execute("DELETE FROM audit WHERE seq = 5"),
            db.execute("UPDATE audit_head SET seq = 4, hash = (SELECT hash FROM audit WHERE seq = 4)"),
        ),
        # the head's keyed_since set to 0 and its signature emptied switched the keyed checks off: read "intact"
        "edit, re-hash and unkey the head": lambda db: (
            rehash(db),
            db.execute("UPDATE audit_head SET keyed_since = 0, mac = ''"),
            db.execute("DELETE FROM audit_verified"),
        ),
        "delete the last and unkey the head": lambda db: (
            db.execute("DELETE FROM audit WHERE seq = 5"),
            db.execute("UPDATE audit_head SET seq = 4, hash = (SELECT hash FROM audit WHERE seq = 4)"),
            db.execute("UPDATE audit_head SET keyed_since = 0, mac = ''"),
            db.execute("DELETE FROM audit_verified"),
        ),
        "delete all and the head": lambda db: (
            db.execute("DELETE FROM audit"),
            db.execute("DELETE FROM audit_head"),
            db.execute("DELETE FROM audit_verified"),
        ),
    }
    if case == "delete all and the head":  # an account beside the trail: its creation was audited
        from core.services.resources import open_results_store

        monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
        accounts.add_account(open_results_store(), COMMAND_LINE, "dr-b", "radiologist", PASSWORD)
    found = tampered(tmp_path, monkeypatch, changes[case])
    assert not found["noted"].intact and found["noted"].problem  # against the head an operator noted: always
    assert not found["plain"].intact and found["plain"].problem


def test_audit_verify_finds_a_wiped_trail_beside_results_and_refuses_a_data_folder_without_a_database(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """A trail wiped with the accounts (results kept) read "intact"; so did a mistyped data folder, where the
    command made an empty database and its keys."""
    import shutil

    from core.services.resources import open_results_store

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    store = open_results_store()
    store.add(replace(make_record(3, datetime(2026, 11, 30, 9, tzinfo=UTC), "glioma"), image_key="a" * 64))
    audit.record(store, COMMAND_LINE, "upload", "r" * 64)
    database = sqlite3.connect(tmp_path / "data" / "results.sqlite3")
    database.execute("DROP TRIGGER audit_append_only_delete")
    for table in ("audit", "audit_head", "audit_verified"):
        database.execute(f"DELETE FROM {table}")
    database.commit()
    database.close()
    code, (line,) = run_cli(["audit", "verify"], capsys)
    assert code == 1 and not line["intact"] and "accounts or results" in line["problem"]
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "typo"))
    for command in (["audit", "verify"], ["users", "list"], ["users", "disable", "dr-a"], ["images", "purge"]):
        code, (line,) = run_cli(command, capsys)
        assert code == 2 and "no results database" in line["error"]["message"], command
    assert not (tmp_path / "typo").exists()  # no database, no key made there
    upgraded = tmp_path / "upgraded"  # results from before the trail began (version 2): nothing was removed
    upgraded.mkdir()
    shutil.copy(Path(__file__).parent / "data" / "results-v2.sqlite3", upgraded / "results.sqlite3")
    monkeypatch.setenv("BTD_DATA_DIR", str(upgraded))
    code, (line,) = run_cli(["audit", "verify"], capsys)
    assert code == 0 and line["intact"] and line["events"] == 0


def test_a_backup_that_fails_after_its_event_is_recorded_as_failed(tmp_path: Path, monkeypatch, capsys) -> None:
    """The store_backup event is written before the copy: a copy that failed left only "a backup was made"."""
    import shutil

    from core.services.resources import open_results_store

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    open_results_store().add(make_record(4, datetime(2026, 11, 30, 9, tzinfo=UTC), "glioma"))
    (tmp_path / "data" / "images").mkdir()

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copytree", full)
    code, (line,) = run_cli(["store", "backup", str(tmp_path / "backup")], capsys)
    assert code == 2 and "No space left" in line["error"]["message"]
    assert actions(open_results_store())[-2:] == ["store_backup", "store_backup_failed"]


@pytest.mark.parametrize("kind", ["sqlite", "mongomock"])
def test_a_review_and_its_audit_event_commit_together_or_the_reader_is_told_the_truth(
    tmp_path: Path, monkeypatch, kind: str
) -> None:
    """A crash between a review and its event left unaudited reviews (8 of 15 kills): SQLite commits both or
    neither. MongoDB writes them one after the other: the review stood, and the page said "Review not saved" (a
    press again was then refused as "another reader")."""
    from core.errors import StoreUnavailable, UnauditedChange

    if kind == "sqlite":
        store = SQLiteStore(tmp_path / "results.sqlite3")
    else:
        import mongomock

        from core.storage.mongo import MongoStore

        store = MongoStore(mongomock.MongoClient(tz_aware=True), collection="scans_unaudited")
    record = make_record(8, datetime(2026, 11, 30, 9, tzinfo=UTC), "glioma")
    store.add(record)

    def broken(event):
        raise StoreUnavailable("the audit write failed")

    monkeypatch.setattr(store, "append_audit", broken)
    if kind == "sqlite":
        with pytest.raises(StoreUnavailable) as refused:
            reviews.review_result(store, RADIOLOGIST, record.id, "notumor", ["false_alarm"], "", seen_reviews=0)
        assert not isinstance(refused.value, UnauditedChange)
        assert store.get(record.id).review_count == 0 and store.reviews_of(record.id) == []
        with pytest.raises(StoreUnavailable) as refused, store.atomic():  # inside a unit of work (the PACS's review
            reviews.review_result(store, RADIOLOGIST, record.id, "notumor", seen_reviews=0)  # and send): not "saved"
        assert not isinstance(refused.value, UnauditedChange) and store.get(record.id).review_count == 0
    else:
        with pytest.raises(UnauditedChange, match="review was saved, but its audit event could not be written"):
            reviews.review_result(store, RADIOLOGIST, record.id, "notumor", ["false_alarm"], "", seen_reviews=0)
        assert store.get(record.id).review_count == 1
    with pytest.raises(InvalidRecord, match=r"must be one of the model's labels"):  # refused before any write
        reviews.review_result(store, RADIOLOGIST, record.id, "banana")


@pytest.mark.parametrize("kind", ["sqlite", "mongomock"])
def test_an_account_or_a_patient_link_whose_audit_event_fails_is_not_left_standing(
    tmp_path: Path, monkeypatch, kind: str, tiny_classifier
) -> None:
    """MongoDB has no transaction: an admin account stood, unaudited, while its creator was told it failed (a retry
    said "exists already"); a re-upload's patient link stood unaudited, and the retry found nothing to do."""
    from core.errors import StoreUnavailable

    if kind == "sqlite":
        store = SQLiteStore(tmp_path / "results.sqlite3")
    else:
        import mongomock

        from core.storage.mongo import MongoStore

        store = MongoStore(mongomock.MongoClient(tz_aware=True), collection="scans_undo_creation")
    scan = png_bytes(synthetic_slice(256, tumour=True, seed=5))
    first = triage(scan, tiny_classifier, None, store, actor=RADIOLOGIST, patient_ref=None)
    real = store.append_audit

    def broken(event):
        if event.action in ("account_created", "patient_reference_set"):
            raise StoreUnavailable("the audit write failed")
        return real(event)

    monkeypatch.setattr(store, "append_audit", broken)
    with pytest.raises(StoreUnavailable):
        accounts.add_account(store, COMMAND_LINE, "eve", "admin", PASSWORD)
    assert store.get_account("eve") is None
    again = triage(scan, tiny_classifier, None, store, actor=RADIOLOGIST, patient_ref="e" * 64)
    assert again.status.state == "reference not updated" and store.get(first.record.id).patient_ref is None


def test_a_mongodb_audit_head_that_cannot_be_moved_leaves_the_written_event_and_its_change_standing(
    monkeypatch,
) -> None:
    """MongoDB writes the event, then the chain's head: a failure of the second raised, so the account was removed
    again while its "account_created" event stayed, recording a creation that did not stand. The event is written:
    the change stands, and the chain reads intact with its head one event behind (a crash's window)."""
    import mongomock
    from pymongo.errors import ConnectionFailure, OperationFailure

    from core.storage.mongo import MongoStore

    store = MongoStore(mongomock.MongoClient(tz_aware=True), collection="scans_head_lags")
    real = mongomock.collection.Collection.update_one
    failure = [ConnectionFailure("the server went away")]

    def unreachable(collection, query, *args, **kwargs):
        if query.get("_id") == "audit_head":
            raise failure[0]
        return real(collection, query, *args, **kwargs)

    with monkeypatch.context() as patched:  # the very first event's head: none at all, one event
        patched.setattr(mongomock.collection.Collection, "update_one", unreachable)
        accounts.add_account(store, COMMAND_LINE, "amy", "admin", PASSWORD)
        assert store.audit_head() is None and audit.verify(store).intact
    accounts.add_account(store, COMMAND_LINE, "bob", "admin", PASSWORD)  # moves it
    monkeypatch.setattr(mongomock.collection.Collection, "update_one", unreachable)
    failure[0] = OperationFailure("write concern not met", code=64)  # a refusal, not an outage: the same
    accounts.add_account(store, COMMAND_LINE, "eve", "radiologist", PASSWORD)
    assert store.get_account("eve") is not None
    assert [e.action for e in store.audit_events()] == ["account_created"] * 3
    assert store.audit_head().seq == 2
    assert audit.verify(store).intact


@pytest.mark.parametrize("kind", ["sqlite", "mongomock"])
def test_an_upload_whose_audit_event_fails_says_what_stood_and_its_retry_records_it(
    tmp_path: Path, monkeypatch, kind: str, tiny_classifier
) -> None:
    """MongoDB kept the result without its upload event while the page said "the result was not saved"."""
    from core.errors import StoreUnavailable

    if kind == "sqlite":
        store = SQLiteStore(tmp_path / "results.sqlite3")
    else:
        import mongomock

        from core.storage.mongo import MongoStore

        store = MongoStore(mongomock.MongoClient(tz_aware=True), collection="scans_unaudited_upload")
    real = store.append_audit

    def broken(event):
        raise StoreUnavailable("the audit write failed")

    monkeypatch.setattr(store, "append_audit", broken)
    images = FolderImages(tmp_path / "images")
    first = triage(png_bytes(synthetic_slice(256, seed=6)), tiny_classifier, None, store, actor=RADIOLOGIST,
                   patient_ref=None, images=images)  # fmt: skip
    assert first.status.state == NOT_SAVED
    stood = store.get(first.record.id) is not None
    assert stood == (kind == "mongomock")  # SQLite rolls the unit back
    assert ("was saved, its audit event was not" in first.status.message) == stood
    monkeypatch.setattr(store, "append_audit", real)
    retried = retry_save(first, store, images, None, RADIOLOGIST)
    assert retried.status.state in (SAVED, "already saved") and actions(store) == ["upload"]


def test_a_review_pressed_twice_is_saved_once_and_nobody_else_is_blamed(store) -> None:
    """The second press of one button (landing while the first one's rerun was under way) was refused as "Another
    reader reviewed this result meanwhile"."""
    record = make_record(33, datetime.now(UTC), "glioma")
    store.add(record)
    for _ in range(2):
        saved = reviews.review_result(store, RADIOLOGIST, record.id, "meningioma", ["wrong_type"], "", seen_reviews=0)
        assert saved.final_label == "meningioma" and saved.review_count == 1
    assert len(store.reviews_of(record.id)) == 1 and actions(store).count("review") == 1
    with pytest.raises(InvalidRecord, match="meanwhile"):  # another reader, or another label: still refused
        reviews.review_result(
            store, Actor("dr-b", "radiologist"), record.id, "meningioma", ["wrong_type"], "", seen_reviews=0
        )
    with pytest.raises(InvalidRecord, match="meanwhile"):
        reviews.review_result(store, RADIOLOGIST, record.id, "glioma", seen_reviews=0)


def test_a_result_is_never_saved_without_its_image_and_no_part_file_is_left(
    store, tiny_classifier, tmp_path, monkeypatch
) -> None:
    """A full disk once left a saved result with no image and a 0-byte .part file."""
    import errno
    import os

    images = FolderImages(tmp_path / "images")
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd, mode):
            self.handle = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", FullDisk)
    result = triage(
        png_bytes(synthetic_slice(256)),
        tiny_classifier,
        None,
        store,
        actor=RADIOLOGIST,
        patient_ref=None,
        images=images,
    )
    assert result.status.state == NOT_SAVED and "image could not be kept" in result.status.message
    assert "No space left" in result.status.message and store.summary().total == 0
    assert not list((tmp_path / "images").rglob("*.part")) and not list((tmp_path / "images").rglob("*.png"))


def test_an_account_change_that_cannot_be_audited_is_not_made(tmp_path: Path, monkeypatch) -> None:
    from core.errors import StoreUnavailable

    store = SQLiteStore(tmp_path / "results.sqlite3")
    accounts.add_account(store, COMMAND_LINE, "dr-a", "radiologist", PASSWORD)
    before = store.get_account("dr-a")

    def broken(event):
        raise StoreUnavailable("the audit write failed")

    monkeypatch.setattr(store, "append_audit", broken)
    for change in (
        lambda: accounts.set_role(store, ADMIN, "dr-a", "supervisor"),
        lambda: accounts.set_disabled(store, ADMIN, "dr-a"),
        lambda: accounts.set_password(store, ADMIN, "dr-a", PASSWORD + "-new"),
        lambda: accounts.add_account(store, ADMIN, "dr-b", "radiologist", PASSWORD),
    ):
        with pytest.raises(StoreUnavailable):
            change()
    assert store.get_account("dr-a") == before and store.get_account("dr-b") is None


class Racing:
    """The password hasher, with ``meanwhile`` run while a password is checked (another session's change) and a
    stored hash that always asks to be made stronger."""

    def __init__(self, real, meanwhile) -> None:
        self.real, self.meanwhile = real, meanwhile

    def verify(self, stored, password):
        self.meanwhile()
        return self.real.verify(stored, password)

    def check_needs_rehash(self, stored):
        return True

    def hash(self, password):
        return self.real.hash(password)


def test_a_disable_during_a_sign_in_is_neither_reverted_nor_let_through(store, monkeypatch) -> None:
    """An admin disables an account while its sign-in checks the password (and the stored hash needs a stronger
    one): the sign-in used to write back the row it read first, re-enabling the account."""
    from core.errors import SignInFailed

    accounts.add_account(store, COMMAND_LINE, "root", "admin", PASSWORD)
    accounts.add_account(store, ADMIN, "dr-x", "radiologist", PASSWORD)
    racing = Racing(accounts._hasher(), lambda: accounts.set_disabled(store, Actor("root", "admin"), "dr-x"))
    monkeypatch.setattr(accounts, "_hasher", lambda: racing)
    with pytest.raises(SignInFailed):
        accounts.sign_in(store, "dr-x", PASSWORD)
    assert store.get_account("dr-x").disabled


def test_a_password_reset_during_a_sign_in_with_the_old_password_refuses_it(store, monkeypatch) -> None:
    from core.errors import SignInFailed

    accounts.add_account(store, COMMAND_LINE, "root", "admin", PASSWORD)
    accounts.add_account(store, ADMIN, "dr-y", "radiologist", PASSWORD)
    real = accounts._hasher()
    racing = Racing(real, lambda: accounts.set_password(store, Actor("root", "admin"), "dr-y", "a brand new password"))
    monkeypatch.setattr(accounts, "_hasher", lambda: racing)
    with pytest.raises(SignInFailed):
        accounts.sign_in(store, "dr-y", PASSWORD)
    monkeypatch.setattr(accounts, "_hasher", lambda: real)
    assert accounts.sign_in(store, "dr-y", "a brand new password").name == "dr-y"  # the reset stands


def test_a_purge_keeps_an_image_saved_again_after_it_was_listed(tmp_path) -> None:
    import os

    images = FolderImages(tmp_path / "images")
    key = images.put(synthetic_slice(128, seed=5))
    past = datetime.now(UTC).timestamp() - 100 * 86400
    os.utime(next((tmp_path / "images").glob(f"??/??/{key}.png")), (past, past))
    cutoff = datetime.now(UTC) - timedelta(days=90)
    assert images.expired(cutoff) == [key]
    images.put(synthetic_slice(128, seed=5))  # saved again while the purge was running
    assert images.delete(key, stored_before=cutoff) is False and images.stored_keys() == [key]


def test_a_scan_uploaded_again_with_a_reference_gets_it_when_it_had_none_and_keeps_another_patients(
    store, tiny_classifier
) -> None:
    """Saved without a reference, then uploaded again with one: 'already saved' used to drop the reference, so the
    patient's History stayed empty; one saved under another patient's reference is never relinked silently."""
    scan = png_bytes(synthetic_slice(256, tumour=True))
    first = triage(scan, tiny_classifier, None, store, actor=RADIOLOGIST, patient_ref=None)
    again = triage(scan, tiny_classifier, None, store, actor=RADIOLOGIST, patient_ref="a" * 64)
    assert again.status.state == "already saved"
    assert store.get(first.record.id).patient_ref == "a" * 64 and again.record.patient_ref == "a" * 64
    other = triage(scan, tiny_classifier, None, store, actor=RADIOLOGIST, patient_ref="b" * 64)
    assert store.get(first.record.id).patient_ref == "a" * 64 and other.record.patient_ref == "a" * 64
    assert "another patient reference" in other.status.message
    linked = [e.detail for e in store.audit_events() if e.action == "patient_reference_set"]
    assert linked == [{"cleared": False, "previous": None, "new": "a" * 64}]  # traced, and undone, from the trail
    for typed in ("c" * 64, None):  # then the field is edited or cleared: that patient's result stays theirs
        other = apply_patient_reference(other, store, typed, RADIOLOGIST)
        assert (
            store.get(first.record.id).patient_ref == "a" * 64 and "another patient reference" in other.status.message
        )
    blank = triage(scan, tiny_classifier, None, store, actor=RADIOLOGIST, patient_ref=None)  # uploaded, none typed
    assert blank.record.patient_ref == "a" * 64 and "kept" in blank.status.message
    apply_patient_reference(blank, store, "c" * 64, RADIOLOGIST)  # then one typed: never moves it either
    assert store.get(first.record.id).patient_ref == "a" * 64


def test_a_stale_session_never_moves_a_result_another_session_linked_to_its_patient(store, tiny_classifier) -> None:
    """Alice saved it with no reference; Bob's upload linked it to his patient; Alice then typed hers: her session
    still saw no reference, and the result moved from Bob's patient's History to hers."""
    scan = png_bytes(synthetic_slice(256, tumour=True, seed=8))
    alice = triage(scan, tiny_classifier, None, store, actor=RADIOLOGIST, patient_ref=None)
    bob = triage(scan, tiny_classifier, None, store, actor=Actor("dr-b", "radiologist"), patient_ref="b" * 64)
    assert bob.status.state == "already saved" and store.get(alice.record.id).patient_ref == "b" * 64
    typed = apply_patient_reference(alice, store, "a" * 64, RADIOLOGIST)
    assert store.get(alice.record.id).patient_ref == "b" * 64  # kept Bob's patient's
    assert typed.status.others and "another patient reference" in typed.status.message
    assert typed.record.patient_ref == "b" * 64
    assert [e.action for e in store.audit_events()].count("patient_reference_set") == 1  # Bob's link only


def test_a_stale_panel_never_replaces_a_colleagues_review_and_a_refused_image_is_overridden_only(store) -> None:
    record = make_record(31, datetime.now(UTC), "glioma")
    store.add(record)
    reviews.review_result(
        store, Actor("dr-b", "radiologist"), record.id, "meningioma", ["wrong_type"], "", seen_reviews=0
    )
    with pytest.raises(InvalidRecord, match="meanwhile"):  # Alice's panel still showed no review
        reviews.review_result(store, RADIOLOGIST, record.id, "glioma", seen_reviews=0)
    assert store.get(record.id).final_label == "meningioma" and len(store.reviews_of(record.id)) == 1
    assert [e.action for e in store.audit_events()].count("review") == 1  # nothing audited for the refused one
    reviews.review_result(store, RADIOLOGIST, record.id, "glioma", seen_reviews=1)  # looked again: hers is saved
    assert store.get(record.id).final_label == "glioma"
    refused = replace(make_record(32, datetime.now(UTC), "notumor"), gate="rejected")
    store.add(refused)
    # its hidden class is nothing to agree with: an override, with or without a reason (a reason was demanded for
    # that one label only, a rule the reader could not see: the class is never shown)
    saved = reviews.review_result(store, RADIOLOGIST, refused.id, "notumor")
    assert (saved.review_verdict, saved.final_label, saved.disagrees) == ("override", "notumor", False)
    saved = reviews.review_result(store, RADIOLOGIST, refused.id, "notumor", ["image_unsuitable"])
    assert (saved.review_verdict, saved.final_label) == ("override", "notumor")
    # its event names no class of the model's either (it read "model_label": "notumor", where every screen says
    # a refused image has none)
    events = [e for e in store.audit_events() if e.action == "review"]
    assert [e.detail["model_label"] for e in events] == ["glioma", "glioma", None, None]


def test_a_reference_link_that_failed_on_a_re_upload_is_applied_by_the_retry(
    store, tiny_classifier, monkeypatch
) -> None:
    from core.errors import StoreUnavailable

    scan = png_bytes(synthetic_slice(256, tumour=True, seed=4))
    first = triage(scan, tiny_classifier, None, store, actor=RADIOLOGIST, patient_ref=None)
    real = store.set_patient_ref

    def down(*args, **kwargs):
        raise StoreUnavailable("locked")

    monkeypatch.setattr(store, "set_patient_ref", down)
    again = triage(scan, tiny_classifier, None, store, actor=RADIOLOGIST, patient_ref="e" * 64)
    assert again.status.state == "reference not updated" and store.get(first.record.id).patient_ref is None
    monkeypatch.setattr(store, "set_patient_ref", real)
    retried = retry_save(again, store, None, "e" * 64, RADIOLOGIST)
    assert retried.status.state == SAVED and store.get(first.record.id).patient_ref == "e" * 64


def test_a_worklist_filtered_to_one_patient_is_an_audit_event_under_the_keyed_reference(store) -> None:
    """History's read of a patient is audited; the Worklist's patient filter listed the same results unaudited."""
    from dataclasses import replace

    record = replace(make_record(1, datetime(2026, 1, 1, tzinfo=UTC)), patient_ref="d" * 64)
    store.add(record)
    query = WorklistQuery(reviewed=None, patient_ref="d" * 64)
    assert [r.id for r in reviews.worklist(store, RADIOLOGIST, query)] == [record.id]
    assert reviews.worklist(store, RADIOLOGIST, query, seen={record.id})  # the page's later reruns
    assert reviews.worklist(store, RADIOLOGIST, query, audited=False)  # a probe that shows nothing
    assert reviews.worklist(store, RADIOLOGIST, WorklistQuery(reviewed=None))  # no patient: nothing to audit
    events = [(e.action, e.target, e.detail) for e in store.audit_events()]
    assert events == [("worklist_patient", "d" * 64, {"results": 1})]


def test_two_admins_disabling_each_other_at_once_on_mongodb_leave_one_enabled() -> None:
    """MongoDB has no transaction: each admin's check saw the other still enabled, and both disables landed,
    leaving nobody who could manage accounts from the app."""
    import mongomock

    from core.storage.mongo import MongoStore

    store = MongoStore(mongomock.MongoClient(tz_aware=True), collection="scans_race")
    accounts.add_account(store, COMMAND_LINE, "a1", "admin", PASSWORD)
    accounts.add_account(store, COMMAND_LINE, "a2", "admin", PASSWORD)
    update, raced = store.update_account, []

    def racing(name, changes, expected):  # a1's disable of a2 lands between a2's check and its write
        if name == "a1" and changes.get("disabled") and not raced:
            raced.append(1)
            accounts.set_disabled(store, Actor("a1", "admin"), "a2")
        return update(name, changes, expected)

    store.update_account = racing
    with pytest.raises(InvalidRecord, match="only enabled admin"):
        accounts.set_disabled(store, Actor("a2", "admin"), "a1")
    enabled = [a.name for a in store.accounts() if a.role == "admin" and not a.disabled]
    assert enabled == ["a1"] and [e.action for e in store.audit_events()].count("account_disabled") == 1


def test_a_result_not_saved_keeps_the_reference_it_was_analysed_under_when_the_next_patients_is_typed(
    store, tmp_path, tiny_classifier, monkeypatch
) -> None:
    """Patient A's scan, not saved (the database down), was saved by the retry under patient B's reference typed
    meanwhile: A's result in B's History."""
    from core.errors import StoreUnavailable

    scan = png_bytes(synthetic_slice(256, tumour=True, seed=8))
    real = store.add

    def down(record):
        raise StoreUnavailable("locked")

    monkeypatch.setattr(store, "add", down)
    unsaved = triage(scan, tiny_classifier, None, store, actor=RADIOLOGIST, patient_ref="a" * 64)
    assert unsaved.status.state == NOT_SAVED and unsaved.record.patient_ref == "a" * 64
    monkeypatch.setattr(store, "add", real)
    retried = retry_save(unsaved, store, FolderImages(tmp_path / "images"), "b" * 64, RADIOLOGIST)  # B typed since
    assert retried.status.state == SAVED and store.get(retried.record.id).patient_ref == "a" * 64


def test_a_result_that_fails_its_own_checks_is_not_saved_and_the_batch_goes_on(
    store, tmp_path, tiny_classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record was built and checked outside any handler: one result that failed its checks ended the page's
    batch (a traceback) and the command line's `predict --save` batch."""
    from core.errors import InvalidRecord
    from core.services import triage as triage_service
    from core.services.triage import analyse_upload, save

    def refused(*args, **kwargs):
        raise InvalidRecord("Record refused: probabilities must add up to 1.")

    analysis = analyse_upload(png_bytes(synthetic_slice(256)), tiny_classifier).analysis
    monkeypatch.setattr(triage_service, "new_record", refused)
    images = FolderImages(tmp_path / "images")
    status = save(analysis, store, actor=RADIOLOGIST, patient_ref=None, images=images)
    assert status.state == NOT_SAVED and "probabilities" in status.message
    scan = png_bytes(synthetic_slice(256))
    shown = triage(scan, tiny_classifier, None, store, actor=RADIOLOGIST, patient_ref=None, images=images)
    assert shown.error_code == "invalid_record"  # one wording on the page and the command line
    assert (
        shown.error_message == status.message == "Record refused: probabilities must add up to 1. (nothing was saved)"
    )
    assert store.summary().total == 0 and not store.audit_events() and not images.stored_keys()  # no image left


def test_a_single_sign_on_session_keeps_to_where_its_role_came_from(store) -> None:
    """A stale local account of an identity's name gave every run after sign-in its role, over the claim's: someone
    taken out of the admin group stayed admin."""
    accounts.add_account(store, COMMAND_LINE, "dr.x@hospital.example", "admin", None)
    claims = {"email": "dr.x@hospital.example", "email_verified": True, "groups": ["radiologist"]}
    claimed = single_sign_on.external_actor(store, claims, "groups")
    assert claimed.role == "radiologist" and claimed.via == "claim"
    assert accounts.refreshed_actor(store, claimed).role == "radiologist"  # not the local account's admin
    accounts.set_disabled(store, COMMAND_LINE, "dr.x@hospital.example")
    assert accounts.refreshed_actor(store, claimed) is None  # its sign-in would be refused now
    accounts.add_account(store, COMMAND_LINE, "dr.y@hospital.example", "radiologist", None)
    local = single_sign_on.external_actor(store, {"email": "dr.y@hospital.example", "email_verified": True})
    assert local.via == "account" and accounts.refreshed_actor(store, local) == local
    accounts.set_role(store, COMMAND_LINE, "dr.y@hospital.example", "supervisor")
    assert accounts.refreshed_actor(store, local).role == "supervisor"  # follows the account it came from
    accounts.set_password(store, COMMAND_LINE, "dr.y@hospital.example", PASSWORD)
    assert accounts.refreshed_actor(store, local) is None  # a password account's name is not single sign-on's


def test_an_account_name_that_differs_from_another_only_in_case_is_refused(store) -> None:
    """ "alice" and "Alice" were two accounts: two look-alike names in the trail, and "users disable ALICE" found
    neither."""
    accounts.add_account(store, COMMAND_LINE, "alice", "admin", PASSWORD)
    with pytest.raises(InvalidRecord, match="alice exists already"):
        accounts.add_account(store, COMMAND_LINE, "Alice", "radiologist", PASSWORD)
    assert [a.name for a in store.accounts()] == ["alice"] and actions(store) == ["account_created"]
    for look_alike in ("\u0430lice", "\uff41lice", "ALİCE"):  # a Cyrillic a, a full-width a, a dotted I
        with pytest.raises(InvalidRecord, match="ASCII letters"):  # each read as "alice" in the audit trail
            accounts.add_account(store, COMMAND_LINE, look_alike, "radiologist", PASSWORD)
    assert [a.name for a in store.accounts()] == ["alice"]


def test_two_names_differing_only_in_case_created_at_once_make_one_account(store, monkeypatch) -> None:
    """Each creation checked for its twin before its seconds of password hashing, the other's insert after: both
    "DrJones" and "drjones" were created when two admins (or a page and the command line) made them at once."""
    import threading

    real, both_hashing = accounts._hasher, threading.Barrier(2)

    class Slow:
        def hash(self, password: str) -> str:
            both_hashing.wait(timeout=10)  # each has passed its first check before either inserts
            return real().hash(password)

    monkeypatch.setattr(accounts, "_hasher", Slow)
    refused = []

    def create(name: str) -> None:
        try:
            accounts.add_account(SQLiteStore(store.path), COMMAND_LINE, name, "radiologist", PASSWORD)
        except InvalidRecord as error:
            refused.append(str(error))

    threads = [threading.Thread(target=create, args=(name,)) for name in ("DrJones", "drjones")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.accounts()) == 1 and len(refused) == 1 and "differ only in case" in refused[0]


def test_the_audit_trails_own_names_are_not_account_names(store) -> None:
    for name in ("cli", "unknown", "CLI"):
        with pytest.raises(
            InvalidRecord, match="reserved: the audit trail names the command line and failed sign-ins cli and unknown"
        ):
            accounts.add_account(store, COMMAND_LINE, name, "radiologist", PASSWORD)  # it quoted a Python tuple
    with pytest.raises(SignInFailed, match="reserved"):
        single_sign_on.external_actor(store, {"sub": "cli", "groups": ["admin"]}, "groups")
    assert store.accounts() == []


def test_an_admin_unlocks_an_account_someone_keeps_locked(store, tmp_path, monkeypatch) -> None:
    accounts.add_account(store, COMMAND_LINE, "root", "admin", PASSWORD)
    for _ in range(accounts.MAX_FAILURES):
        with pytest.raises(SignInFailed):
            accounts.sign_in(store, "root", "someone else's guess")
    with pytest.raises(AccountLocked):
        accounts.sign_in(store, "root", PASSWORD)
    with pytest.raises(AccessDenied):
        accounts.unlock(store, RADIOLOGIST, "root")
    from core.cli.main import main

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    from core.config import audit_key

    store.audit_key = audit_key({}, shared_database=False)  # the data folder's, as the command line's and the app's
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["users", "unlock", "root"]) == 0
    assert json.loads(out.getvalue())["updated"]["locked_until"] is None
    assert accounts.sign_in(store, "root", PASSWORD).role == "admin"
    assert "account_unlocked" in actions(store)


def test_every_refused_sign_in_takes_the_same_time(store, monkeypatch) -> None:
    """An unknown name made no store write, a known one a committed write: the refusal's time told which names
    exist. Each refusal now ends no sooner than REFUSAL_SECONDS after it began."""
    import time

    monkeypatch.setattr(accounts, "REFUSAL_SECONDS", 0.4)
    accounts.add_account(store, COMMAND_LINE, "dr-a", "radiologist", PASSWORD)
    for name in ("dr-a", "nobody-here"):
        began = time.monotonic()
        with pytest.raises(SignInFailed):
            accounts.sign_in(store, name, "not the password")
        assert time.monotonic() - began >= 0.4


@pytest.mark.parametrize("kind", ["sqlite", "mongomock"])
def test_an_account_change_whose_audit_event_cannot_be_written_is_undone(
    tmp_path: Path, kind: str, monkeypatch
) -> None:
    """On MongoDB (no transaction) a promotion to admin stood while the admin was told it failed, unaudited."""
    from core.errors import StoreUnavailable

    if kind == "sqlite":
        store = SQLiteStore(tmp_path / "results.sqlite3")
    else:
        import mongomock

        from core.storage.mongo import MongoStore

        store = MongoStore(mongomock.MongoClient(tz_aware=True), collection="scans_undo")
    accounts.add_account(store, COMMAND_LINE, "eve", "radiologist", PASSWORD)

    def broken(*args, **kwargs):
        raise StoreUnavailable("The audit trail cannot be written.")

    monkeypatch.setattr(store, "append_audit", broken)
    for change in (
        lambda: accounts.set_role(store, ADMIN, "eve", "admin"),
        lambda: accounts.set_disabled(store, ADMIN, "eve"),
        lambda: accounts.set_password(store, ADMIN, "eve", "another long password"),
    ):
        with pytest.raises(StoreUnavailable):
            change()
    eve = store.get_account("eve")
    assert eve.role == "radiologist" and not eve.disabled
    monkeypatch.undo()
    assert accounts.sign_in(store, "eve", PASSWORD).role == "radiologist"  # the old password still


def test_a_patient_reference_whose_audit_event_cannot_be_written_is_set_back_on_mongodb(monkeypatch) -> None:
    import mongomock

    from core.errors import StoreUnavailable
    from core.storage.mongo import MongoStore

    store = MongoStore(mongomock.MongoClient(tz_aware=True), collection="scans_reference")
    saved = saved_upload(store)
    store.add(saved.record)

    def broken(*args, **kwargs):
        raise StoreUnavailable("The audit trail cannot be written.")

    monkeypatch.setattr(store, "append_audit", broken)
    after = apply_patient_reference(saved, store, "a" * 64, RADIOLOGIST)
    assert "not updated" in after.status.message
    assert store.get(saved.record.id).patient_ref is None  # it stood, linked to a patient unaudited


def test_a_purge_never_deletes_an_image_saved_again_while_it_deletes(tmp_path, monkeypatch) -> None:
    """The age was checked, then the file unlinked: the same pixels saved in between were deleted, and a result saved
    a moment before opened as "no longer kept"."""
    import os

    from core.storage import images as image_module

    images = FolderImages(tmp_path / "images")
    pixels = synthetic_slice(128, seed=6)
    key = images.put(pixels)
    past = datetime.now(UTC).timestamp() - 100 * 86400
    os.utime(next((tmp_path / "images").glob(f"??/??/{key}.png")), (past, past))
    real = os.rename

    def saved_meanwhile(source, target):
        real(source, target)
        images.put(pixels)  # a save lands just as the purge takes the old file

    monkeypatch.setattr(image_module.os, "rename", saved_meanwhile)
    assert images.delete(key, stored_before=datetime.now(UTC) - timedelta(days=90))
    monkeypatch.setattr(image_module.os, "rename", real)
    assert images.get(key) is not None and images.stored_keys() == [key]  # the fresh copy stays
    assert not list((tmp_path / "images").rglob(".*.purge"))


def test_the_final_labels_offered_are_each_offered_once() -> None:
    """A binary card's own "tumour" is the label "tumour, type uncertain" is kept under: it was offered twice."""
    from core.services.reviews import review_labels

    assert review_labels(("notumor", "tumour")) == ["notumor", "tumour"]
    assert review_labels(("glioma", "notumor")) == ["glioma", "notumor", "tumour"]


def test_sign_ins_sent_at_once_never_run_more_than_two_password_checks_together(store, monkeypatch) -> None:
    """Every refusal runs a full Argon2 check (64 MiB, 150 ms), an unknown name's too: 32 sent at once by anyone
    who could reach the form took the server past 2 GB."""
    import threading
    import time

    import argon2

    from core.services import passwords

    running, most, lock = [0], [0], threading.Lock()

    class Counting:
        def verify(self, hashed: str, password: str) -> bool:
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1
            raise argon2.exceptions.VerifyMismatchError

        def hash(self, password: str) -> str:
            return "$argon2id$fake"

    monkeypatch.setattr(argon2, "PasswordHasher", Counting)
    monkeypatch.setattr(accounts, "_dummy_hash", lambda: "$argon2id$fake")  # the real one stays cached for others
    refused: list[str] = []

    def attempt(n: int) -> None:
        try:
            accounts.sign_in(SQLiteStore(store.path), f"nobody-{n}", "a wrong password")
        except SignInFailed as error:
            refused.append(str(error))

    threads = [threading.Thread(target=attempt, args=(n,), daemon=True) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(refused) == 8 and len(set(refused)) == 1  # each refused, in the same words
    assert 1 <= most[0] <= passwords.AT_ONCE == 2


def test_a_password_set_on_a_single_sign_on_account_says_that_its_sign_in_changed(tmp_path, capsys, monkeypatch):
    """The account silently became a password account (its identity then gets no entry), and neither the command's
    output nor the audit event said so."""
    from core.config import audit_key
    from core.storage import open_store

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    assert run_cli(["users", "add", "dr@example.org", "--role", "radiologist", "--sso"], capsys)[0] == 0
    code, (line,) = run_cli(["users", "set-password", "dr@example.org", "--password-stdin"], capsys, PASSWORD + "\n")
    assert code == 0 and line["updated"]["sign_in"] == "password" and "single sign-on" in line["note"]
    code, (line,) = run_cli(["users", "set-password", "dr@example.org", "--password-stdin"], capsys, PASSWORD + "\n")
    assert code == 0 and "note" not in line  # a password account's reset: nothing changed in how it signs in
    store = open_store(None, tmp_path / "data", audit_key({}, shared_database=False))
    events = [e.detail for e in store.audit_events() if e.action == "account_password_set"]
    user = {"os_user": pwd.getpwuid(os.geteuid()).pw_name}  # the command line's events name who ran it
    assert events == [{"temporary": False, "was": "single sign-on"} | user, {"temporary": False} | user]


def test_an_admin_sets_their_own_password_in_the_sidebar_not_as_another_account(store) -> None:
    """Reset on the Accounts page, an admin's own password signed them out with "An administrator disabled your
    account or set its password", and it asked nothing of the current one (as Change my password does)."""
    accounts.add_account(store, COMMAND_LINE, "root", "admin", PASSWORD)
    before = store.get_account("root")
    with pytest.raises(InvalidRecord, match="Change my password in the sidebar"):
        accounts.set_password(store, Actor("ROOT", "admin"), "root", "an entirely new passphrase")
    assert store.get_account("root").password_hash == before.password_hash
    accounts.add_account(store, COMMAND_LINE, "dr-a", "radiologist", PASSWORD)
    accounts.set_password(store, ADMIN, "dr-a", "an entirely new passphrase")  # another account's: as before
    assert store.get_account("dr-a").must_change is False
