"""Who may do what: roles, permissions and the acting user, checked by every service before it reads or writes.

Pages show only what a role may use, but that is convenience: the services refuse (:class:`AccessDenied`) whatever
a page or a script asks. Roles:
- radiologist: analyse scans, review results, the worklist, open a result with its image, patient history, the
  PACS (search it, pull and analyse a study, send its report);
- supervisor: statistics (agreement, drift), reading the audit trail; no images, no per-scan table;
- admin: accounts, settings, exporting the audit trail, deleting stored images, statistics, storage details; not
  the PACS (its studies are patients' images and names, and a report sent there is a clinical act).
The command line runs as the server's administrator (:data:`COMMAND_LINE`), with every permission.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from core.errors import AccessDenied

ANALYSE = "analyse scans"
REVIEW = "review results"
OPEN_RESULT = "open a result and its image"
WORKLIST = "see the worklist"
HISTORY = "see a patient's history"
STATISTICS = "see the statistics"
AUDIT_READ = "read the audit trail"
AUDIT_EXPORT = "export the audit trail"
ACCOUNTS = "manage accounts"
SETTINGS = "change settings"
DELETE_IMAGES = "delete stored images"
STORAGE_DETAILS = "see where results are stored"
PACS = "search, pull from and send to the PACS"

GRANTS: dict[str, frozenset[str]] = {
    "radiologist": frozenset({ANALYSE, REVIEW, OPEN_RESULT, WORKLIST, HISTORY, PACS}),
    "supervisor": frozenset({STATISTICS, AUDIT_READ}),
    "admin": frozenset({STATISTICS, AUDIT_READ, AUDIT_EXPORT, ACCOUNTS, SETTINGS, DELETE_IMAGES, STORAGE_DETAILS}),
}
GRANTS["system"] = frozenset().union(*GRANTS.values())


@dataclass(frozen=True)
class Actor:
    """The signed-in user (or the command line) on whose behalf a service acts. ``credential``: a fingerprint of
    the password the user signed in with (:func:`core.services.accounts.credential_of`), so that a password set
    since ends the session; empty where no password signed it in (single sign-on, the command line). ``via``:
    where the role came from: "" a password (or the command line), :data:`VIA_CLAIM` the identity provider's role
    claim, :data:`VIA_ACCOUNT` the local account made for single sign-on; every later run keeps to that source.
    ``signed_in_at``: when (None: the command line), so that a disable ends the session for good and a sign-in
    lasts at most a working day."""

    name: str
    role: str
    credential: str = field(default="", compare=False, repr=False)
    via: str = field(default="", compare=False, repr=False)
    signed_in_at: datetime | None = field(default=None, compare=False, repr=False)
    # signed in with a temporary password an administrator set: nothing but choosing a new one until then
    must_change: bool = field(default=False, compare=False, repr=False)


VIA_CLAIM, VIA_ACCOUNT = "claim", "account"


COMMAND_LINE = Actor("cli", "system")
NOBODY = Actor("unknown", "none")  # who a refused sign-in was: never the name typed


def allowed(actor: Actor | None, permission: str) -> bool:
    return actor is not None and permission in GRANTS.get(actor.role, frozenset())


def require(actor: Actor | None, permission: str) -> Actor:
    """``actor`` when its role grants ``permission``; :class:`AccessDenied` otherwise (or when nobody is signed in)."""
    if actor is None:
        raise AccessDenied(f"Sign in to {permission}.")
    if actor.must_change:  # enforced here, not by a screen: every service refuses until the password is new
        raise AccessDenied("Choose a new password first: this one is a temporary one an administrator set.")
    if not allowed(actor, permission):
        raise AccessDenied(f"The {actor.role} role may not {permission}.")
    return actor
