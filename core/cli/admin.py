"""``users``, ``audit``, ``images`` and ``store``: accounts (the first admin is made here), the audit trail, image
retention and the results database, for the administrator.

    python -m core users add NAME --role radiologist|supervisor|admin --password-stdin   (or --sso: no password)
    python -m core users list | disable NAME | enable NAME | unlock NAME | set-role NAME ROLE
    python -m core users set-password NAME --password-stdin
    python -m core audit verify            exit 0 when the chain is intact, 1 naming the first bad event
    python -m core audit export [--action A] [--actor NAME]   CSV on stdout, headed by the filters
    python -m core images purge [--days N]   delete de-identified images older than the retention period
    python -m core store backup DIR | accept-key | forget   the embedded database's copy, patient key, register

The command line acts as the server's administrator (an audit event names it ``cli``). Passwords are read from
standard input only (never from the command line, where other users and shell history would see them).
"""

from __future__ import annotations

import argparse
import re
import sys
from contextlib import suppress
from dataclasses import replace
from typing import Any

from core.cli.common import (
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_USAGE,
    emit,
    error_json,
    positive_int,
    stdin_secret,
    utf8_text,
    write,
)
from core.config import data_dir
from core.domain.people import ROLES, Account
from core.errors import ConfigError
from core.services import accounts, audit, retention, single_sign_on
from core.services.access import COMMAND_LINE
from core.services.resources import open_image_store, open_results_store
from core.storage import DATABASE_FILE
from core.storage.protocol import Store

TEMPORARY = "the password is a temporary one: its owner must choose another at the next sign-in, before anything else"


def add_commands(commands: Any) -> None:
    store = commands.add_parser(
        "store", help="the results database: back up, accept the patient-reference key, forget a vanished one"
    )
    store_verbs = store.add_subparsers(dest="verb", required=True, parser_class=type(store))
    store_verbs.add_parser("forget", help="let a new empty database be created where a vanished one was").set_defaults(
        run=cmd_store_forget
    )
    store_verbs.add_parser(
        "accept-key", help="record the configured patient-reference key as the database's (after a refusal)"
    ).set_defaults(run=cmd_store_accept_key)
    backup = store_verbs.add_parser(
        "backup", help="a consistent copy of the embedded database, its key files and images, while the app runs"
    )
    backup.add_argument("out", type=_folder, help="a new folder to write the backup into")
    backup.set_defaults(run=cmd_store_backup)
    users = commands.add_parser(
        "users", help="local accounts: add, list, disable, enable, unlock, set-role, set-password"
    )
    verbs = users.add_subparsers(dest="verb", required=True, parser_class=type(users))
    add = verbs.add_parser("add", help="create an account")
    add.add_argument("name", type=utf8_text)
    add.add_argument("--role", required=True, choices=ROLES)
    how = add.add_mutually_exclusive_group(required=True)
    how.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    how.add_argument("--sso", action="store_true", help="no password: signs in through single sign-on only")
    add.add_argument("--temporary", action="store_true", help=TEMPORARY)
    add.set_defaults(run=cmd_users_add)
    verbs.add_parser("list", help="every account, without password hashes").set_defaults(run=cmd_users_list)
    for verb, disabled in (("disable", True), ("enable", False)):
        parser = verbs.add_parser(verb, help=f"{verb} an account")
        parser.add_argument("name", type=utf8_text)
        parser.set_defaults(run=cmd_users_disable, disabled=disabled)
    unlock = verbs.add_parser("unlock", help="end an account's sign-in lock now (failed attempts forgotten)")
    unlock.add_argument("name", type=utf8_text)
    unlock.set_defaults(run=cmd_users_unlock)
    role = verbs.add_parser("set-role", help="change an account's role")
    role.add_argument("name", type=utf8_text)
    role.add_argument("role", choices=ROLES)
    role.set_defaults(run=cmd_users_set_role)
    password = verbs.add_parser("set-password", help="set a password (read from standard input)")
    password.add_argument("name", type=utf8_text)
    password.add_argument("--password-stdin", action="store_true", required=True)
    password.add_argument("--temporary", action="store_true", help=TEMPORARY)
    password.set_defaults(run=cmd_users_set_password)
    trail = commands.add_parser("audit", help="verify or export the audit trail")
    steps = trail.add_subparsers(dest="verb", required=True, parser_class=type(trail))
    verify = steps.add_parser("verify", help="re-hash the chain, compare its head; exit 1 naming the problem")
    verify.add_argument("--expect-head", metavar="SEQ:HASH", help="a head printed by an earlier verify")
    verify.set_defaults(run=cmd_audit_verify)
    images = commands.add_parser("images", help="the de-identified image store")
    image_verbs = images.add_subparsers(dest="verb", required=True, parser_class=type(images))
    purge = image_verbs.add_parser(
        "purge", help="delete images older than the retention period (those of results nobody reviewed are kept)"
    )
    purge.add_argument(
        "--days",
        type=positive_int,
        default=None,
        help="older than this many days, 1 to 36500 (default: BTD_IMAGE_RETENTION_DAYS or 90)",
    )
    purge.set_defaults(run=cmd_images_purge)
    export = steps.add_parser("export", help="the events as CSV on stdout")
    export.add_argument("--action", type=utf8_text)
    export.add_argument("--actor", type=utf8_text)
    export.set_defaults(run=cmd_audit_export)


