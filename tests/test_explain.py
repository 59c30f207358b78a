"""Which layer a heat map comes from: the card's choice, fitted on validation tumours when a card is finished.

Model 3's last feature map (4 x 4) gave a heat map that peaked in the crop's top-left corner on every slice; its
16 x 16 stage's peak fell inside the tumour on 0.245 of 400 validation slices. The card names the layer, so the
app, the CLI and the report all draw the heat map from the stage that points best."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import ModelError
from core.model.analysis import analyse
from core.model.classifier import Classifier
from core.model.explain import Explainer, last_spatial_layer, stage_layers
from core.training import finish
from tests.scans import png_bytes, synthetic_slice, write_model_card


@pytest.fixture(scope="module")
def network_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("resnet")
    write_model_card(folder, name="m3", resnet_width=8)
    return folder


def card(folder: Path, name: str, explain: str | None = None) -> Path:
    """A card for the module's network, naming ``explain`` as its heat map's layer."""
    raw = json.loads((folder / "m3.json").read_text())
    raw["name"] = name
    if explain is not None:
        raw["explain"] = {"layer": explain}
    (folder / f"{name}.json").write_text(json.dumps(raw))
    return folder / f"{name}.json"


def test_the_stages_are_each_resolutions_last_feature_map_finest_first(network_folder: Path) -> None:
    model = Classifier.from_card(card(network_folder, "plain")).model
    stages = stage_layers(model)
    sizes = [int(layer.output.shape[1]) for layer in stages]
    assert len(stages) >= 3 and sizes == sorted(set(sizes), reverse=True)
    assert stages[-1] is last_spatial_layer(model)  # the coarsest stage is the default heat map's layer
    assert all(int(layer.output.shape[-1]) > 1 for layer in stages)  # not the input nor its standardisation
    names = [layer.name for layer in model.layers]
    for layer in stages:  # no later feature map of the same resolution
        later = model.layers[names.index(layer.name) + 1 :]
        assert not any(
            len(other.output.shape) == 4 and other.output.shape[1] == layer.output.shape[1] for other in later
        )


def test_a_card_names_the_layer_its_heat_maps_come_from(network_folder: Path) -> None:
    plain = Classifier.from_card(card(network_folder, "plain"))
    finest = stage_layers(plain.model)[0].name
    named = Classifier.from_card(card(network_folder, "named", explain=finest))
    assert named.card.explain_layer == finest and plain.card.explain_layer is None
    assert Explainer(plain).layer == last_spatial_layer(plain.model).name
    explainer = Explainer(named)
    assert explainer.layer == finest
    analysis = analyse(png_bytes(synthetic_slice(256, tumour=True)), named)
    heat = explainer.explain(analysis)
    assert heat.on_input.shape == (32, 32) and heat.on_scan.shape == (256, 256)
    assert heat.on_scan.min() >= 0.0 and heat.on_scan.max() <= 1.0


@pytest.mark.parametrize(("layer", "message"), [("nope", "no layer 'nope'"), ("logits", "no feature map")])
def test_a_card_naming_a_missing_or_flat_layer_is_refused(network_folder: Path, layer: str, message: str) -> None:
    classifier = Classifier.from_card(card(network_folder, f"bad-{layer}", explain=layer))
    with pytest.raises(ModelError, match=message):
        Explainer(classifier)


def test_the_fitted_layer_is_the_stage_whose_peaks_fall_inside_tumours_most_often(
    network_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    classifier = Classifier.from_card(card(network_folder, "plain"))
    stages = [layer.name for layer in stage_layers(classifier.model)]
    shares = dict(zip(stages, [0.1, 0.3, 0.3, 0.0, 0.0, 0.0][: len(stages)], strict=True))
    monkeypatch.setattr(finish, "_tumour_sections", lambda classifier, items, limit: ["one section"])
    monkeypatch.setattr(
        finish, "_peaks_inside", lambda explainer, sections: {"share": shares[explainer.layer], "n": len(sections)}
    )
    fitted = finish.fit_explain_layer(classifier, [])
    assert fitted["layer"] == stages[2]  # the best share; of two equal ones the coarser
    assert fitted["localisation_by_layer"] == shares and fitted["localisation"]["share"] == 0.3
    shares.update(dict.fromkeys(stages, None))  # no tumour slice to judge by: the last feature map, as before
    assert finish.fit_explain_layer(classifier, [])["layer"] == stages[-1]


def test_a_scans_view_makes_each_other_labels_heat_map_when_first_asked_for(tiny_classifier) -> None:
    """Every label's Grad-CAM was made up front for every scan (half a batch's CPU), though only the explained
    label's is shown until the reader picks another: those are made when first asked for, the same maps."""
    from dataclasses import replace

    import numpy as np

    from core.imaging import read_scan
    from core.model.analysis import analyse_scan
    from core.model.gate import REJECTED, GateResult
    from core.services.views import scan_view
    from tests.scans import png_bytes, synthetic_slice

    explainer = Explainer(tiny_classifier)
    analysis = analyse_scan(read_scan(png_bytes(synthetic_slice(256, tumour=True))), tiny_classifier)
    view = scan_view(analysis, explainer)
    assert list(view.heat) == [view.explained]  # the default's alone
    other = next(label for label in tiny_classifier.card.labels if label != view.explained)
    assert view.heat_of(other, None) is None  # without the explainer, not made
    made = view.heat_of(other, explainer)
    expected = np.round(explainer.heat_on_input(analysis.model_input, other) * 255).astype(np.uint8)
    assert made is not None and np.array_equal(made, expected) and other in view.heat
    assert view.overlay(other, 0.5).shape == (*view.crop.shape, 3)  # kept: no explainer needed again
    gate = GateResult(REJECTED, ("not a head",), 1.0)
    refused = scan_view(replace(analysis, prediction=replace(analysis.prediction, gate=gate)), explainer)
    assert refused.heat == {} and refused.heat_of(other, explainer) is None and refused.model_input is None


