"""An ensemble of trained models as one network and one card (``python -m core ensemble``).

The network must give exactly what its members give through the app's own path (each member's preprocessing,
network and calibration, then the mean of log-probabilities), so that every caller runs it as any other model."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.cli import main
from core.model.analysis import analyse
from core.model.card import ModelCard
from core.model.classifier import Classifier, calibrated_probabilities, embedding_layer
from core.model.explain import Explainer, stage_layers
from core.model.layers import PercentileMirror
from core.model.preprocess import InputSpec, square_to_input, to_model_input
from core.model.roi import find_brain
from core.training.ensemble import build_ensemble, write_ensemble
from tests.scans import png_bytes, synthetic_slice, write_model_card

LABELS = ("glioma", "meningioma", "notumor", "pituitary")


def squares(size: int) -> list[np.ndarray]:
    """Brain crops with and without a tumour, a flat one (no contrast at all) and noise, as uint8 squares."""
    rng = np.random.default_rng(0)
    slices = [synthetic_slice(2 * size, tumour=t, seed=s) for t, s in ((True, 1), (False, 2))]
    made = [cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA) for image in slices]
    return [*made, np.full((size, size), 7, np.uint8), rng.integers(0, 256, (size, size)).astype(np.uint8)]


@pytest.mark.parametrize("size", [32, 128])
def test_the_round_2_input_computed_inside_the_network_equals_the_numpy_path(size: int) -> None:
    spec = InputSpec(size=size, channels=2, crop=True, scaling="percentile", mirror=True)
    crops = squares(size)
    expected = np.stack([square_to_input(square, spec) for square in crops])
    computed = np.asarray(PercentileMirror()(np.stack([c.astype(np.float32) / 255.0 for c in crops])[..., None]))
    assert computed.shape == expected.shape == (4, size, size, 2)
    assert np.abs(computed - expected).max() < 1e-5
    assert computed[2].max() == 0.0  # a flat crop: nothing to scale, as in the NumPy path
    assert expected[1, :, :, 1].max() > 0.05  # the mirror channel is not trivially zero


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A model-3 network (width 8) and a round-2 style network (percentile scaling, mirror channel), each with a
    calibration of its own, at 32 px, and the first one's split file."""
    folder = tmp_path_factory.mktemp("members")
    first = write_model_card(
        folder, name="m3", resnet_width=8, calibration={"temperature": 1.3, "logit_bias": {"notumor": 0.4}}
    )
    second = write_model_card(folder, name="cnn2", mirror=True, calibration={"temperature": 0.8})
    (folder / "m3.split.json").write_text(json.dumps({"validation": []}))
    return first, second


def test_the_ensemble_gives_the_mean_of_its_members_calibrated_log_probabilities(members, tmp_path: Path) -> None:
    card = write_ensemble(list(members), tmp_path, "pytest")
    ensemble = Classifier.from_card(tmp_path / "btd-ensemble.json")
    parts = [Classifier.from_card(path) for path in members]
    images = [synthetic_slice(160, tumour=t, seed=s) for t, s in ((True, 3), (False, 4), (True, 5))]
    boxes = [find_brain(image).box for image in images]

    def inputs(spec: InputSpec) -> np.ndarray:
        return np.stack([to_model_input(image, box, spec) for image, box in zip(images, boxes, strict=True)])

    raw = ensemble.scores(inputs(ensemble.card.input))[0]
    calibrated = [calibrated_probabilities(p.scores(inputs(p.card.input))[0], p.card) for p in parts]
    expected = np.mean([np.log(p) for p in calibrated], axis=0)
    assert np.abs(raw - expected).max() < 1e-4
    assert [m["sha256"] for m in card["members"]] == [p.card.weights_sha256 for p in parts]
    assert [m["temperature"] for m in card["members"]] == [1.3, 0.8]
    assert (tmp_path / "btd-ensemble.split.json").read_text() == members[0].with_name("m3.split.json").read_text()
    # every caller runs it as a model: the gate reads model 3's features; heat maps come from the last stage of each
    # resolution, every member's layers being flat: the one nearer the output where both have one (see the module)
    assert embedding_layer(ensemble.model).name == "features"
    stages = {int(layer.output.shape[1]): layer.name for layer in stage_layers(parts[0].model)}
    stages |= {int(layer.output.shape[1]): f"member_1_{layer.name}" for layer in stage_layers(parts[1].model)}
    assert [layer.name for layer in stage_layers(ensemble.model)] == [stages[s] for s in sorted(stages, reverse=True)]
    assert any(name.startswith("member_1_") for name in stages.values()), "the round-2 member's stages are reachable"
    analysis = analyse(png_bytes(images[0]), ensemble)
    assert set(analysis.prediction.probabilities) == set(ensemble.card.labels)
    assert Explainer(ensemble).explain(analysis).on_scan.shape == images[0].shape