def _folder(text: str) -> str:
    """An argparse type: a folder named (an empty one read as ".": "folder exists already")."""
    if not text.strip():
        raise argparse.ArgumentTypeError("name a new folder to write the backup into")
    return text


def _password() -> str:
    return stdin_secret(confirm=True)


def _shown(account: Account) -> dict[str, Any]:
    return {
        "name": account.name,
        "role": account.role,
        "disabled": account.disabled,
        "sign_in": "password" if account.password_hash else "single sign-on",
        "temporary_password": account.must_change,
        "locked_until": account.locked_until.isoformat() if account.locked_until else None,
    }


def _stored() -> Store:
    """The database a command reads or changes: refused when the data folder has none (never made there)."""
    return open_results_store(existing=True)


def cmd_users_add(args: argparse.Namespace) -> int:
    password = None if args.sso else _password()
    fresh = not (data_dir() / DATABASE_FILE).exists()
    store = open_results_store()
    created = accounts.add_account(store, COMMAND_LINE, args.name, args.role, password, temporary=args.temporary)
    said: dict[str, Any] = {"created": _shown(created)}
    if fresh and getattr(store, "path", None) is not None:  # embedded, made now: a mistyped BTD_DATA_DIR said nothing
        said["notes"] = [f"a new, empty results database was made in {data_dir()} (BTD_DATA_DIR)"]
    if args.sso and not single_sign_on.single_sign_on_ready():  # made ahead of single sign-on, as an admin may: said
        said["warning"] = "single sign-on is not set up: this account cannot sign in until it is"
    if args.sso and args.temporary:
        said.setdefault("notes", []).append("--temporary ignored: a single-sign-on account has no password")
    emit(said, sys.stdout)
    return EXIT_OK


def cmd_users_list(args: argparse.Namespace) -> int:
    for account in accounts.list_accounts(_stored(), COMMAND_LINE):
        emit(_shown(account), sys.stdout)
    return EXIT_OK


def cmd_users_disable(args: argparse.Namespace) -> int:
    emit(
        {"updated": _shown(accounts.set_disabled(_stored(), COMMAND_LINE, args.name, args.disabled))},
        sys.stdout,
    )
    return EXIT_OK


def cmd_users_unlock(args: argparse.Namespace) -> int:
    emit({"updated": _shown(accounts.unlock(_stored(), COMMAND_LINE, args.name))}, sys.stdout)
    return EXIT_OK


def cmd_users_set_role(args: argparse.Namespace) -> int:
    emit(
        {"updated": _shown(accounts.set_role(_stored(), COMMAND_LINE, args.name, args.role))},
        sys.stdout,
    )
    return EXIT_OK


def cmd_users_set_password(args: argparse.Namespace) -> int:
    store, password = _stored(), _password()
    before = store.get_account(args.name)
    account = accounts.set_password(store, COMMAND_LINE, args.name, password, temporary=args.temporary)
    said: dict[str, Any] = {"updated": _shown(account)}
    if before is not None and not before.password_hash:  # said, not done quietly
        said["note"] = "this account signed in through single sign-on; it now signs in with this password only"
    emit(said, sys.stdout)
    return EXIT_OK


def cmd_store_forget(args: argparse.Namespace) -> int:
    from core.config import file_secrets, mongodb_uri
    from core.storage import stamps

    database = data_dir() / DATABASE_FILE
    if mongodb_uri(file_secrets()):  # it said "not registered: run this with the server's BTD_STATE_DIR"
        emit(error_json("bad_usage", "the results are in MongoDB: there is no embedded database to forget"), sys.stdout)
        return EXIT_USAGE
    if not stamps.gone(database):
        emit(error_json("bad_usage", f"{database} exists: nothing to forget"), sys.stdout)
        return EXIT_USAGE
    emptied = database.exists()
    if emptied:  # emptied to 0 bytes: nothing of it to keep, and a new database goes in its place
        database.unlink()
    if not stamps.forget(database) and not emptied:  # said {"forgotten": false}, exit 0, the server still refusing
        message = (
            f"{database} is not in the register {stamps.register_file()}: run this with the server's BTD_STATE_DIR "
            "(and BTD_DATA_DIR)"
        )
        emit({**error_json("not_registered", message), "forgotten": False, "database": str(database)}, sys.stdout)
        return EXIT_REJECTED
    emit({"forgotten": True, "database": str(database)}, sys.stdout)
    return EXIT_OK


