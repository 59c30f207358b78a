"""The lesion segmenter's geometry, measures, card and place in the pipeline (an untrained network: the figures of
the trained one are model-quality checks on ../shared data, in its card)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.errors import ModelError
from core.imaging.geometry import pixel_spacing
from core.model.analysis import analyse
from core.model.classifier import Classifier, with_segmenter
from core.model.lesion import (
    LesionCard,
    Segmenter,
    area_mm2,
    lesion_of,
    sections_spanned,
    volume_ml,
)
from core.model.preprocess import InputSpec, input_to_image, to_model_input
from core.model.roi import find_brain
from tests.scans import dicom_bytes, png_bytes, sandboxed, synthetic_slice

ROOT = Path(__file__).resolve().parents[1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.parametrize(
    ("shape", "box", "size"),
    [((256, 256), (30, 40, 230, 220), 128), ((512, 384), (20, 60, 370, 480), 128), ((240, 320), None, 96)],
)
def test_a_known_mask_goes_through_crop_model_input_and_back_with_dice_at_least_0_98(shape, box, size) -> None:
    truth = np.zeros(shape, np.uint8)
    cv2.ellipse(truth, (shape[1] // 2 + 10, shape[0] // 2 - 5), (40, 25), 30, 0, 360, 255, -1)
    spec = InputSpec(size, 1, crop=True, scaling="unit")
    on_input = to_model_input(truth, box, spec)[..., 0]  # the mask as the model sees it (x / 255)
    back = input_to_image(on_input, box, shape) >= 0.5
    assert back.shape == shape
    assert dice(back, truth > 0) >= 0.98
    if box is not None:  # nothing lands outside the brain box
        x0, y0, x1, y1 = box
        outside = back.copy()
        outside[y0:y1, x0:x1] = False
        assert not outside.any()


def test_area_outline_and_volume_follow_the_spacing() -> None:
    probability = np.zeros((100, 120), np.float32)
    probability[20:40, 30:60] = 0.9  # 20 x 30 = 600 pixels
    lesion = lesion_of(probability, 0.5, (0.5, 0.8))
    assert lesion.area_px == 600 and lesion.area_mm2 == pytest.approx(600 * 0.4)
    assert len(lesion.outline) == 1
    xs, ys = lesion.outline[0][:, 0], lesion.outline[0][:, 1]
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (30, 59, 20, 39)
    assert lesion_of(probability, 0.5).area_mm2 is None  # no spacing: pixels only
    assert lesion_of(np.zeros((10, 10)), 0.5).outline == []
    assert area_mm2(100, None) is None
    assert volume_ml([600, 600, 0], (0.5, 0.8), 5.0) == pytest.approx(2 * 600 * 0.4 * 5.0 / 1000)
    assert volume_ml([600], None, 5.0) is None and volume_ml([600], (1.0, 1.0), None) is None
    assert volume_ml([600], (1.0, 1.0), 0.0) is None
    assert sections_spanned([0, 3, 0, 5, 0]) == (1, 3) and sections_spanned([0, 0]) is None


def test_pixel_spacing_is_read_from_dicom_facts_and_refused_when_malformed() -> None:
    class Scan:
        def __init__(self, facts: dict[str, str]) -> None:
            self.acquisition = facts

    assert pixel_spacing(Scan({"PixelSpacing": "0.5\\0.75"})) == (0.5, 0.75)
    for bad in ({}, {"PixelSpacing": "0.5"}, {"PixelSpacing": "a\\b"}, {"PixelSpacing": "0\\1"}):
        assert pixel_spacing(Scan(bad)) is None


def test_a_lesion_card_must_match_its_weights(tiny_lesion_card: Path, tmp_path: Path) -> None:
    card = json.loads(tiny_lesion_card.read_text())
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**card, "weights": {**card["weights"], "sha256": "0" * 64}}))
    (tmp_path / card["weights"]["file"]).write_bytes((tiny_lesion_card.parent / card["weights"]["file"]).read_bytes())
    with pytest.raises(ModelError, match="does not match its card"):
        Segmenter.from_card(broken)
    broken.write_text("{not json")
    with pytest.raises(ModelError, match="cannot be read"):
        LesionCard.from_file(broken)


def test_the_segmenter_maps_back_onto_each_slice_and_the_analysis_carries_the_lesion(
    tiny_card: Path, tiny_lesion_card: Path
) -> None:
    segmenter = Segmenter.from_card(tiny_lesion_card)
    pixels = synthetic_slice(200)
    box = find_brain(pixels).box
    (probability,) = segmenter.probabilities([pixels], [box])
    assert probability.shape == pixels.shape and probability.dtype == np.float32
    x0, y0, _, _ = box
    assert probability[:y0].max(initial=0) == 0 and probability[:, :x0].max(initial=0) == 0  # zero outside the box
    classifier = with_segmenter(Classifier.from_card(tiny_card), tiny_lesion_card)
    data = dicom_bytes(pixels.astype(np.uint16) * 16, extra={"PixelSpacing": [0.5, 0.5]})
    analysis = analyse(data, classifier)
    assert analysis.lesion is not None and analysis.lesion.mask.shape == pixels.shape
    # threshold 1e-9: the whole brain box is "lesion", 0.25 mm^2 a pixel
    x0, y0, x1, y1 = analysis.region.box
    assert analysis.lesion.area_px == (x1 - x0) * (y1 - y0)
    assert analysis.lesion.area_mm2 == pytest.approx(analysis.lesion.area_px * 0.25)
    assert "segment" in analysis.prediction.timings_ms
    assert with_segmenter(Classifier.from_card(tiny_card), None).segmenter is None
    assert analyse(png_bytes(pixels), Classifier.from_card(tiny_card)).lesion is None  # none loaded: none drawn


def test_a_slice_the_gate_refused_gets_no_lesion_and_its_record_no_area(
    tiny_card: Path, tiny_lesion_card: Path
) -> None:
    """Nothing is measured on what is not read as a brain MRI: no outline, no area saved (a refused scan is saved
    as refused, and History would otherwise count its area as a lesion size)."""
    from dataclasses import replace

    from core.model.analysis import with_lesions
    from core.model.gate import REJECTED, GateResult
    from core.services.triage import new_record

    plain = analyse(png_bytes(synthetic_slice(160)), Classifier.from_card(tiny_card))
    refused = replace(plain, prediction=replace(plain.prediction, gate=GateResult(REJECTED, ("not a head",), 1.0)))
    accepted, rejected = with_lesions([plain, refused], Segmenter.from_card(tiny_lesion_card))
    assert accepted.lesion is not None and accepted.lesion.area_px > 0  # threshold 1e-9: the whole box
    assert "segment" in accepted.prediction.timings_ms
    assert rejected.lesion is None and "segment" not in rejected.prediction.timings_ms
    assert new_record(accepted, patient_ref=None, uploader="u").lesion_px == accepted.lesion.area_px
    record = new_record(rejected, patient_ref=None, uploader="u")
    assert record.gate == REJECTED and record.lesion_px is None and record.lesion_mm2 is None


@pytest.mark.heavy
def test_predict_writes_a_lesion_mask_of_each_inputs_size_and_reports_its_area(
    tmp_path: Path, tiny_card: Path, tiny_lesion_card: Path
) -> None:
    scan = tmp_path / "case.png"
    scan.write_bytes(png_bytes(synthetic_slice(180)))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "other").mkdir()
    namesake = tmp_path / "other" / "case.png"  # the same file name from another folder: its own mask
    namesake.write_bytes(png_bytes(synthetic_slice(150, seed=2)))
    env = sandboxed({"PATH": "/usr/bin:/bin", "BTD_LESION_MODEL": str(tiny_lesion_card), "TF_CPP_MIN_LOG_LEVEL": "3"})
    env |= {"KERAS_BACKEND": os.environ["KERAS_BACKEND"]} if "KERAS_BACKEND" in os.environ else {}
    command = [sys.executable, "-m", "core", "predict", "--model", str(tiny_card), "--lesion-masks"]
    done = subprocess.run(
        [*command, str(tmp_path / "masks"), str(scan), str(tmp_path / "empty.png"), str(namesake)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["lesion_px"] > 0 and lines[0]["lesion_mm2"] is None  # a PNG has no spacing
    mask = cv2.imread(lines[0]["lesion_mask"], cv2.IMREAD_UNCHANGED)
    assert mask.shape == (180, 180) and set(np.unique(mask)) <= {0, 255}
    assert int((mask == 255).sum()) == lines[0]["lesion_px"]
    assert "error" in lines[1] and "lesion_mask" not in lines[1]
    assert Path(lines[0]["lesion_mask"]).name == "case.png.lesion.png"
    assert Path(lines[2]["lesion_mask"]).name == "case.png-2.lesion.png"
    assert cv2.imread(lines[2]["lesion_mask"], cv2.IMREAD_UNCHANGED).shape == (150, 150)
    assert cv2.imread(lines[0]["lesion_mask"], cv2.IMREAD_UNCHANGED).shape == (180, 180)  # not overwritten
    off = subprocess.run(
        [*command, str(tmp_path / "masks"), str(scan)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**env, "BTD_LESION_MODEL": "none"},
        timeout=300,
    )
    assert json.loads(off.stdout)["error"]["code"] == "no_lesion_model" and off.returncode == 2


@pytest.mark.parametrize(
    ("orientation", "turn"),
    [
        ([-1, 0, 0, 0, -1, 0], lambda a: a[::-1, ::-1]),  # stored upside down and mirrored: shown turned
        ([0, 1, 0, 1, 0, 0], lambda a: a.T),  # stored transposed
    ],
)
def test_a_dicom_slices_lesion_mask_is_written_in_the_files_own_pixel_order(
    tmp_path: Path, tiny_card: Path, tiny_lesion_card: Path, monkeypatch, capsys, orientation, turn
) -> None:
    """The mask was in the displayed (radiological) order: laid on the file's pixel array it put the lesion in the
    other hemisphere, and a transposed file's mask was not even its size."""
    from core.cli import main

    monkeypatch.setenv("BTD_LESION_MODEL", str(tiny_lesion_card))
    stored = (synthetic_slice(240, tumour=True)[:, 20:] * 16).astype(np.uint16)  # 240 rows, 220 columns
    path = tmp_path / "slice.dcm"
    path.write_bytes(dicom_bytes(stored, extra={"ImageOrientationPatient": orientation}))
    assert main(["predict", "--model", str(tiny_card), "--lesion-masks", str(tmp_path / "masks"), str(path)]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    mask = cv2.imread(line["lesion_mask"], cv2.IMREAD_UNCHANGED)
    assert mask.shape == stored.shape and int((mask == 255).sum()) == line["lesion_px"]
    x0, y0, x1, y1 = line["roi"]  # the test segmenter marks the brain box, given in the displayed view
    shown = np.zeros((line["image"]["height"], line["image"]["width"]), np.uint8)
    shown[y0:y1, x0:x1] = 255
    assert shown.shape != mask.shape or not np.array_equal(shown, mask)  # turned: not the displayed order
    assert dice(turn(shown) > 0, mask > 0) > 0.98
    assert Path(line["lesion_mask"]).name == "slice.dcm.lesion.png"


def test_a_frames_lesion_mask_is_named_after_its_frame(
    tmp_path: Path, tiny_card: Path, tiny_lesion_card: Path, monkeypatch, capsys
) -> None:
    """Frames 0 and 1 of one file came out as "f.dcm.lesion.png" and "f.dcm-2.lesion.png"."""
    from core.cli import main

    monkeypatch.setenv("BTD_LESION_MODEL", str(tiny_lesion_card))
    stored = (synthetic_slice(200, tumour=True) * 16).astype(np.uint16)
    path = tmp_path / "volume.dcm"
    path.write_bytes(dicom_bytes(np.stack([stored, stored]), frames=2))
    for frame in ("1", "0"):
        command = ["predict", "--model", str(tiny_card), "--frame", frame, "--lesion-masks", str(tmp_path / "m")]
        assert main([*command, str(path)]) == 0
    names = [Path(json.loads(line)["lesion_mask"]).name for line in capsys.readouterr().out.splitlines()]
    assert names == ["volume.dcm.frame1.lesion.png", "volume.dcm.frame0.lesion.png"]


def test_a_series_lesion_volume_is_its_areas_times_the_voxel_size_and_the_study_json_carries_it(
    tiny_card: Path, tiny_lesion_card: Path
) -> None:
    from core.imaging.phantom_series import dicom_series, head_volume
    from core.imaging.series import read_study
    from core.model.volume import analyse_volume

    volume = read_study(dicom_series(head_volume(6, 128, range(2, 4))))[0]
    assert volume.spacing is not None and volume.step_mm is not None and volume.step_mm > 0
    classifier = with_segmenter(Classifier.from_card(tiny_card), tiny_lesion_card)
    series = analyse_volume(volume, classifier)
    areas = series.lesion_areas
    boxes = [s.analysis.region.box for s in series.sections if s.analysis is not None]
    assert areas is not None and sum(areas) == sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes)
    voxel = volume.spacing[0] * volume.spacing[1] * volume.step_mm
    assert series.lesion_ml == pytest.approx(sum(areas) * voxel / 1000, rel=1e-3)
    line = series.to_json()
    assert line["lesion_ml"] == series.lesion_ml and line["lesion_sections"][0] <= line["lesion_sections"][1]
    plain = analyse_volume(volume, Classifier.from_card(tiny_card))
    assert plain.lesion_ml is None and "lesion_ml" not in plain.to_json()  # no segmenter: no volume claimed


