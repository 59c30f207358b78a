"""Single sign-on (Streamlit's ``st.login``, OIDC): whether it is set up, and the actor an identity provider's user
signs in as. The role comes from a claim the deployment names or from the local account of that name created with
``--sso`` (no password; a password account's name is refused, and an unverified e-mail is not used). Every refusal
is an audit event with its reason (and the name it came with when it has no role), never the other claims.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from core.config import file_secrets, sso_refusal
from core.domain.people import RESERVED_NAMES, ROLES, Account
from core.errors import SignInFailed
from core.services import audit
from core.services.access import NOBODY, VIA_ACCOUNT, VIA_CLAIM, Actor
from core.storage.protocol import Store


def single_sign_on_ready() -> bool:
    """Whether single sign-on is set up and usable (read once per change, not once per account)."""
    try:
        secrets = file_secrets()
        return bool(secrets.get("auth")) and sso_refusal(secrets) is None
    except ValueError:  # a secrets file that cannot be read: no single sign-on to count on
        return False


def _identity_refusal(store: Store, name: str, account: Account | None) -> tuple[str, str] | None:
    """Why an identity's name cannot sign in (the audit's reason, the screen's words), or None."""
    if name.lower() in RESERVED_NAMES:  # the trail's names for the command line and for failed sign-ins
        return "reserved name", "is reserved by the triage dashboard"
    if len(name) > 254 or not name.isprintable():  # a line break or a control character in a name shown to others
        return "unusable identity name", "has characters the triage dashboard cannot show"  # (Markdown is escaped)
    if account is None and name and any(a.name.lower() == name.lower() for a in store.accounts()):  # "DR-A" by "dr-a"
        return "name differs only in case", "differs from an account's only in case"
    if account is not None and account.password_hash is not None:  # a local password account's name: refused, or
        # every later run (which re-reads the account by name) would give the identity that account's role
        return "name of a password account", "belongs to a local account with a password"
    return None


def external_actor(store: Store, claims: Mapping[str, Any], role_claim: str | None = None) -> Actor:
    """The actor for an identity provider's user: named by the e-mail only where the provider says it verified it
    (Entra ID's, which its users may edit, does not: it named anyone by a colleague's address), else the subject;
    the role comes from ``role_claim`` when the deployment maps one (a role name or a list holding one), else from
    the local account of that name made for single sign-on (a password account's is never taken over). No role,
    no entry; an account disabled under the e-mail, verified or not, refuses the identity too."""
    verified = str(claims.get("email_verified", "")).lower() == "true"  # True, or "true" as text ("false", 0: not)
    email = str(claims.get("email") or "")
    name = str((email if verified else "") or claims.get("sub") or "")
    unverified = store.get_account(email) if email and not verified else None  # its account, disabled: refused
    role = None
    if role_claim:
        value = claims.get(role_claim)
        values = value if isinstance(value, list | tuple) else [value]
        role = next((str(v) for v in values if str(v) in ROLES), None)
    via = VIA_CLAIM if role is not None else VIA_ACCOUNT
    account = store.get_account(name) if name else None
    refused = _identity_refusal(store, name, account)
    if refused is not None:
        audit.record(store, NOBODY, "sign_in_failed", None, reason=refused[0])
        raise SignInFailed(f"This identity's name {refused[1]}; ask an administrator.")
    if role is None and account is not None and not account.disabled:
        role = account.role
    if not name or role is None or any(a is not None and a.disabled for a in (account, unverified)):
        audit.record(store, NOBODY, "sign_in_failed", None, reason="no role for this identity", identity=name)
        raise SignInFailed(f"This identity ({name or 'unnamed'}) has no role in the triage dashboard; ask an admin.")
    actor = Actor(name, role, via=via, signed_in_at=datetime.now(UTC))
    audit.record(store, actor, "sign_in", name, via="single sign-on")
    return actor