def test_a_scans_pictures_are_encoded_once_for_every_rerun_of_its_page(tiny_classifier) -> None:
    """Each rerun of a batch's page (any click, a reference typed) encoded every panel's pictures again: 0.55-0.67 s
    of a 40-scan page's rerun on these cores; the view keeps them."""
    import base64

    import cv2
    import numpy as np

    from core.imaging import read_scan
    from core.model.analysis import analyse_scan
    from core.services.views import scan_view

    view = scan_view(analyse_scan(read_scan(png_bytes(synthetic_slice(256, tumour=True))), tiny_classifier), None)
    crop = view.crop_b64()
    assert view.crop_b64() is crop  # the same string: not made again
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(crop), np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(decoded, view.crop)
    assert view.original_b64() is view.original_b64() and base64.b64decode(view.original_b64()) == view.original_png
    explained = scan_view(analyse_scan(read_scan(png_bytes(synthetic_slice(256, seed=3))), tiny_classifier),
                          Explainer(tiny_classifier))  # fmt: skip
    shown = explained.overlay_b64(explained.explained, 0.45)
    assert explained.overlay_b64(explained.explained, 0.45) is shown
    assert explained.overlay_b64(explained.explained, 0.6) != shown  # another opacity: made for it


def test_a_heat_map_of_an_uncropped_input_lands_where_its_input_was_padded_not_stretched() -> None:
    """A card reading the whole slice (no crop) pads it to a square; its heat map was stretched back over the
    slice instead: a band along the input's top came back half as deep again (75 rows of 300, not 50)."""
    from types import SimpleNamespace

    import numpy as np

    from core.model.explain import to_scan
    from core.model.preprocess import input_to_image

    height, width = 300, 400  # wider than high: padded above and below to 400 x 400 (50 rows each)
    on_input = np.zeros((128, 128), np.float32)
    on_input[:32] = 1.0  # the input's top quarter: 100 rows of the square, 50 of them padding
    analysis = SimpleNamespace(scan=SimpleNamespace(pixels=np.zeros((height, width), np.uint8)), region=None)
    on_scan = to_scan(on_input, analysis, cropped=False)
    assert on_scan.shape == (height, width) and on_scan[:45].mean() > 0.95 and on_scan[56:].max() == 0
    assert np.array_equal(on_scan, input_to_image(on_input, None, (height, width)))  # the lesion map's inverse
