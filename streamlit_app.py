"""Entry point: page set-up and navigation. The scan and statistics pages arrive with the app issue."""

import streamlit as st

st.set_page_config(page_title="Brain MRI triage", page_icon="🧠", layout="wide")
st.title("Brain MRI triage")
st.info(
    "The scan pipeline is available from the command line: `python -m core predict FILE...`. "
    "The scan and statistics pages are being built."
)
