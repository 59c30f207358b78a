"""Streamlit glue shared by the pages: page set-up, cached resources, small render helpers. No business rules."""