def test_a_section_that_could_not_be_analysed_inside_the_lesion_is_named_beside_the_volume(
    tiny_card: Path, tiny_lesion_card: Path
) -> None:
    from core.imaging.phantom_series import dicom_series, head_volume
    from core.imaging.series import read_study
    from core.model.volume import analyse_volume

    classifier = with_segmenter(Classifier.from_card(tiny_card), tiny_lesion_card)
    heads = head_volume(7, 128, range(2, 5))
    whole = lesion_on(analyse_volume(read_study(dicom_series(heads))[0], classifier), range(2, 5))
    assert whole.lesion_ml is not None and not any("lower bound" in note for note in whole.warnings)
    heads[3] = 0  # a blank section inside the lesion's span: no head, not analysed
    series = lesion_on(analyse_volume(read_study(dicom_series(heads))[0], classifier), range(2, 5))
    assert [s.index for s in series.refused] == [3]
    assert series.lesion_ml is not None and series.lesion_ml < whole.lesion_ml
    (note,) = [note for note in series.warnings if "lower bound" in note]
    assert note.startswith("1 section(s) inside or next to the lesion's span (sections 3-5)")
    assert note in series.to_json()["warnings"]


def lesion_on(series, sections: range):
    """``series`` as if its segmenter had marked the lesion on ``sections`` only (the test segmenter marks every
    analysed section whole)."""
    from dataclasses import replace

    def marked(section):
        if section.analysis is None or section.index in sections:
            return section
        return replace(section, analysis=replace(section.analysis, lesion=replace(section.analysis.lesion, area_px=0)))

    return replace(series, sections=tuple(marked(s) for s in series.sections))


