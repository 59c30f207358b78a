"""The classifier: built from its card, hash-checked, calibrated, binary or 4-class, safe across threads."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from core.errors import ModelError
from core.model.analysis import analyse
from core.model.card import ModelCard
from core.model.classifier import Classifier, calibrated_probabilities
from core.model.preprocess import InputSpec, to_model_input
from tests.scans import png_bytes, synthetic_slice, write_model_card


def test_four_class_prediction_follows_the_card(tiny_classifier: Classifier) -> None:
    prediction = analyse(png_bytes(synthetic_slice(512, tumour=True)), tiny_classifier).prediction
    assert set(prediction.probabilities) == {"glioma", "meningioma", "notumor", "pituitary"}
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert prediction.tumour_probability == pytest.approx(1 - prediction.probabilities["notumor"])
    # the verdict agrees with the tumour probability shown beside it (core.classifier.decide)
    assert (prediction.label == "notumor") == (prediction.tumour_probability < 0.5)
    assert prediction.model_name == "tiny" and prediction.model_version == "0.0.1-test"
    assert set(prediction.timings_ms) == {"read", "crop", "preprocess", "predict", "decide", "total"}
    x0, y0, x1, y1 = prediction.roi
    assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
    assert json.loads(json.dumps(prediction.to_json()))["model"] == {"name": "tiny", "version": "0.0.1-test"}


def test_binary_sigmoid_model_like_the_flask_app(tmp_path: Path) -> None:
    classifier = Classifier.from_card(write_model_card(tmp_path, output="sigmoid", channels=3, size=40, name="flask"))
    prediction = analyse(png_bytes(synthetic_slice(256)), classifier).prediction
    assert set(prediction.probabilities) == {"notumor", "tumour"}
    expected = "tumour" if prediction.probabilities["tumour"] >= 0.5 else "notumor"
    assert prediction.label == expected
    assert prediction.tumour_probability == pytest.approx(prediction.probabilities["tumour"])


def test_refuses_weights_whose_hash_differs_from_the_card(tmp_path: Path, tiny_card: Path) -> None:
    shutil.copy(tiny_card, tmp_path / tiny_card.name)
    weights = tmp_path / "tiny.keras"
    shutil.copy(tiny_card.parent / "tiny.keras", weights)
    with weights.open("ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(ModelError, match="does not match its card"):
        Classifier.from_card(tmp_path / tiny_card.name)


def test_refuses_missing_weights_and_malformed_cards(tmp_path: Path) -> None:
    card = tmp_path / "card.json"
    card.write_text(
        json.dumps(
            {
                "name": "x",
                "version": "1",
                "labels": ["a", "notumor"],
                "output": "logits",
                "input": {"size": 32, "scaling": "unit"},
                "weights": {"file": "none.keras", "sha256": "0" * 64},
            }
        )
    )
    with pytest.raises(ModelError, match="missing"):
        Classifier.from_card(card)
    for text in ("{not json", "[" * 100_000 + "]" * 100_000):  # nested past Python's depth: a RecursionError
        card.write_text(text)
        with pytest.raises(ModelError, match="not valid JSON"):
            ModelCard.from_file(card)
    with pytest.raises(ModelError, match="is a folder"):  # it said "not valid JSON"
        ModelCard.from_file(card.parent)
    card.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ModelError, match="incomplete"):
        ModelCard.from_file(card)
    other = {"name": "x", "version": "1", "labels": ["a", "normal"], "negative_label": "normal", "output": "logits"}
    weights = {"file": "w.keras", "sha256": "0" * 64}
    card.write_text(json.dumps(other | {"input": {"size": 32, "scaling": "unit"}, "weights": weights}))
    with pytest.raises(ModelError, match="negative label must be 'notumor'"):  # statistics count against that name
        ModelCard.from_file(card)
    good = other | {"labels": ["a", "notumor"], "negative_label": "notumor", "weights": weights}
    card.write_text(json.dumps(good | {"input": {"size": 32}}))  # the pixels' scaling not stated: never guessed
    with pytest.raises(ModelError, match="scaling"):
        ModelCard.from_file(card)
    card.write_text(json.dumps(good | {"input": {"size": 32, "scaling": "unit"}, "calibration": None}))
    assert ModelCard.from_file(card).temperature == 1.0  # a null calibration: none fitted, not a traceback
    card.write_text(json.dumps(good | {"input": {"size": 32, "scaling": "unit"}, "calibration": [1.5]}))
    with pytest.raises(ModelError, match="incomplete or malformed"):
        ModelCard.from_file(card)


def test_refuses_a_model_whose_shape_disagrees_with_its_card(tmp_path: Path) -> None:
    path = write_model_card(tmp_path, size=32)
    card = json.loads(path.read_text())
    card["input"]["size"] = 64
    path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="takes input"):
        Classifier.from_card(path)


def test_temperature_softens_without_changing_the_ranking(tiny_card: Path) -> None:
    card = ModelCard.from_file(tiny_card)
    logits = np.array([[2.0, 0.5, -1.0, 0.0]])
    sharp = calibrated_probabilities(logits, card)
    soft = calibrated_probabilities(logits, ModelCard(**{**card.__dict__, "temperature": 2.0}))
    assert sharp.argmax() == soft.argmax() and soft.max() < sharp.max()
    assert soft.sum() == pytest.approx(1.0)


def test_concurrent_sessions_get_their_own_answers(tiny_classifier: Classifier) -> None:
    spec: InputSpec = tiny_classifier.card.input
    images = [synthetic_slice(128, tumour=i % 2 == 0, seed=i) for i in range(16)]
    inputs = [to_model_input(img, (0, 0, 128, 128), spec)[None] for img in images]
    # Make the inputs clearly different so cross-talk would show.
    inputs = [x * (0.2 + 0.05 * i) for i, x in enumerate(inputs)]
    expected = [tiny_classifier.probabilities(x)[0] for x in inputs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda k: tiny_classifier.probabilities(inputs[k % 16])[0], range(160)))
    for k, result in enumerate(results):
        np.testing.assert_allclose(result, expected[k % 16], rtol=1e-5, atol=1e-6)


def test_the_shipped_card_states_its_use_limits_sources_and_rules() -> None:
    """What a reader of the card (and of every PDF report, which quotes it) is told: the intended use, the limits,
    every training source with its licence, the split it was judged on, and the rules the app applies."""
    from core.config import MODELS_DIR, model_card_path

    path = model_card_path()
    if path.parent != MODELS_DIR:
        pytest.skip("BTD_MODEL names a candidate: the shipped card is checked when it is served")
    raw = json.loads(path.read_text())
    card = ModelCard.from_file(path)
    assert card.weights_path.is_file() and (path.parent / raw["data"]["split_file"]).is_file()
    assert "radiologist" in raw["intended_use"] and len(raw["limitations"]) >= 4
    assert all(len(limit) > 40 for limit in raw["limitations"])
    # printed in every PDF report: a radiologist's words, never a repository path nor an institution's code name
    # (it cited "docs/model-report.md", "bench/heat_layers.py" and "institution CS"); its FLAIR figure is the card's
    # own (it said 91 % where the card holds 0.9045)
    import re

    said = " ".join(raw["limitations"])
    assert not re.search(r"docs/|bench/|\.py\b|\.md\b|\binstitution (CS|DU|FG)\b", said), said
    lgg = raw["metrics"]["validation"]["per_source"]["LGG"]["targets"]["all"]
    for stated in re.findall(r"FLAIR (\d+) %", said):
        assert int(stated) == round(100 * lgg["sensitivity_by_sequence"]["flair"]["value"])
    sources = {source["folder"]: source for source in raw["data_sources"]}
    assert {"Training", "LGG", "Normal-heads", "Web-tumour"} <= set(sources)
    assert all(source["licence"] and source["what"] for source in sources.values())
    assert raw["decision"] and raw["gate"] and raw["series"], "the app applies these rules"
    assert raw["version"].split("+")[1].startswith(card.weights_sha256[:8]), "the version names its weights"


def test_a_malformed_input_gate_in_the_card_is_a_model_error_the_pages_handle() -> None:
    """A learned check without its numbers raised KeyError from the Classifier's constructor: a traceback on the
    Scan page, which handles ModelError."""
    from core.model.gate import GatePolicy

    for gate in (
        {"learned": [{"name": "x"}]},
        {"learned": [{"name": "x", "reason": "r", "mean": [0], "scale": [1], "weights": ["w"], "bias": 0}]},
        {"max_area": "most"},
        {"max_energy": float("nan")},
        {"learned": 3},
    ):
        with pytest.raises(ModelError, match="input gate is malformed"):
            GatePolicy.from_card(gate)
    assert GatePolicy.from_card({"max_area": 0.9}).max_area == 0.9 and GatePolicy.from_card(None).checks == ()


def test_a_card_write_cut_short_leaves_the_card_as_it_was(tmp_path: Path, monkeypatch) -> None:
    """Cards were written in place: a refit that died mid-write left the shipped card unreadable."""
    import os

    from core.training.card_io import write_card

    card = tmp_path / "card.json"
    write_card(card, {"name": "x", "version": "1"})
    before = card.read_bytes()

    def cut(*args) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", cut)
    with pytest.raises(OSError):
        write_card(card, {"name": "x", "version": "2"})
    assert card.read_bytes() == before and json.loads(before)["version"] == "1"


def test_a_model_output_that_is_not_a_number_decides_nothing(
    tiny_classifier: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN >= threshold is False: a NaN output read as a confident "no tumour" that the gate let through, and its
    record then failed validation outside any handler (the rest of the batch was lost)."""
    from core.errors import NoModelAnswer
    from core.imaging.scan import read_scan
    from core.model.analysis import analyse_scans
    from core.services.triage import analyse_upload

    real = tiny_classifier.scores_and_embedding

    def poisoned(batch: np.ndarray):
        raw, calibrated, embedding = (np.array(a) for a in real(batch))
        raw[0], calibrated[0] = np.nan, np.nan  # the first image of every batch
        return raw, calibrated, embedding

    monkeypatch.setattr(tiny_classifier, "scores_and_embedding", poisoned)
    outcome = analyse_upload(png_bytes(synthetic_slice(256, tumour=True)), tiny_classifier)
    assert outcome.analysis is None and outcome.error_code == "no_model_answer"
    assert "no usable answer" in outcome.error_message
    scans = [read_scan(png_bytes(synthetic_slice(256, tumour=k == 1, seed=k))) for k in range(3)]
    first, second, third = analyse_scans(scans, tiny_classifier)
    assert isinstance(first, NoModelAnswer)  # the others are still read, each in its place
    assert second.scan is scans[1] and third.scan is scans[2]
    assert all(np.isfinite(list(a.prediction.probabilities.values())).all() for a in (second, third))


def test_a_card_whose_two_thresholds_disagree_is_refused(tmp_path: Path, tiny_card: Path) -> None:
    """A threshold under "decision" was silently ignored beside the top-level one training always writes."""
    raw = json.loads(tiny_card.read_text())
    raw["threshold"], raw["decision"] = 0.5, {"threshold": 0.35, "review_band": [0.1, 0.9]}
    card = tmp_path / "card.json"
    card.write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="two thresholds"):
        ModelCard.from_file(card)
    raw["decision"]["threshold"] = 0.5  # the same threshold twice is fine
    card.write_text(json.dumps(raw))
    assert ModelCard.from_file(card).rule.threshold == 0.5
