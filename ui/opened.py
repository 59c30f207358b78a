"""The results a session has opened (Worklist, History): the few it looks at now, their images kept as opened and
their record and reviews read again on every run, so that a review saved in another session shows at once; older
ones are let go (each holds a series' sections at display size) and opened again, as an audit event, when asked."""

from __future__ import annotations

import streamlit as st

from core.services import reviews
from core.services.access import Actor
from ui import resources

KEPT = 4  # opened results a session keeps at once (the current one, a prior, and the last few looked at)
ORDER = "opened-order"


def opened_result(store, actor: Actor, result_id: str, classifier, explainer) -> reviews.OpenedResult:
    """The opened result ``result_id``: opened (an audit event) the first time, as it stands now after that.
    Raises the store's errors and :class:`core.errors.InvalidRecord` (the result is gone) for the page to say."""
    key = f"opened-{result_id}"
    if key in st.session_state:
        st.session_state[key] = reviews.as_it_stands(store, actor, st.session_state[key])
    else:
        st.session_state[key] = reviews.open_result(
            store, resources.image_store(store), actor, result_id, classifier, explainer
        )
    order = [k for k in st.session_state.get(ORDER, []) if k != key] + [key]
    for dropped in order[:-KEPT]:
        st.session_state.pop(dropped, None)
    st.session_state[ORDER] = order[-KEPT:]
    return st.session_state[key]