def cmd_store_accept_key(args: argparse.Namespace) -> int:
    from core.services.resources import accept_patient_key

    accepted, changed = accept_patient_key(_stored(), COMMAND_LINE)
    emit({"accepted": accepted, "changed": changed}, sys.stdout)
    return EXIT_OK


def cmd_store_backup(args: argparse.Namespace) -> int:
    from pathlib import Path

    from core.config import data_dir, file_secrets, mongodb_uri
    from core.errors import StoreError
    from core.storage.backup import backup_embedded, check_target

    if mongodb_uri(file_secrets()):
        emit(error_json("bad_usage", "the results are in MongoDB: back them up with mongodump"), sys.stdout)
        return EXIT_USAGE
    store = None
    try:
        check_target(data_dir(), Path(args.out))  # a refused backup leaves no event
        # a copy of every result and both keys: an event, written first
        store = _stored()
        audit.record(store, COMMAND_LINE, "store_backup", None, folder=Path(args.out).name)
        emit(backup_embedded(data_dir(), Path(args.out)), sys.stdout)
    except StoreError as error:  # exit 2, as every store error (main): the folder exists, a full disk, ...
        if store is not None:  # the event said a backup was made: the trail says it failed
            with suppress(StoreError):
                audit.record(store, COMMAND_LINE, "store_backup_failed", None, folder=Path(args.out).name)
        emit(error_json(error.code, str(error)), sys.stdout)
        return EXIT_USAGE
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    expected = None
    if args.expect_head is not None:  # given empty (a cron line's unset variable), it is a typo: no check passed
        seq, _, digest = args.expect_head.partition(":")  # a typo is refused, never a "broken" mark for the page
        if not re.fullmatch(r"[0-9]+", seq, re.ASCII) or not re.fullmatch(r"(hmac:)?[0-9a-f]{64}", digest):
            emit(error_json("bad_usage", "--expect-head takes SEQ:HASH as printed by an earlier verify"), sys.stdout)
            return EXIT_USAGE
        expected = (int(seq), digest)
    store = open_results_store(existing=True, same_key=False)  # it says what is wrong
    # under a key that does not sign the chain (not the server's BTD_AUDIT_KEY) every event reads as edited: said as
    # such, and no "broken" mark written for the Audit page, whose check under the right key then raised an alarm
    doubt = audit.key_doubt(store)  # an edit under the server's key is found, marked and said; a doubt marks nothing
    result = audit.verify(store, expected, keep_point=doubt is None)
    if doubt is not None:  # the first event that does not hold is named where the key may be the server's
        bad = result.first_bad if doubt == audit.UNCLEAR_KEY else None
        result = replace(result, intact=False, first_bad=bad, problem=doubt)
    report: dict[str, Any] = {
        "intact": result.intact,
        "events": result.events,
        "keyed": result.keyed,
        "head": f"{result.head.seq}:{result.head.hash}" if result.head else None,  # note it: --expect-head later
    }
    if result.intact:
        emit(report, sys.stdout)
        return EXIT_OK
    report["problem"] = result.problem
    bad = result.first_bad
    if bad is not None:
        report["first_bad_event"] = {"seq": bad.seq, "at": bad.at.isoformat(), "actor": bad.actor, "action": bad.action}
    emit(report, sys.stdout)
    return EXIT_REJECTED


def cmd_images_purge(args: argparse.Namespace) -> int:
    try:  # a retention setting that cannot be read deletes nothing (read as the default, it deleted images)
        days = retention.retention_days() if args.days is None else args.days
    except ValueError as error:  # the setting out of range: exit 2, as the option's (--days 0 did)
        emit(error_json("invalid_days", str(error)), sys.stdout)
        return EXIT_USAGE
    store = _stored()  # a damaged key file or secrets file: bad_configuration, as from every command
    try:
        purged = retention.purge_images(store, open_image_store(store), COMMAND_LINE, days)
    except ConfigError:
        raise
    except ValueError as error:
        emit(error_json("invalid_days", str(error)), sys.stdout)
        return EXIT_USAGE
    emit({"deleted": purged.deleted, "kept_unread": purged.kept_unread, "older_than_days": days}, sys.stdout)
    return EXIT_OK


def cmd_audit_export(args: argparse.Namespace) -> int:
    filters = {"action": args.action, "who": args.actor}
    store = _stored()
    write(sys.stdout, audit.export_csv(store, COMMAND_LINE, filters).decode("utf-8"))
    if (args.action or args.actor) and not audit.count(store, COMMAND_LINE, **filters):  # a typo read as "none"
        print(  # (the CSV's heading names the filters; said here too, where the reader looks)
            "No event matches these filters: actions are written as the Audit page lists them (sign_in_failed, "
            "review, open), accounts by their names.",
            file=sys.stderr,
        )
    return EXIT_OK


__all__ = ["EXIT_USAGE", "add_commands", "error_json"]
