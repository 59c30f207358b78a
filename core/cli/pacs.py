"""``pacs``: studies from a PACS over DICOMweb, and a development Orthanc.

    python -m core pacs analyse --url URL --study STUDY_UID [--user U --password-stdin] [--save [--send]]
    python -m core pacs watch --url URL [--rest REST] [--user U --password-stdin] [--send] [--once]
    python -m core pacs serve-dev

``analyse`` prints the same JSON line per series as ``study``, with the study UID (and with ``--send`` the SOP
Instance UIDs the PACS stored); exit codes as ``study``. ``watch`` prints one line per study it analysed, new or with MR
images added since (marked ``again``), under the study's keyed reference as the audit trail names it, never its UID
(a daemon's output ends in a log); the last change it handled and each study's MR fingerprint are kept in the data
directory (``pacs-watch.json``), so a restart goes on from there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

from core.cli.common import (
    EXIT_NOT_SAVED,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_USAGE,
    dicom_uid,
    emit,
    error_json,
    not_opened,
    seconds,
    stdin_secret,
    utf8_text,
    write,
)
from core.cli.studies import emit_outcome, save_outcome
from core.config import PacsSettings, data_dir, file_secrets, pacs_ca_file, pacs_settings
from core.errors import PacsError, PacsFeedWentBack, StoreError, WatchStateUnwritable
from core.pacs.changes import OrthancChanges
from core.pacs.objects import ModelFacts, uid_root
from core.services import pacs, pacs_watch
from core.services.access import COMMAND_LINE
from core.services.resources import load_classifier, open_for_saving
from core.services.studies import NOT_SAVED
from core.storage import WATCH_STATE


def add_commands(commands: Any) -> None:
    group = commands.add_parser("pacs", help="studies from a PACS over DICOMweb; a development Orthanc")
    verbs = group.add_subparsers(dest="pacs_command", required=True, metavar="COMMAND")
    analyse = verbs.add_parser("analyse", help="pull a study's MR series and print one JSON line per series")
    _connection_options(analyse, study=True)
    analyse.add_argument("--save", action="store_true", help="also save each series to the app's database")
    analyse.add_argument(
        "--send", action="store_true", help="with --save: send the report (SR) and key images to the PACS"
    )
    analyse.set_defaults(run=cmd_analyse)
    watch = verbs.add_parser(
        "watch", help="analyse each study that becomes stable, MR ones onto the worklist (again when MR is added)"
    )
    _connection_options(watch, study=False)
    watch.add_argument("--send", action="store_true", help="also send each report and its key images")
    watch.add_argument("--once", action="store_true", help="handle what is new, then stop")
    watch.add_argument(
        "--from-now",
        action="store_true",
        help="on the first start (or while no start got past the change log's beginning), begin with the studies "
        "that become stable from now (without it, the first start reads the PACS's whole change log: every brain MR "
        "study it still lists is analysed, and with --send reported)",
    )
    watch.add_argument("--interval", type=seconds, default=10.0, help="seconds between looks at the change feed")
    watch.set_defaults(run=cmd_watch)
    serve = verbs.add_parser("serve-dev", help="start a local Orthanc (loopback, temporary) until interrupted")
    serve.set_defaults(run=cmd_serve_dev)


def _connection_options(command: Any, study: bool) -> None:
    """The PACS address and credentials, the study (analyse) or Orthanc's REST root (watch), and the model."""
    command.add_argument("--url", help="the PACS's DICOMweb root (default: BTD_PACS_URL / [pacs] url)")
    if study:
        command.add_argument(
            "--study", required=True, type=dicom_uid, metavar="STUDY_UID", help="the Study Instance UID"
        )
    else:
        command.add_argument("--rest", help="Orthanc's REST root when it is not the DICOMweb root's parent")
    command.add_argument("--user", type=utf8_text, help="PACS user (default: BTD_PACS_USER / [pacs] user)")
    command.add_argument("--password-stdin", action="store_true", help="read the PACS password from standard input")
    command.add_argument("--insecure", action="store_true", help="do not verify TLS certificates (tests only)")
    command.add_argument("--model", help="model card JSON (default: the shipped model or $BTD_MODEL)")