def test_a_lesion_the_analysed_sections_may_cut_short_is_a_lower_bound_and_a_declared_step_approximate(
    tiny_card: Path, tiny_lesion_card: Path
) -> None:
    """A lesion next to a section that could not be analysed, or reaching the series' first or last section, got
    its volume without a caveat: at a follow-up whose slab began inside the lesion, History read -50 %. A series
    without positions took its slice thickness as the step (sections 6.5 mm apart measured 23 % short), unsaid."""
    from core.imaging.phantom_series import dicom_series, head_volume
    from core.imaging.series import read_study
    from core.model.volume import analyse_volume
    from tests.scans import relabelled

    classifier = with_segmenter(Classifier.from_card(tiny_card), tiny_lesion_card)
    heads = head_volume(8, 128, range(3, 6))
    heads[2] = 0  # no head found next to the lesion: it may go on there
    series = analyse_volume(read_study(dicom_series(heads))[0], classifier)
    assert [s.index for s in series.refused] == [2]
    assert any("next to the lesion's span (sections 4-6)" in note for note in lesion_on(series, range(3, 6)).warnings)
    whole = analyse_volume(read_study(dicom_series(head_volume(8, 128, range(0, 3))))[0], classifier)
    (edge,) = [n for n in lesion_on(whole, range(0, 3)).warnings if "reaches" in n]
    assert edge.startswith("the lesion reaches the series' first section (sections 1-3)") and "lower bound" in edge
    unplaced = relabelled(dicom_series(head_volume(5, 128, range(1, 3))), ImagePositionPatient=None)
    series = analyse_volume(read_study(unplaced)[0], classifier)
    assert not series.volume.positions_in_mm
    assert any("no section positions" in n and "approximate" in n for n in lesion_on(series, range(1, 3)).warnings)


