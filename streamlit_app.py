"""Entry point: navigation between the pages. Each page runs its own set-up (see ui/page.py)."""

import streamlit as st

navigation = st.navigation(
    [
        st.Page("pages/scan.py", title="Scan", icon=":material/neurology:", default=True),
        st.Page("pages/statistics.py", title="Statistics", icon=":material/monitoring:"),
    ]
)
navigation.run()
