"""Accounts page (admins): who may sign in, with which role; create, change a role, disable or enable, set a
password. Every change is an audit event; passwords are never shown or logged."""

import pandas as pd
import streamlit as st

from core.domain.people import MAX_PASSWORD
from core.errors import InvalidRecord, StoreError
from core.services import accounts, retention, single_sign_on
from core.services.access import ACCOUNTS
from core.services.accounts import ROLES
from ui import resources
from ui.page import setup_page
from ui.wording import count_of

actor = setup_page("Accounts", ACCOUNTS)
st.title("Accounts")
try:
    store = resources.current_store()
    people = accounts.list_accounts(store, actor)
except StoreError as error:
    st.error(f"The accounts cannot be read: {error}")
    st.stop()
SIGN_IN = {(False, False): "single sign-on", (True, False): "password", (True, True): "temporary password"}
st.dataframe(
    pd.DataFrame(
        [
            {
                "account": a.name,
                "role": a.role,
                "sign-in": SIGN_IN[(bool(a.password_hash), a.must_change)],
                "disabled": a.disabled,
                "locked until (UTC)": f"{a.locked_until:%Y-%m-%d %H:%M}" if a.locked_until else "",
            }
            for a in people
        ]
    ),
    hide_index=True,
    width="stretch",
)


TEMPORARY = "Temporary: the user chooses their own at the next sign-in"
TEMPORARY_HELP = "Until then the account can do nothing else (you know this password; they should be the only one)."


def attempt(change, *args) -> None:
    try:
        change(store, actor, *args)
    except (InvalidRecord, StoreError) as error:
        st.error(str(error))
    else:
        st.session_state["accounts_saved"] = "Saved."
        st.session_state["account_changes"] = st.session_state.get("account_changes", 0) + 1  # confirmation cleared
        st.rerun()  # the table above shows the change at once


if message := st.session_state.pop("accounts_saved", None):
    st.success(message)


left, right = st.columns(2)
with left.form("new-account", clear_on_submit=True):
    st.markdown("**New account**")
    name = st.text_input("Account name")
    role = st.selectbox("Role", ROLES)
    password = st.text_input(
        "Password (at least 12 characters; empty: single sign-on only)", type="password", max_chars=MAX_PASSWORD
    )
    first_temporary = st.checkbox(TEMPORARY, value=True, key="new-temporary", help=TEMPORARY_HELP)
    if st.form_submit_button("Create"):
        if not password and not single_sign_on.single_sign_on_ready():  # it was made, listed and could never sign in
            st.error("Give a password: single sign-on is not set up, so an account without one could not sign in.")
        else:
            attempt(accounts.add_account, name.strip(), role, password or None, first_temporary)
with right.form(f"change-account-{st.session_state.get('account_changes', 0)}"):  # a new, empty form after a change
    st.markdown("**Change an account**")
    target = st.selectbox("Account", [a.name for a in people], index=None, placeholder="Choose an account")
    change = st.radio("Change", ["role", "password", "disable", "enable", "unlock"], index=None, horizontal=True)
    new_role = st.selectbox("New role (for a role change)", ROLES, index=None, placeholder="Choose a role")
    new_password = st.text_input("New password (for a password change)", type="password", max_chars=MAX_PASSWORD)
    reset_temporary = st.checkbox(
        TEMPORARY, value=True, key=f"reset-temporary-{st.session_state.get('account_changes', 0)}", help=TEMPORARY_HELP
    )
    confirmed = st.checkbox("I confirm this change")
    if st.form_submit_button("Apply"):
        if target is None or change is None or (change == "role" and new_role is None):
            st.error("Choose an account, a change and, for a role change, the new role.")
        elif not confirmed:
            st.warning(f"Nothing changed for {target}: tick 'I confirm this change', then press Apply again.")
        elif change == "role":
            attempt(accounts.set_role, target, new_role)
        elif change == "password":
            attempt(accounts.set_password, target, new_password, reset_temporary)
        elif change == "unlock":
            attempt(accounts.unlock, target)
        else:
            attempt(accounts.set_disabled, target, change == "disable")

st.subheader("Stored images")
try:
    kept_days = retention.retention_days()
except ValueError as error:  # nothing is deleted on a setting nobody can read
    st.error(f"Images cannot be purged: {error}.")
    st.stop()
st.caption(
    f"De-identified images of saved results are kept {kept_days} days for review "
    "(BTD_IMAGE_RETENTION_DAYS); older ones can be deleted now, except those of results nobody has reviewed yet "
    "(kept until they are). Results stay; deleting is an audit event."
)
days = st.number_input("Delete images older than (days)", 1, retention.MAX_RETENTION_DAYS, kept_days, key="purge_days")
purges = st.session_state.get("purges", 0)
purge_confirmed = st.checkbox(
    f"I confirm deleting the stored images older than {count_of(int(days), 'day')} of reviewed results",
    key=f"purge_ok_{purges}",
)
if st.button("Delete older images", type="secondary", disabled=not purge_confirmed):
    st.session_state["purges"] = purges + 1  # one confirmation, one deletion: the next run's box is unticked
    try:
        purged = retention.purge_images(store, resources.image_store(store), actor, int(days))
    except StoreError as error:
        st.error(str(error))
    else:
        kept = f"; {purged.kept_unread} kept, their results not reviewed yet" if purged.kept_unread else ""
        st.success(f"Deleted {purged.deleted} image(s){kept}.")