def test_members_that_cannot_share_one_input_are_refused(members, tmp_path: Path) -> None:
    first, second = (ModelCard.from_file(path) for path in members)
    other_size = ModelCard.from_file(write_model_card(tmp_path, name="big", mirror=True, size=64))
    sigmoid = ModelCard.from_file(write_model_card(tmp_path, name="sig", output="sigmoid"))
    with pytest.raises(ValueError, match="two or more"):
        build_ensemble([first])
    with pytest.raises(ValueError, match="an ensemble member takes"):
        build_ensemble([first, other_size])
    with pytest.raises(ValueError, match="the first member takes"):
        build_ensemble([second, first])
    with pytest.raises(ValueError, match="one logit per label"):
        build_ensemble([first, sigmoid])
    softmax = ModelCard.from_file(write_model_card(tmp_path, name="soft", mirror=True, output="softmax"))
    with pytest.raises(ValueError, match="one logit per label"):  # its probabilities would be read as logits
        build_ensemble([first, softmax])
    with pytest.raises(ValueError, match="one chain of layers"):  # a ResNet's shortcuts: only the first may have them
        build_ensemble([first, first])


def test_a_later_member_is_copied_whole_or_refused() -> None:
    """A Sequential model does not list its input layer, and a second output would be dropped: both refused."""
    import keras
    from keras import layers

    from core.training.ensemble import _chained

    crops = keras.Input((8, 8, 1))
    sequential = keras.Sequential([keras.Input((8, 8, 1)), layers.Rescaling(2.0), layers.Flatten(), layers.Dense(4)])
    with pytest.raises(ValueError, match="from input to output"):
        _chained(sequential, crops, "member_1_")
    inputs = keras.Input((8, 8, 1))
    flat = layers.Flatten()(inputs)
    two = keras.Model(inputs, [layers.Dense(4)(flat), layers.Dense(2)(flat)])
    with pytest.raises(ValueError, match="from input to output"):
        _chained(two, crops, "member_1_")
    trailing = keras.Model(inputs, keras.ops.softmax(layers.Dense(4)(flat)))
    with pytest.raises(ValueError, match="from input to output"):  # an operation that is not a layer: left out
        _chained(trailing, crops, "member_1_")
    between = keras.Model(inputs, layers.Dense(4)(layers.Rescaling(2.0)(inputs)[:, 0, 0, :]))
    with pytest.raises(ValueError, match="one chain of layers"):
        _chained(between, crops, "member_1_")
    whole = keras.Model(inputs, layers.Dense(4)(layers.Flatten()(layers.Rescaling(2.0)(inputs))))
    copied = keras.Model(crops, _chained(whole, crops, "member_1_"))
    sample = np.random.default_rng(0).random((2, 8, 8, 1)).astype(np.float32)
    assert np.allclose(copied.predict(sample, verbose=0), whole.predict(sample, verbose=0), atol=1e-6)
    assert [layer.name.startswith("member_1_") for layer in copied.layers[1:]] == [True, True, True]


def test_the_cli_writes_the_ensemble_and_refuses_one_member(members, tmp_path: Path, capsys) -> None:
    first, second = members
    assert main(["ensemble", "--member", str(first), "--member", str(second), "--out", str(tmp_path / "e")]) == 0
    written = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in written["members"]] == ["m3", "cnn2"] and written["version"].startswith("3.0.0+")
    assert (tmp_path / "e" / "btd-ensemble.keras").is_file()
    assert main(["ensemble", "--member", str(first), "--out", str(tmp_path / "f")]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "bad_input" and "two or more" in error["message"]
    assert not (tmp_path / "f").exists()


@pytest.mark.training
def test_an_ensemble_card_is_finished_like_any_model(members, tmp_path: Path) -> None:
    """Calibration on top of the members', the decision rule, the gate and the heat map's layer, fitted on the
    first member's validation split of a generated collection."""
    from tests.test_standard import make_root

    root = make_root(tmp_path / "data")
    validation = [[f"Training/{label}/{i}.png", label] for label in LABELS for i in (0, 1)]
    first = members[0].with_name("m3.json")
    folder = tmp_path / "members"
    folder.mkdir()
    for path in [*members, *(p.with_suffix(".keras") for p in members)]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "m3.split.json").write_text(json.dumps({"validation": validation}))
    card = write_ensemble([folder / first.name, folder / members[1].name], tmp_path / "e", "pytest", root)
    assert card["metrics"]["validation"]["n"] == len(validation)
    assert card["calibration"]["temperature"] > 0 and len(card["decision"]["review_band"]) == 2
    stages = [layer.name for layer in stage_layers(Classifier.from_card(folder / first.name).model)]
    assert card["explain"]["layer"] in stages
    assert "max_energy" in card["gate"]
    finished = Classifier.from_card(tmp_path / "e" / "btd-ensemble.json")
    assert finished.card.rule.review_band == tuple(card["decision"]["review_band"])


def test_a_softmax_models_calibration_is_fitted_on_the_log_probabilities_it_is_served_with(tmp_path: Path) -> None:
    """The app calibrates a softmax model's log-probabilities; fitting on its raw probabilities fitted another
    function than the one served."""
    from core.model.classifier import Classifier
    from core.training.finish import raw_logits
    from core.training.sources import Item

    soft = Classifier.from_card(write_model_card(tmp_path, name="soft", mirror=True, output="softmax"))
    items = []
    for k in range(3):
        path = tmp_path / f"scan-{k}.png"
        path.write_bytes(png_bytes(synthetic_slice(128, seed=k)))
        items.append(Item(path, "glioma", "Training"))
    logits, kept = raw_logits(soft, items)
    assert len(kept) == 3 and np.allclose(np.exp(logits).sum(axis=1), 1.0, atol=1e-4) and (logits <= 0).all()