def test_a_gap_in_the_files_inside_the_lesion_is_named_beside_the_volume(
    tiny_card: Path, tiny_lesion_card: Path
) -> None:
    """A file lost inside the lesion: the volume silently left its section out."""
    from core.imaging.phantom_series import dicom_series, head_volume
    from core.imaging.series import read_study
    from core.model.volume import analyse_volume

    classifier = with_segmenter(Classifier.from_card(tiny_card), tiny_lesion_card)
    series = analyse_volume(read_study(dicom_series(head_volume(8, 128, range(2, 6)), skip=(4,)))[0], classifier)
    assert series.lesion_ml is not None and series.volume.gap_starts == (4,)
    assert any("a gap in the files lies inside or at the lesion's span" in note for note in series.warnings)
    assert any("not evenly spaced" in note for note in series.warnings)
    after_gap = lesion_on(series, range(4, 6))  # the lesion begins right after the lost file: it may hold some too
    assert any("gap in the files lies inside or at the lesion's span (sections 5-6)" in n for n in after_gap.warnings)


def test_a_sections_title_gives_its_lesion_in_square_millimetres_from_the_series_source_spacing(
    tiny_card: Path, tiny_lesion_card: Path
) -> None:
    """The viewer titled a section "lesion 1,368 px" even with the pixel spacing known (a radiologist reads mm²);
    the areas are of the source pixels, so the source spacing measures them, not the displayed pixels'."""
    from dataclasses import replace

    from core.imaging.phantom_series import dicom_series, head_volume
    from core.imaging.series import read_study
    from core.model.volume import analyse_volume
    from core.services.series_views import series_view
    from ui.viewer_figures import lesion_note

    volume = read_study(dicom_series(head_volume(4, 128, range(1, 3))))[0]
    view = series_view(analyse_volume(volume, with_segmenter(Classifier.from_card(tiny_card), tiny_lesion_card)))
    assert view.lesion_areas is not None and view.lesion_mm2 is not None and volume.spacing is not None
    index = next(i for i, area in enumerate(view.lesion_areas) if area)
    mm2 = view.lesion_areas[index] * volume.spacing[0] * volume.spacing[1]
    assert view.lesion_mm2[index] == pytest.approx(mm2, abs=0.01)
    assert lesion_note(view, index) == f" · lesion {mm2:,.0f} mm²"
    assert lesion_note(replace(view, lesion_mm2=None), index) == f" · lesion {view.lesion_areas[index]:,} px"
    assert lesion_note(replace(view, lesion_areas=(0,) * len(view.lesion_areas)), index) == ""


