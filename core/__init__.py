"""Brain-tumour MRI triage: the domain (imaging, crop, classifier, storage, statistics). No Streamlit here."""