def _settings(args: argparse.Namespace) -> PacsSettings | None:
    configured = pacs_settings(file_secrets())
    url = args.url or (configured.url if configured else None)
    if not url:
        return None
    password = stdin_secret() if args.password_stdin else (configured and configured.password)
    return PacsSettings(
        url=url,
        user=args.user or (configured.user if configured else None),
        password=password or None,
        verify_tls=not args.insecure and (configured.verify_tls if configured else True),
        ca_file=pacs_ca_file(file_secrets()),
    )


def _unusable(settings: PacsSettings | None, send: bool = False) -> dict | None:
    """The usage error that settings cannot connect with: no address, or a password without a user name (it was
    dropped, and the PACS's refusal pointed at the password); sending, a UID root that cannot be used (each study
    was pulled, analysed and saved before its send failed, and the watch pulled it again and again)."""
    if send:
        try:
            uid_root()
        except PacsError as error:
            return error_json(error.code, str(error))
    if settings is None:
        return error_json("no_pacs", "No PACS address: give --url, or set BTD_PACS_URL or [pacs] url in secrets.")
    if settings.password and not settings.user:
        return error_json("bad_usage", "A PACS password needs a user name: give --user or set BTD_PACS_USER.")
    return None


def cmd_analyse(args: argparse.Namespace) -> int:
    if args.send and not args.save:  # as the page and the watch: no report in the PACS for a result nobody can review
        emit(error_json("bad_usage", "--send needs --save: a report is sent for saved results only."), sys.stdout)
        return EXIT_USAGE
    settings = _settings(args)
    if (refused := _unusable(settings, args.send)) is not None:
        emit(refused, sys.stdout)
        return EXIT_USAGE
    connection = pacs.connect(settings)  # a malformed address is said before any database is opened
    classifier = load_classifier(args.model)
    store, images, key = None, None, None
    try:
        store, images, key = open_for_saving()
    except (StoreError, ValueError) as error:
        return not_opened(error)
    images = images if args.save else None
    pulled = pacs.pull_and_analyse(connection, COMMAND_LINE, args.study, classifier, store, key)
    extra: dict[str, Any] = {"study_uid": args.study}
    saved = None
    if args.save and pulled.outcome.error_code is None:  # saved first, under the PACS patient's keyed reference
        reference = pacs.patient_reference(pacs.pacs_patient_id(pulled), key)  # (as the watch and the page do)
        saved = save_outcome(pulled.outcome, (store, images, key), reference)
    if args.send and pulled.outcome.error_code is None:
        card = classifier.card
        model = ModelFacts.of(card)
        read = [state for s, state in zip(pulled.outcome.series, saved or [], strict=False) if s.label is not None]
        if any(state.state == NOT_SAVED for state in read):  # no report in the PACS for a result nobody can review
            extra["send_error"] = {"code": "not_saved", "message": "a series could not be saved; nothing was sent"}
        else:
            try:
                extra["stored"] = pacs.send_results(connection, COMMAND_LINE, pulled, model, store, key)
            except PacsError as error:
                extra["send_error"] = {"code": error.code, "message": str(error)}
    status, unsaved = emit_outcome(f"PACS study {args.study}", pulled.outcome, args, (store, images, key), extra, saved)
    if "send_error" in extra:
        status = max(status, EXIT_REJECTED)
    return EXIT_NOT_SAVED if unsaved else status


