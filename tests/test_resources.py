"""The process-wide set-up of the Streamlit app: no Keras reset and no full garbage collection after every run."""

from __future__ import annotations

import gc
import inspect

import keras
import pytest
from streamlit.runtime.scriptrunner import script_runner

from ui import resources


def test_streamlit_no_longer_resets_keras_after_each_script_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Streamlit calls its module-level ``_clean_problem_modules`` by name after every script run; with Keras
    imported it resets Keras there (TensorFlow's kernel cache emptied, ~0.2 s of CPU per upload). Once the app has
    its model, that hook leaves Keras alone. A Streamlit upgrade that moves the hook fails here."""
    assert "_clean_problem_modules" in inspect.getsource(script_runner.ScriptRunner._run_script)
    resets: list[int] = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *args, **kwargs: resets.append(1))
    monkeypatch.setattr(script_runner, "_clean_problem_modules", script_runner._clean_problem_modules)  # restored
    assert resources.keep_keras_state()
    script_runner._clean_problem_modules()
    assert resets == []
    keras.backend.clear_session()  # the spy itself works
    assert resets == [1]


def test_the_model_load_is_exempted_from_later_collections() -> None:
    resources._settle_heap()
    try:
        assert gc.get_freeze_count() > 1000  # pytest, TensorFlow and Keras objects at least
    finally:
        gc.unfreeze()  # the app freezes its own process once; the test process must not stay frozen