def test_a_mistyped_lesion_model_path_is_refused_not_taken_for_no_segmenter(
    tiny_card: Path, tiny_lesion_card: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """``BTD_LESION_MODEL=models/btd-lesionn.json`` analysed every scan without outlines or volumes, exit 0 and no
    word; "none" is how lesions are turned off."""
    import json

    from core.cli import main
    from core.errors import ModelError
    from core.services.resources import load_classifier

    monkeypatch.setenv("BTD_LESION_MODEL", str(tmp_path / "btd-lesionn.json"))
    with pytest.raises(ModelError, match=r"btd-lesionn\.json \(BTD_LESION_MODEL\) is not a file"):
        load_classifier(tiny_card)
    scan = tmp_path / "scan.png"
    scan.write_bytes(png_bytes(synthetic_slice(256)))
    assert main(["predict", "--model", str(tiny_card), str(scan)]) == 2
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["error"]["code"] == "model_error"
    assert load_classifier(tiny_card, lesions=False).segmenter is None  # a command that reads no lesions
    monkeypatch.setenv("BTD_LESION_MODEL", "none")
    assert load_classifier(tiny_card).segmenter is None
    monkeypatch.setenv("BTD_LESION_MODEL", str(tiny_lesion_card))
    assert load_classifier(tiny_card).segmenter is not None