def cmd_watch(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if (refused := _unusable(settings, args.send)) is not None:
        emit(refused, sys.stdout)
        return EXIT_USAGE
    connection = pacs.connect(settings)  # malformed addresses are said before any database is opened
    changes = OrthancChanges.of(connection, args.rest or rest_root(settings.url))
    try:
        store, images, key = open_for_saving()
    except (StoreError, ValueError) as error:
        return not_opened(error)
    lock = pacs_watch.WatchState.exclusive(data_dir() / "pacs-watch.lock")
    if lock is None:
        emit(error_json("watch_running", "Another pacs watch runs on this data folder: one at a time."), sys.stdout)
        return EXIT_USAGE
    try:
        return _watch(
            args,
            pacs_watch.Watcher(connection, changes, load_classifier(args.model), store, images, key, args.send),
            key,
        )
    finally:
        os.close(lock)


def _watch(args: argparse.Namespace, watcher: pacs_watch.Watcher, key: bytes | None) -> int:
    try:
        first = watcher.changes.latest if args.from_now else None
        state = pacs_watch.open_state(data_dir() / WATCH_STATE, key, watcher.store, COMMAND_LINE, first)
    except (PacsError, StoreError) as error:  # damaged or gone: never taken for a first start (every study again)
        emit(error_json(error.code, str(error)), sys.stdout)
        return EXIT_USAGE
    while True:
        failed = False
        try:
            for line in pacs_watch.watch_once(watcher, state, COMMAND_LINE):
                failed = failed or pacs_watch.failed(line)
                emit(_for_the_log(line, key), sys.stdout)
        except (PacsError, WatchStateUnwritable) as error:  # the PACS is down or refuses, or the state file cannot
            for line in getattr(error, "lines", ()):  # be written: say so (and what was done), keep watching
                emit(_for_the_log(line, key), sys.stdout)
            emit(error_json(error.code, str(error)), sys.stdout)
            failed = True
            if isinstance(error, PacsFeedWentBack):  # the operator's answer is the state file: read again
                state = _reread(state, watcher)
        if args.once:  # 1 when the PACS failed a study or its report (a run from cron shows it)
            return EXIT_REJECTED if failed else EXIT_OK
        time.sleep(args.interval)


def _reread(state: pacs_watch.WatchState, watcher: pacs_watch.Watcher) -> pacs_watch.WatchState:
    """The watch's state as its file holds it now (an operator set "last" in it); as it was when it cannot be read
    (or is gone: that is no first start)."""
    try:
        return pacs_watch.open_state(state.path, watcher.key, watcher.store, COMMAND_LINE)
    except (PacsError, StoreError) as error:
        emit(error_json(error.code, str(error)), sys.stdout)
        return state


def rest_root(url: str) -> str:
    """Orthanc's REST root from its DICOMweb root (``http://host:8042/dicom-web`` -> ``http://host:8042``): the
    address without its last path segment; a root without a path is its own (it was cut to "http:/")."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path.rsplit("/", 1)[0] if path else "", "", ""))


def _for_the_log(line: dict, key: bytes | None) -> dict:
    """A watch line as the service's log keeps it (a daemon's output ends in the system journal): the study's keyed
    reference, as its audit events name it, never its UID, and how many objects were stored, never their UIDs (the
    PACS finds the patient from any of them)."""
    uid = line.pop("study_uid", None)
    if "stored" in line:
        line["stored"] = len(line["stored"])
    return {"study_ref": pacs.study_reference(uid, key) if uid else None, **line}


def cmd_serve_dev(args: argparse.Namespace) -> int:
    from core.pacs.orthanc import DevOrthanc, available

    reason = available()
    if reason:
        emit(error_json("no_orthanc", reason), sys.stdout)
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_OK))  # stop cleanly (the folder removed) on TERM too
    with DevOrthanc() as server:  # a random password for a loopback-only, temporary server: shown to its starter
        found = {"rest": server.rest, "dicomweb": server.dicomweb, "user": server.user, "password": server.password}
        write(sys.stdout, json.dumps(found) + "\n")
        with contextlib.suppress(KeyboardInterrupt):
            server.process.wait()
    return EXIT_OK
