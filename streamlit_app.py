"""Entry point: the pages a signed-in user's role may use (a visitor sees the sign-in form only). Each page runs
its own set-up and role check (see ui/page.py): hiding a page is convenience, the services enforce the roles."""

import streamlit as st

from core.services.access import ACCOUNTS, AUDIT_READ, STATISTICS, WORKLIST, allowed
from ui import auth

actor = auth.current_actor()
if actor is None:
    navigation = st.navigation([st.Page(auth.sign_in_screen, title="Sign in", icon=":material/login:")])
else:
    pages = []
    if allowed(actor, WORKLIST):
        pages += [
            st.Page("pages/scan.py", title="Scan", icon=":material/neurology:", default=True),
            st.Page("pages/study.py", title="Study", icon=":material/view_in_ar:"),
            st.Page("pages/worklist.py", title="Worklist", icon=":material/checklist:"),
            st.Page("pages/history.py", title="History", icon=":material/history:"),
        ]
    if allowed(actor, STATISTICS):
        pages.append(st.Page("pages/statistics.py", title="Statistics", icon=":material/monitoring:"))
    if allowed(actor, AUDIT_READ):
        pages.append(st.Page("pages/audit.py", title="Audit trail", icon=":material/policy:"))
    if allowed(actor, ACCOUNTS):
        pages.append(st.Page("pages/accounts.py", title="Accounts", icon=":material/group:"))
    navigation = st.navigation(pages)
navigation.run()
