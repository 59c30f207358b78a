"""Watching the PACS: each study that became stable on the PACS's change feed is pulled, analysed, saved and (when
asked) reported back once, as :mod:`core.services.pacs` does for one study; a study the PACS failed to give is
tried again by the next watch, never dropped, and one whose MR images changed is analysed again.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.domain.people import AuditQuery
from core.errors import (
    NoBrainFound,
    PacsError,
    PacsFeedWentBack,
    PacsForbidden,
    PacsMalformed,
    PacsNotFound,
    PacsRefused,
    PacsTimedOut,
    PacsUnreachable,
    StoreError,
    WatchStateMissing,
    WatchStateUnwritable,
    WrongBodyPart,
    WrongModality,
)
from core.imaging.volume import OnlyLocalizers
from core.model.classifier import Classifier
from core.pacs import objects
from core.pacs.changes import OrthancChanges
from core.pacs.client import Pacs
from core.services import audit
from core.services.access import ANALYSE, PACS, Actor, require
from core.services.pacs import (
    FINGERPRINT,
    SENT,
    mr_fingerprint,
    pacs_patient_id,
    patient_reference,
    pull_and_analyse,
    send_results,
    series_only,
    study_reference,
)
from core.services.pacs_watch_state import LEGACY, WatchState
from core.services.studies import NOT_SAVED, save_study_statuses
from core.storage.images import ImageStore
from core.storage.protocol import AuditTrail, Store

logger = logging.getLogger("btd.pacs")


def open_state(
    path: Path, key: bytes | None, store: AuditTrail, actor: Actor, first: Callable[[], int] | None = None
) -> WatchState:
    """The watch's state at ``path``; a first start goes on after change ``first()`` (the feed's last, a watch
    begun from now), or reads the PACS's whole change log. No file is a first start only when this database's watch
    never started (the
    file written at once, then an audit event, so that a watch failing before its first study is not mistaken for
    one whose file went): restored from a backup without it, or deleted, the watch went through the PACS's whole
    history again (every study pulled, purged images stored again, reports sent again). A watch that ran before
    this event existed records it at its next start, from where its file says. A watch that never read the change
    feed (its first start failed: a mistyped port) still begins from ``first()``: ``--from-now`` on the retry was
    ignored, and the watch went through the PACS's whole history. One that read it, an empty one included, goes on
    from where it stood (a unit that always passes ``--from-now`` skipped the studies sent while it was down)."""
    started = store.count_audit(AuditQuery(action=STARTED)) > 0
    if path.exists():
        state = WatchState.load(path, key)
        if first is not None and state.last == 0 and not (state.read or state.handled or state.tries):
            state.save(last := first())
            audit.record(store, actor, STARTED, last=last)
        elif not started:
            audit.record(store, actor, STARTED, last=state.last)
        return state
    if started:
        raise WatchStateMissing(
            f"The watch's state file ({path.name} in the data folder) is missing, but this database's watch has run "
            "before: restore the file from the backup of this data folder, or write one holding "
            '{"last": N}, N the PACS change to go on after (0 goes through its whole history again).'
        )
    state, last = WatchState(path, key=key), first() if first is not None else 0
    state.save(last)  # first: an event recorded and a file then not written (a full disk) refused every later start
    audit.record(store, actor, STARTED, last=last)  # failing, the next start finds the file and records it then
    return state


STARTED = "pacs_watch_started"  # the watch's first start on a database, and the change it started after


@dataclass(frozen=True)
class Watcher:
    """What a watch needs: the PACS, its change feed, the model, the database and what to do with a result."""

    pacs: Pacs
    changes: OrthancChanges
    classifier: Classifier
    store: Store
    images: ImageStore | None
    key: bytes | None
    send: bool = False


STORE_DOWN = "store_unavailable"
UNDELIVERED = frozenset({PacsUnreachable.code, PacsTimedOut.code})  # no answer, an answer broken off, "busy"
# the PACS did not answer, or failed (HTTP 5xx), or answered what is not DICOMweb: the study is tried again by the
# next watch; a refused user name or password is waited out as an outage is (it left every study behind for good)
RETRIED = UNDELIVERED | {PacsRefused.code, PacsForbidden.code, PacsError.code, PacsMalformed.code, STORE_DOWN}
# a study the PACS answers with an error (not an outage) MAX_TRIES watches in a row is left behind, so that it does
# not hold back every study after it in the feed: a server error (HTTP 5xx) or an answer that is not DICOMweb over
# GIVE_UP_AFTER_S too (counted in watches alone, a PACS restarting, HTTP 500 for under a minute, dropped the study
# at the head of the feed from triage for good); a refusal to store our report (HTTP 403) at once: no passing
# state (a longer wait had every study pulled and audited every ten seconds). A study the PACS does not deliver
# (UNDELIVERED) after answering its search that very watch is stuck, the PACS up (a retrieval that times out or
# breaks off every time held back every later study for ever): left behind after STUCK_AFTER_S. An outage, the
# search unanswered too, is waited out however long it lasts; so is a report the PACS does not take.
MAX_TRIES = 5
GIVE_UP_AFTER_S = 10 * 60
STUCK_AFTER_S = 60 * 60


def clock() -> float:
    return time.time()


def watch_once(watcher: Watcher, state: WatchState, actor: Actor) -> list[dict[str, Any]]:
    """Handle every study that became stable since the last change handled: analyse it as an upload, save each
    series to the worklist (the patient's keyed reference from the PACS patient ID) and send the report when asked;
    a study without brain MR is skipped with its reason. A study analysed before is analysed again only when its
    MR images changed (a series sent later: its earlier series are already saved, the new ones are added and the
    report is sent again with the study's new verdict). A study the PACS failed to give (:data:`RETRIED`) is not
    marked handled and the feed is not moved past it: the others of that page are handled, this watch stops there
    and the next one tries it again (a moment's outage must not drop a study from triage). Returns one line per
    study."""
    require(actor, PACS)
    require(actor, ANALYSE)
    lines: list[dict[str, Any]] = []
    done = False
    while not done:
        studies, last, done = watcher.changes.stable_studies(state.last)
        state.read = True  # saved below: --from-now no longer moves it (a PACS empty at the first start included)
        if last < state.last:  # the studies numbered below ours were passed over unread, and read from the first
            raise PacsFeedWentBack(FEED_WENT_BACK.format(last=last, read=state.last, file=state.path.name))  # change
            # unasked, a PACS restored (or another one) had its history analysed again, reports sent to it
        handled: dict[str, str] = {}
        failed = False
        for study_uid in dict.fromkeys(uid for _, uid in studies):
            line, fingerprint = _handled_once(watcher, state, study_uid, actor)
            if line is None:  # stable again as it was analysed; a fingerprint kept before the patient was in it
                # is brought up to date (kept, a later correction of the patient went unseen)
                if fingerprint.startswith(FINGERPRINT) and state.fingerprint(study_uid) not in (fingerprint, LEGACY):
                    handled[study_uid] = fingerprint
                continue
            if line.get("skipped") in RETRIED and not _given_up(state, study_uid, line, answered=bool(fingerprint)):
                line["retry"] = failed = True
            elif "left_behind" in line or not fingerprint:  # not under its fingerprint, which read as analysed: it
                handled[study_uid] = f"left behind ({line.get('skipped')})"  # is tried again once stable again
                if "left_behind" in line:  # and found in the trail (no event said a study was given up on)
                    reference = study_reference(study_uid, watcher.key)
                    audit.record(watcher.store, actor, LEFT, reference, code=line.get("skipped"))
            else:
                handled[study_uid] = fingerprint
            lines.append(line)
        try:
            state.save(state.last if failed else last, handled)
        except WatchStateUnwritable as error:  # what was done is said all the same (the lines were lost with it)
            error.lines = tuple(lines)
            raise
        done = done or failed
    return lines


FEED_WENT_BACK = (
    "The PACS's change feed went back: its last change is now {last}, and this watch had read up to {read} (its "
    "database was reset or restored, or the PACS address names another PACS). Nothing was analysed. To read this "
    'PACS from its first change, set "last" to 0 in {file} in the data folder: the studies analysed before, as '
    "they are, are passed over; every other is analysed (and, with --send, reported to it)."
)


# why a study is skipped that is no failure: it has no MR series (or is gone), or no brain MR, or none to read yet (a
# study of the scout alone, stable before its series arrived, is read when they do: it exited 1, for a normal exam)
NOT_OURS = frozenset(
    {PacsNotFound.code, WrongModality.code, WrongBodyPart.code, NoBrainFound.code, OnlyLocalizers.code}
)


LOCALIZERS_SO_FAR = (
    "the study holds only localizer images so far (the scanner's positioning images): it is read when its series arrive"
)


def failed(line: dict[str, Any]) -> bool:
    """Whether a watch line is a failure to tell (the exit status of ``pacs watch --once``): a study to try again
    or left behind, a report not sent, a study with brain MR that could not be triaged (refused as over the limits,
    unreadable, two patients; it exited 0), one that broke the watch; not a study without brain MR."""
    return bool(line.get("retry") or line.get("left_behind") or line.get("send_error")) or (
        line.get("skipped") is not None and line["skipped"] not in NOT_OURS
    )


LEFT = "pacs_left_behind"  # the audit action of a study the watch gave up on (tried again at its next stable change)


def _given_up(state: WatchState, study_uid: str, line: dict[str, Any], answered: bool) -> bool:
    """Whether a study the PACS failed (``line``) is now left behind (see :data:`MAX_TRIES`); ``answered``: the PACS
    answered the study's search this watch. An outage, our own database down, and a refusal to read (HTTP 403
    before anything was sent: an account's permission slipping for 40 seconds left every study then waiting
    behind, for good) are waited out however long they last."""
    code = line["skipped"]
    if code in UNDELIVERED and answered and "send_error" not in line:  # a report not taken: waited out (left
        wait = STUCK_AFTER_S  # behind, it would never be sent)
    elif code in (PacsError.code, PacsMalformed.code):
        wait = GIVE_UP_AFTER_S
    elif code == PacsForbidden.code and "send_error" in line:
        wait = 0
    else:
        return False
    tries, failing_s = state.failed(study_uid, clock())
    if tries < MAX_TRIES or failing_s < wait:
        return False
    logger.warning("event=pacs_study_left_behind tries=%d minutes=%d", tries, failing_s // 60)
    line["left_behind"] = (
        f"the PACS failed this study {tries} watches in a row over {failing_s / 60:.0f} minutes; it is left behind "
        "(see the log)"
    )
    return True


def _handled_once(watcher: Watcher, state: WatchState, study_uid: str, actor: Actor) -> tuple[dict | None, str]:
    """The line for a study that is new, or whose MR images changed since it was analysed (then marked
    ``again``), with the fingerprint to keep; no line for one already analysed as it is."""
    before = state.fingerprint(study_uid)
    try:
        fingerprint = mr_fingerprint(watcher.pacs, study_uid)
    except PacsError as error:
        if error.code in RETRIED:
            return {"study_uid": study_uid, "skipped": error.code, "reason": str(error)}, ""
        fingerprint = f"unknown ({error.code})"  # analysed (and its error reported) as any study would be
    again = "the study's MR images or its patient changed after it was analysed"
    if before is not None and before.startswith("left behind ("):  # never analysed: nothing of it changed
        again = f"tried again: it was left behind ({before.removeprefix('left behind (')}"
    elif before is not None and (before in (fingerprint, LEGACY) or _kept_before_and_same(watcher, study_uid, before)):
        if not (watcher.send and _report_missing(watcher, study_uid)):
            return None, fingerprint
        again = "our report is no longer in the PACS (the study deleted and sent again, or restored): sent again"
    line = _handled_safely(watcher, study_uid, actor, None if fingerprint.startswith("unknown") else fingerprint)
    if before is not None:
        line["again"] = again
    return line, fingerprint


def _report_missing(watcher: Watcher, study_uid: str) -> bool:
    """Whether a study reported before (its ``pacs_send`` event) holds MR images but none of our reports: deleted
    and sent again by the modality, or the PACS restored from a backup older than the report, it was passed over as
    handled, and its readers in the PACS lost the report without a sign. Sent again, it stores nothing twice (its
    objects' UIDs are the same). A study never reported (not ours, no verdict), or no key to name it by: nothing
    is missing (without this check such a study was pulled again, its line saying "sent again" of nothing sent). A
    PACS that cannot answer now: not missing (the study's next change asks again)."""
    target = study_reference(study_uid, watcher.key)
    if target is None or not watcher.store.count_audit(AuditQuery(action=SENT, target=target)):
        return False
    try:
        series = watcher.pacs.series_of(study_uid)
    except PacsError:
        return False
    ours = objects.report_series(study_uid)
    return any(s.modality.upper() == "MR" for s in series) and not any(s.series_uid == ours for s in series)


def _kept_before_and_same(watcher: Watcher, study_uid: str, before: str) -> bool:
    """Whether ``before``, a fingerprint kept by a version without the patient in it, still holds."""
    if not re.fullmatch(r"[0-9a-f]{64}", before):
        return False
    try:
        return before == series_only(watcher.pacs, study_uid)
    except PacsError:
        return False


def _handled_safely(watcher: Watcher, study_uid: str, actor: Actor, fingerprint: str | None) -> dict[str, Any]:
    """:func:`_handle`, never raising: the database unavailable is tried again; anything else that one study
    raises is logged and reported for that study, which is then left behind (an exception used to stop the watch,
    and the restarted watch met the same study first and stopped again: triage stopped for every later study)."""
    try:
        return _handle(watcher, study_uid, actor, fingerprint)
    except StoreError as error:
        return {"study_uid": study_uid, "skipped": STORE_DOWN, "reason": str(error)}
    except Exception:
        logger.exception("event=pacs_study_failed code=internal_error")
        return {
            "study_uid": study_uid,
            "skipped": "internal_error",
            "reason": "the study could not be handled; see log",
        }


def _handle(watcher: Watcher, study_uid: str, actor: Actor, fingerprint: str | None) -> dict[str, Any]:
    pulled = pull_and_analyse(
        watcher.pacs, actor, study_uid, watcher.classifier, watcher.store, watcher.key, fingerprint
    )
    if pulled.outcome.error_code:
        logger.info("event=pacs_study_skipped code=%s", pulled.outcome.error_code)
        reason = LOCALIZERS_SO_FAR if pulled.outcome.error_code == OnlyLocalizers.code else pulled.outcome.error_message
        return {"study_uid": study_uid, "skipped": pulled.outcome.error_code, "reason": reason}
    reference = patient_reference(pacs_patient_id(pulled), watcher.key)
    statuses = save_study_statuses(
        pulled.outcome, watcher.store, actor=actor, patient_ref=reference, images=watcher.images, key=watcher.key
    )
    saved = [status.state for status in statuses]
    unsaved = [state for s, state in zip(pulled.outcome.series, saved, strict=True) if s.label is not None]
    if NOT_SAVED in unsaved:  # not on the worklist: tried again, no report for a study nobody can review (a series
        # nobody could read is never saved: that one is reported, not retried)
        reason = "a series could not be saved; the study is tried again"
        return {"study_uid": study_uid, "skipped": STORE_DOWN, "reason": reason, "saved": saved}
    line: dict[str, Any] = {"study_uid": study_uid, "verdict": pulled.outcome.verdict, "saved": saved}
    if pulled.outcome.unanalysed:
        line["unanalysed_series"] = pulled.outcome.unanalysed  # why there is no verdict: the report says so too
    if watcher.send and any(s.label is not None for s in pulled.outcome.series):
        card = watcher.classifier.card
        model = objects.ModelFacts.of(card)
        try:
            line["stored"] = send_results(watcher.pacs, actor, pulled, model, watcher.store, watcher.key)
        except PacsError as error:
            line["send_error"] = {"code": error.code, "message": str(error)}
            if error.code in RETRIED:  # the report is sent by a later watch (its series answer "already saved")
                line["skipped"] = error.code
    return line
