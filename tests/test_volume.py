"""Series analysis: every section through the gate and the model in batches, one verdict from the card's rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.config import model_card_path
from core.imaging.phantom_series import SAGITTAL, dicom_series, head_volume, nifti, zipped
from core.imaging.series import read_study
from core.model.analysis import analyse_scan, analyse_scans
from core.model.card import ModelCard
from core.model.classifier import Classifier
from core.model.decision import SeriesRule
from core.model.volume import SeriesAnalysis, analyse_volume, section_scan
from core.services.access import Actor
from core.training.series_fit import choose, tumour_free_stretches, volume_key
from core.training.sources import Item
from tests.scans import empty_database

DOCTOR = Actor("dr-v", "radiologist")


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.from_card(model_card_path())


def test_the_rule_needs_k_neighbouring_sections_and_skipped_sections_break_a_run() -> None:
    rule = SeriesRule(neighbours=3, threshold=0.6)
    assert rule.score([0.1, 0.9, 0.8, 0.7, 0.1]) == (0.7, 3)  # the best window's lowest section
    assert rule.score([0.9, 0.9, None, 0.9, 0.1, 0.2]) == (0.1, 3)  # a skipped section breaks the run of neighbours
    assert rule.score([0.95, None, 0.2, 0.3]) == (0.2, 2)  # no run of three: the longest run decides, k = 2
    assert rule.score([None, None]) == (None, 0)
    assert SeriesRule.from_card(None) == SeriesRule()
    assert SeriesRule.from_card({"neighbours": 2, "threshold": 0.7}).neighbours == 2
    with pytest.raises(ValueError):
        SeriesRule.from_card({"neighbours": 0, "threshold": 0.5})


def test_batched_analysis_gives_the_single_scan_verdicts(classifier: Classifier) -> None:
    volume = read_study(dicom_series(head_volume(6, 160, range(2, 4))))[0]
    scans = [section_scan(volume, i) for i in range(6)]
    batched = analyse_scans(scans, classifier, batch_size=4)  # a ragged last batch
    for scan, together in zip(scans, batched, strict=True):
        alone = analyse_scan(scan, classifier).prediction
        assert together.prediction.label == alone.label
        assert together.prediction.tumour_probability == pytest.approx(alone.tumour_probability, abs=1e-5)
        assert together.prediction.gate.decision == alone.gate.decision


def test_a_synthetic_tumour_volume_is_called_tumour_and_scores_above_its_tumour_free_twin(
    classifier: Classifier,
) -> None:
    """The phantom's tumour-free sections are unlike real heads: model 2.1 leaves them in its review band, so the
    twin's own verdict is not asserted here; real healthy volumes are not called tumour in
    tests/test_model_quality.py (and the card's series figures)."""
    tumour = analyse_volume(read_study(dicom_series(head_volume(12, 256, range(4, 9))))[0], classifier)
    twin = analyse_volume(read_study(dicom_series(head_volume(12, 256)))[0], classifier)
    assert tumour.is_tumour and tumour.score > twin.score + 0.3
    assert tumour.label in (*classifier.card.labels, "tumour")  # a type when the best window names one
    window = [s.index for s in tumour.window]
    assert len(window) == classifier.card.series.neighbours and set(window) <= set(range(4, 9))
    assert sum(tumour.probabilities.values()) == pytest.approx(1.0)
    assert tumour.score is not None and twin.score is not None and tumour.score > twin.score
    assert set(tumour.tumour_sections) >= set(range(4, 9)) - {4, 8}  # the lesion's core sections are marked
    assert len(tumour.curve) == 12 and tumour.to_json()["slices"] == 12
    out = json.loads(json.dumps(tumour.to_json()))
    assert out["series_verdict"] == "tumour" and out["analysed"] + out["refused"] == 12
    assert out["needs_review"] == tumour.needs_review  # stated on every line, as the page shows it
    assert out["rule"]["neighbours"] == classifier.card.series.neighbours


def test_sections_without_a_head_are_skipped_with_their_reason_and_never_count(classifier: Classifier) -> None:
    stored = head_volume(10, 160, range(3, 7))
    stored[[0, 1, 9]] = 0  # empty sections past the ends of the head
    result = analyse_volume(read_study(dicom_series(stored, orientation=SAGITTAL))[0], classifier)
    skipped = {s.index: s.skipped for s in result.refused}
    assert {0, 1, 9} <= set(skipped) and all(skipped[i] for i in (0, 1, 9))
    assert result.curve[0] is None and result.to_json()["skipped"]["9"] == skipped[9]
    assert result.volume.plane == "sagittal"
    # a section of two separate head-sized regions (a low section whose cerebellar hemispheres come apart): said
    # for a section, never the single image's "upload each slice as its own image"
    small = head_volume(2, 80)
    stored[5] = np.pad(np.hstack([small[0], small[1]]), ((40, 40), (0, 0)))
    result = analyse_volume(read_study(dicom_series(stored, orientation=SAGITTAL))[0], classifier)
    assert {s.index: s.skipped for s in result.refused}[5] == "two separate regions the size of a head; not read"


def test_a_series_with_nothing_to_analyse_has_no_verdict(classifier: Classifier) -> None:
    result = analyse_volume(read_study(dicom_series(np.zeros((4, 64, 64), np.uint16)))[0], classifier)
    assert result.label is None and result.score is None and result.to_json()["analysed"] == 0


def test_a_study_with_a_series_that_cannot_be_put_together_gets_no_tumour_free_verdict(classifier: Classifier) -> None:
    """The other series are analysed, but their "no tumour" does not cover the series nobody could read."""
    from core.services.study_reading import analyse_study

    mixed = dicom_series(head_volume(3), series_uid="1.2.826.0.1.3680043.8.498.1.7")
    mixed += dicom_series(head_volume(3, seed=5), orientation=SAGITTAL, series_uid="1.2.826.0.1.3680043.8.498.1.7")[:1]
    outcome = analyse_study(dicom_series(head_volume(6)) + mixed, classifier)
    assert outcome.error_code is None and len(outcome.series) == 1 and outcome.series[0].label == "notumor"
    assert outcome.unanalysed == 1 and outcome.verdict is None  # never "no tumour" with a series unread
    assert any("could not be read" in note and "mixes section orientations" in note for note in outcome.notes)


def test_a_no_tumour_series_with_sections_over_its_threshold_says_so_and_opens_at_the_likeliest() -> None:
    """Section 7 at 1.00 alone, the verdict judged on a run of three elsewhere (0.38, 0.93, 0.46): "No tumour", the
    viewer opened at section 12 and the PDF showed 11-13; the lesion was seen nowhere but on the curve. (Sections
    7-8 at 1.00 together are now called tumour: the series is too short for the rule, see the test below.)"""
    from types import SimpleNamespace

    from core.model.volume import Section
    from ui.viewer import start_section

    curve = [0.70, None, 0.94, 0.2, None, None, 0.999, None, None, None, 0.38, 0.93, 0.46, None]

    def read(p):
        return SimpleNamespace(prediction=SimpleNamespace(tumour_probability=p), lesion=None)

    sections = tuple(
        Section(i, float(i), None if p is None else read(p), None if p else "gate") for i, p in enumerate(curve)
    )
    rule = SeriesRule(5, 0.3)
    score, used = rule.score(curve, floor=0.5)
    assert not rule.calls(score, used, 0.5)
    volume = SimpleNamespace(warnings=[], gap_starts=(), sections=np.zeros((len(curve), 4, 4)))
    series = SeriesAnalysis(volume, sections, rule, score, used, "notumor", {}, "m", "1", single_threshold=0.5)
    assert used == 3 and series.applied_threshold == 0.5 and not series.is_tumour and series.tumour_sections
    said = "sections 1, 3, 7 reach the threshold (0.50) outside the run the verdict was judged on: read them"
    assert said in series.warnings
    view = SimpleNamespace(curve=curve, window=(10, 11, 12), is_tumour=False, sections=volume.sections)
    assert start_section(view) == 6  # the likeliest section, not the middle of the run below the threshold


def test_a_saved_no_tumour_series_keeps_the_sections_it_was_not_judged_on_for_its_report(tiny_classifier) -> None:
    """The warning above was the analysing page's alone: saved, reopened on the Worklist or in History, and in the
    PDF (its images purged or not), the "No tumour" series said nothing of sections at 0.999."""
    from dataclasses import replace
    from types import SimpleNamespace

    from core.model.volume import Section
    from core.services.report_text import series_lines
    from core.services.studies import series_record

    curve = [0.70, None, 0.94, 0.2, None, None, 0.999, None, None, None, 0.38, 0.93, 0.46, None]
    analysed = analyse_volume(read_study(dicom_series(head_volume(len(curve), 64)))[0], tiny_classifier)
    roi = analysed.analysed[0].analysis.prediction.roi

    def read(p):
        shares = {"glioma": p, "meningioma": 0.0, "notumor": 1 - p, "pituitary": 0.0}
        return SimpleNamespace(
            prediction=SimpleNamespace(tumour_probability=p, roi=roi, probabilities=shares), lesion=None
        )

    sections = tuple(
        Section(i, float(i), None if p is None else read(p), None if p else "gate") for i, p in enumerate(curve)
    )
    rule = SeriesRule(5, 0.3)
    score, used = rule.score(curve, floor=0.5)
    series = replace(
        analysed, sections=sections, rule=rule, score=score, neighbours_used=used, label="notumor", single_threshold=0.5
    )
    said = "sections 1, 3, 7 reach the threshold (0.50) outside the run the verdict was judged on: read them"
    record = series_record(series, patient_ref=None, uploader="dr", key=None)
    assert said in record.geometry["notes"]
    assert f"Note: {said}" in series_lines(record, None, [])  # the report, its images purged or not


def test_a_series_too_short_for_the_rule_is_judged_on_its_best_two_sections_at_the_single_scan_threshold() -> None:
    """Five frames at 0.06, 0.38, 0.79, 0.98 and 0.98: the rule's one window was the whole series, and the normal
    first frame made it "No tumour" (0.06), while the same frames less the first were called tumour. Longer
    series, those the rule was fitted and measured on, are judged by the rule alone."""
    rule = SeriesRule(5, 0.3, short_run=2)  # as the shipped card says (a card without it: judged as before)
    assert not SeriesRule(5, 0.3).calls_tumour([0.06, 0.38, 0.79, 0.98, 0.98], 0.5)
    assert SeriesRule.from_card({"neighbours": 5, "threshold": 0.3, "short_run": 2}).short_run == 2
    with pytest.raises(ValueError, match="short run"):
        SeriesRule.from_card({"neighbours": 5, "threshold": 0.3, "short_run": 5})
    short = [0.06, 0.38, 0.79, 0.98, 0.98]
    assert rule.calls_tumour(short, 0.5) and rule.score(short, floor=0.5) == (0.98, 2)
    assert rule.best_window(short, floor=0.5)[1] == [3, 4]
    assert not rule.calls_tumour([0.06, 0.38, 0.79, 0.2, 0.98], 0.5)  # no two neighbours at 0.5: no tumour
    assert rule.calls_tumour([0.06, None, 0.79, 0.98], 0.5)  # a skipped section breaks runs, as before
    assert not rule.calls_tumour([0.98, None, 0.98, 0.1], 0.5)
    longer = [0.06, 0.38, 0.79, 0.98, 0.98, 0.1]  # a run longer than the rule's five: the rule alone, as fitted
    assert not rule.calls_tumour(longer, 0.5) and rule.score(longer, floor=0.5) == (0.1, 5)
    assert rule.score(short) == (0.06, 5)  # no floor given: the rule's own window (what a stored verdict names)
    assert rule.best_window(short, floor=0.5, size=5)[1] == [0, 1, 2, 3, 4]
    assert rule.best_window([0.9, 0.9, 0.9], size=5)[1] == [0, 1, 2]  # a stored size past the runs: the longest
    # the short sections are judged as the verdict judges them: at the higher of the floor and the rule's threshold
    low_floor = SeriesRule(5, 0.3, short_run=2)
    assert low_floor.score([0.06, 0.1, 0.25, 0.28, 0.28], floor=0.2) == (0.06, 5)


def test_the_shipped_card_states_its_series_rule() -> None:
    card = ModelCard.from_file(model_card_path())
    raw = json.loads(Path(model_card_path()).read_text())
    assert "series" in raw and raw["series"]["fitted_on"]
    assert card.series.neighbours == raw["series"]["neighbours"] >= 1


def test_a_series_goes_to_review_when_its_score_is_in_the_band_or_it_rests_on_too_few_neighbours() -> None:
    from dataclasses import replace

    base = SeriesAnalysis(None, (), SeriesRule(3, 0.4), 0.5, 3, "glioma", {}, "m", "1", review_band=(0.2, 0.8))
    assert base.needs_review  # 0.5 in [0.2, 0.8)
    assert not replace(base, score=0.8).needs_review  # the band's upper edge is outside it
    assert replace(base, score=0.9, neighbours_used=2).needs_review  # sure, but on two of three neighbours
    assert not replace(base, score=None).needs_review  # nothing analysed: no verdict to review


def test_volume_names_come_from_the_file_names_of_each_source() -> None:
    lgg = Item(Path("LGG/glioma/TCGA_CS_4941_19960909_12_flair.jpg"), "glioma", "LGG")
    heads = Item(Path("Normal-heads/notumor/subj03_t1_sag_041.png"), "notumor", "Normal-heads")
    assert volume_key(lgg) == ("TCGA_CS_4941_19960909_flair", 12)
    assert volume_key(heads) == ("subj03_t1_sag", 41)
    assert volume_key(Item(Path("Training/glioma/Tr-gl_0001.jpg"), "glioma", "Training")) is None


def test_the_rule_is_chosen_on_volumes_to_find_tumours_and_spare_tumour_free_stretches() -> None:
    tumour = [[0.1, 0.7, 0.8, 0.9, 0.2], [0.2, 0.6, 0.65, 0.1]]
    normal = [[0.1, 0.95, 0.1, 0.2], [0.3, 0.2, 0.1]]  # a lone bright section must not make a tumour
    fitted = choose(tumour, normal)
    assert fitted["sensitivity"] == 1.0 and fitted["specificity"] == 1.0 and fitted["neighbours"] >= 2
    stretches = tumour_free_stretches(list(np.linspace(0, 1, 20)), [9 <= i <= 10 for i in range(20)])
    assert [len(s) for s in stretches] == [7, 7]  # three sections kept clear on each side of the tumour


@pytest.mark.parametrize(
    ("folders", "volumes_used"),
    [
        (None, {"TCGA_AA_0000_20000101_flair", "subj01_t1_ax"}),  # folders unknown: validation volumes only
        (["LGG", "Normal-heads"], {"TCGA_AA_0000_20000101_flair", "subj01_t1_ax"}),
        (
            ["../Training"],
            {"TCGA_AA_0000_20000101_flair", "TCGA_AA_0001_20000101_flair", "TCGA_BB_0002_20000101_flair"}
            | {"subj01_t1_ax", "subj02_t1_ax"},  # no source of volumes trained on: every volume
        ),
    ],
)
def test_the_series_rule_is_fitted_only_on_volumes_the_model_never_trained_on(
    tmp_path: Path, tiny_card: Path, monkeypatch: pytest.MonkeyPatch, folders, volumes_used
) -> None:
    """Model-3 cards did not list their folders, and the rule was fitted on their training patients too."""
    from core.training import series_fit

    card_path, root = series_fit_setup(tmp_path, tiny_card, folders)
    seen: list[str] = []

    def curves(classifier, members):  # the section probabilities, without the network: only the choice matters
        seen.append(series_fit.volume_key(members[0])[0])
        return [0.9 if m.label != "notumor" else 0.1 for m in members]

    monkeypatch.setattr(series_fit, "curves", curves)
    series_fit.fit_series(card_path, root, log=lambda _: None)
    assert set(seen) == volumes_used


def series_fit_setup(tmp_path: Path, tiny_card: Path, folders, series: dict | None = None) -> tuple[Path, Path]:
    """A copy of the tiny card (with ``series`` as its series rule) and a data folder of LGG and Normal-heads
    volumes, three LGG patients of two institutions and two subjects, the first of each in the validation split."""
    import shutil

    from tests.scans import png_bytes, synthetic_slice
    from tests.test_training import lgg_like

    root = tmp_path / "data"
    lgg_like(root / "LGG")  # patients 0 and 1 of AA, 2 of BB, four FLAIR sections each
    heads = root / "Normal-heads" / "notumor"
    heads.mkdir(parents=True)
    for subject in (1, 2):
        for k in range(6):
            (heads / f"subj0{subject}_t1_ax_{k:03d}.png").write_bytes(png_bytes(synthetic_slice(64, seed=k)))
    card_path = tmp_path / "model" / "m.json"
    card_path.parent.mkdir()
    card = json.loads(tiny_card.read_text())
    shutil.copy(tiny_card.parent / card["weights"]["file"], card_path.parent)
    card["data"] = {} if folders is None else {"folders": folders}
    if series is not None:
        card["series"] = series
    card_path.write_text(json.dumps(card))
    validation = [
        [f"LGG/{label}/TCGA_AA_0000_20000101_{k + 1}_flair.jpg", label]
        for k, label in enumerate(["glioma", "notumor", "glioma", "notumor"])
    ]
    validation += [[f"Normal-heads/notumor/subj01_t1_ax_{k:03d}.png", "notumor"] for k in range(6)]
    card_path.with_name("m.split.json").write_text(json.dumps({"validation": validation}))
    return card_path, root


@pytest.mark.parametrize(("fitted", "kept"), [(5, 2), (3, 2), (2, None), (1, None)])
def test_a_refit_series_rule_keeps_the_cards_rule_for_short_series_where_it_still_fits(
    tmp_path: Path, tiny_card: Path, monkeypatch: pytest.MonkeyPatch, fitted: int, kept: int | None
) -> None:
    """`fit-series` (and `calibrate`, which runs it) wrote the series rule without its `short_run`: a refit that
    chose the very same rule stopped calling the five-frame series 0.06, 0.38, 0.79, 0.98, 0.98 a tumour."""
    from core.training import series_fit

    shipped = {"neighbours": 5, "threshold": 0.3, "fitted_on": "the shipped card's", "short_run": 2}
    shipped["short_run_measured"] = "its figures on 5-section windows"
    card_path, root = series_fit_setup(tmp_path, tiny_card, None, shipped)
    monkeypatch.setattr(series_fit, "curves", lambda classifier, members: [0.5] * len(members))
    asked: list[int | None] = []

    def choose(positives, negatives, floor, short_run=None):  # the choice is tested below; here, what is written
        asked.append(short_run)
        return {"neighbours": fitted, "threshold": 0.3, "sensitivity": 1.0, "specificity": 1.0}

    monkeypatch.setattr(series_fit, "choose", choose)
    written = series_fit.fit_series(card_path, root, log=lambda _: None)
    assert asked == [2]  # the candidates were measured with it
    assert written.get("short_run") == kept and written["neighbours"] == fitted
    rule = ModelCard.from_file(card_path).series
    assert (rule.neighbours, rule.threshold, rule.short_run) == (fitted, 0.3, kept)
    assert written["validation"]["volumes"]["normal"] == 1
    kept_figures = written.get("short_run_measured") == shipped["short_run_measured"]
    assert kept_figures is (fitted == 5)  # of the very rule refitted; another rule's short run is not measured so


def test_the_series_rule_is_chosen_with_the_cards_rule_for_short_series() -> None:
    from core.training.series_fit import share_right, with_short_run

    five_frames = [0.06, 0.38, 0.79, 0.98, 0.98]  # a tumour series shorter than the rule can slide along
    healthy = [0.1] * 5
    without = choose([five_frames], [healthy], 0.5)
    assert (without["neighbours"], without["threshold"]) == (4, 0.35)  # five neighbours never find this series
    with_it = choose([five_frames], [healthy], 0.5, short_run=2)
    assert (with_it["neighbours"], with_it["threshold"]) == (5, 0.95)
    served = with_short_run(SeriesRule(5, 0.95), 2)
    assert share_right(served, [five_frames], True, 0.5) == 1.0
    assert share_right(SeriesRule(5, 0.95), [five_frames], True, 0.5) == 0.0
    assert with_short_run(SeriesRule(2, 0.5), 2).short_run is None  # as many as the rule's own: no rule for short ones


def study_lines(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict]]:
    from core.cli import main

    code = main(["study", *args])
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_study_command_prints_one_line_per_series_from_folders_zips_and_volumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "export" / "nested"
    folder.mkdir(parents=True)
    for k, data in enumerate(dicom_series(head_volume(8, 160, range(2, 6)))):
        (folder / f"IM{(k * 5) % 8:04d}").write_bytes(data)  # any names, any order
    (folder.parent / "DICOMDIR").write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 64)
    (folder.parent / "notes.txt").write_text("not an image")
    # every series carries a drawn lesion: a learned gate may judge a lesion-free cartoon head no brain MRI at all
    # (model 3's refuses each section of one), and this test is about reading, not about the gate
    study = "1.2.826.0.1.3680043.8.498.2"  # another study than the folder's
    from tests.scans import relabelled

    files = dicom_series(head_volume(6, 128, range(2, 4)), study_uid=study, series_uid="1.2.3.1")
    files += relabelled(  # the scanner's number: each line names it, as the app and the PACS report do
        dicom_series(head_volume(6, 128, range(1, 3), seed=9), study_uid=study, series_uid="1.2.3.2"), SeriesNumber=7
    )
    two = zipped(files, [f"s/{i}.dcm" for i in range(len(files))])
    (tmp_path / "study.zip").write_bytes(two)
    (tmp_path / "head.nii.gz").write_bytes(nifti(head_volume(10, 128, range(3, 7)), gz=True))
    code, lines = study_lines(
        [str(tmp_path / "export"), str(tmp_path / "study.zip"), str(tmp_path / "head.nii.gz")], capsys
    )
    assert code == 0
    assert [line["source"] for line in lines].count(str(tmp_path / "study.zip")) == 2
    zipped_numbers = [line["dicom_series"] for line in lines if line["source"] == str(tmp_path / "study.zip")]
    assert sorted(zipped_numbers, key=str) == [7, None] and lines[-1]["dicom_series"] is None  # NIfTI: none
    first = lines[0]
    assert first["slices"] == 8 and first["series_verdict"] in ("tumour", "notumor")
    assert first["study_needs_review"] is any(line["needs_review"] for line in lines[:1])  # its study: one series
    assert {"total", "read", "predict"} <= set(first["timings_ms"]) and first["timings_ms"]["total"] > 0
    assert any("2 file(s)" in note for note in first["warnings"])  # the DICOMDIR and the note were ignored
    assert all(len(line["study"]) == 64 and "1.2.3" not in json.dumps(line) for line in lines)  # UIDs hashed only


def test_study_command_answers_bad_paths_with_json_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    (tmp_path / "text.dcm").write_text("hello")
    (tmp_path / "black").mkdir()
    for k, data in enumerate(dicom_series(np.zeros((3, 64, 64), np.uint16))):
        (tmp_path / "black" / f"{k}.dcm").write_bytes(data)
    names = ["missing", "empty", "bad.zip", "text.dcm", "black"]
    code, lines = study_lines([str(tmp_path / n) for n in names], capsys)
    assert code == 1 and len(lines) == 5
    codes = [line["error"]["code"] for line in lines]
    assert codes == ["not_found", "series_error", "corrupt_image", "unsupported_format", "no_brain_sections"]
    assert all(line["error"]["message"] for line in lines)


def test_study_exit_status_says_rejected_for_an_unread_series_and_never_not_saved_for_one_without_a_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A series that could not be read (a CT beside the MR) exited 0, named only in the others' warnings; an
    all-black series with --save exited 3, "could not save", with the database working: a script retried it."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    empty_database(tmp_path / "data")  # as the app's first start leaves it
    (tmp_path / "black").mkdir()
    for k, data in enumerate(dicom_series(np.zeros((3, 64, 64), np.uint16))):
        (tmp_path / "black" / f"{k}.dcm").write_bytes(data)
    code, (line,) = study_lines(["--save", str(tmp_path / "black")], capsys)
    assert code == 1 and line["error"]["code"] == "no_brain_sections" and line["saved"].startswith("not saved")
    (tmp_path / "mixed").mkdir()
    for k, data in enumerate(dicom_series(head_volume(6, 128, range(2, 4)), series_uid="1.2.3.1")):
        (tmp_path / "mixed" / f"mr{k}.dcm").write_bytes(data)
    for k, data in enumerate(dicom_series(head_volume(4, 128), series_uid="1.2.3.2")):
        ds = dcmread(DicomBytesIO(data))
        ds.Modality, ds.SeriesNumber = "CT", 4
        buffer = DicomBytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        (tmp_path / "mixed" / f"ct{k}.dcm").write_bytes(buffer.getvalue())
    code, lines = study_lines([str(tmp_path / "mixed")], capsys)
    assert code == 1 and len(lines) == 2 and lines[0]["slices"] == 6
    assert lines[1]["error"]["code"] == "series_unread" and lines[1]["error"]["message"].startswith("DICOM series 4: ")


def test_saving_a_series_keeps_its_record_sections_pixels_and_an_audit_event(
    classifier: Classifier, tmp_path: Path
) -> None:
    from core.errors import AccessDenied
    from core.services.access import Actor
    from core.services.series_views import _stored_sections as stored_sections
    from core.services.studies import save_series
    from core.storage.images import FolderImages
    from core.storage.sqlite import SQLiteStore

    store, images = SQLiteStore(tmp_path / "results.sqlite3"), FolderImages(tmp_path / "images")
    analysis = analyse_volume(read_study(dicom_series(head_volume(8, 160, range(2, 6))))[0], classifier)
    doctor, key = Actor("dr-a", "radiologist"), b"k" * 32
    status = save_series(analysis, store, actor=doctor, patient_ref="a" * 64, images=images, key=key)
    assert status.state == "saved"
    record = store.get(status.record_id)
    assert record.kind == "series" and record.section_count == 8 and record.patient_ref == "a" * 64
    assert record.study_ref not in (None, analysis.volume.study)  # a keyed hash of the study, never the UID hash
    assert record.tumour_probability == pytest.approx(analysis.score) and record.is_tumour == analysis.is_tumour
    assert record.geometry["plane"] == "axial" and record.geometry["spacing"] == [0.9, 0.9]
    assert [s.tumour_probability for s in store.sections_of(record.id)] == pytest.approx(analysis.curve)
    kept = stored_sections(record, images)
    assert np.array_equal(kept, analysis.volume.sections)
    assert save_series(analysis, store, actor=doctor, patient_ref=None, images=images, key=key).state == "already saved"
    events = store.audit_events()
    assert [e.action for e in events] == ["upload", "upload"] and events[0].target == record.id
    with pytest.raises(AccessDenied):
        save_series(analysis, store, actor=Actor("boss", "supervisor"), patient_ref=None, images=images, key=key)
    empty = analyse_volume(read_study(dicom_series(np.zeros((3, 64, 64), np.uint16)))[0], classifier)
    refused = save_series(empty, store, actor=doctor, patient_ref=None, images=images, key=key)
    assert refused.state == "not saved" and "no section" in refused.message
    assert store.summary().total == 1
    # what the reading said of a series (a section missing) is kept with it: reopened on the Worklist or History,
    # and in its PDF, it was said nowhere
    from dataclasses import replace

    from core.services.report_text import series_lines
    from core.services.series_views import series_view, stored_series_view

    gapped = analyse_volume(read_study(dicom_series(head_volume(8, 160, range(2, 6)), skip=(4,)))[0], classifier)
    assert any("gap" in w.lower() for w in gapped.volume.warnings)
    saved = store.get(save_series(gapped, store, actor=doctor, patient_ref=None, images=images, key=key).record_id)
    assert saved.geometry["notes"] == [*gapped.volume.warnings, *gapped.unjudged]  # as the Study page said them
    reopened = stored_series_view(saved, store, images, classifier.card, doctor)
    assert reopened.warnings[: len(gapped.volume.warnings)] == gapped.volume.warnings
    short = gapped.neighbours_used < gapped.rule.neighbours  # the gap cut the run: said as the Study page said it
    assert [w for w in reopened.warnings if "verdict rests on" in w] == ([reopened.warnings[-1]] if short else [])
    assert short and f"rests on {gapped.neighbours_used} neighbouring" in reopened.warnings[-1]
    assert [f"Note: {w}" for w in [*gapped.volume.warnings, *gapped.unjudged]] == [
        line for line in series_lines(saved, reopened, []) if line.startswith("Note: ")
    ]
    few = {"threshold": 0.3, "neighbours": 5, "used": 2, "applied": 0.5}  # a verdict on 2 neighbours, at 0.50
    thin = stored_series_view(replace(saved, geometry=saved.geometry | {"rule": few}), store, images, None, doctor)
    assert thin.warnings[-1].startswith("the verdict rests on 2 neighbouring sections (the rule asks 5)")
    assert "(0.50)" in thin.warnings[-1]
    assert thin.threshold == 0.5  # the curve, the count above it and each section's side drawn at what judged it
    from ui.viewer import verdict_line

    assert "at 0.30 or more; judged at 0.50" in verdict_line(thin)  # the rule's own is named as the rule's
    assert any("reach 0.30; judged at 0.50" in line for line in series_lines(saved, thin, []))
    fresh = series_view(gapped)
    applied = gapped.rule.threshold_for(gapped.neighbours_used, gapped.single_threshold)
    assert fresh.threshold == pytest.approx(applied) and applied > gapped.rule.threshold
    # the command line's tumour_slices and the key images sent to the PACS are the sections the screen and the PDF
    # mark (they listed those at the rule's own 0.30 too, beside a verdict judged at 0.50)
    assert gapped.tumour_sections == fresh.marked == [2, 3, 4] and gapped.curve[5] > gapped.rule.threshold
    line = gapped.to_json()  # the command line's line says what they are cut at: found again from its curve
    cut = line["rule"]["applied_threshold"]
    assert cut == pytest.approx(applied) and [i for i, p in enumerate(line["curve"]) if p and p >= cut] == [2, 3, 4]


def test_a_series_saved_before_its_order_was_kept_names_no_direction_for_a_sections_place(
    classifier: Classifier, tmp_path: Path
) -> None:
    """NIfTI series saved before schema 7 (the upgrade corrected their orientation, not their positions), and DICOM
    files encoding a mirrored view saved before sections were ordered along the displayed normal, kept positions
    running against their orientation: reopened, a section 10 mm toward the head read "F 10.0 mm", a sagittal one
    on the right "L 20.0 mm", in the viewer's title, the quick scroller, History and the PDF."""
    from dataclasses import replace

    from core.services.access import Actor
    from core.services.series_views import LEGACY_ORDER, stored_series_view
    from core.services.studies import save_series
    from core.storage.images import FolderImages
    from core.storage.sqlite import SQLiteStore

    store, images = SQLiteStore(tmp_path / "results.sqlite3"), FolderImages(tmp_path / "images")
    analysis = analyse_volume(read_study(dicom_series(head_volume(4, 64)))[0], classifier)
    doctor = Actor("dr-a", "radiologist")
    saved = store.get(save_series(analysis, store, actor=doctor, patient_ref=None, images=images).record_id)
    now = stored_series_view(saved, store, images, classifier.card, doctor)
    assert all(now.place(i)[0] in "HF" for i in range(4)) and LEGACY_ORDER not in now.warnings
    geometry = {k: v for k, v in saved.geometry.items() if k != "section_order"}
    legacy = stored_series_view(replace(saved, geometry=geometry), store, images, classifier.card, doctor)
    assert [legacy.place(i) for i in range(4)] == [f"{abs(p):.1f} mm, direction not known" for p in legacy.positions]
    assert LEGACY_ORDER in legacy.warnings and "check the level and side by eye" in LEGACY_ORDER
    numbered = replace(saved, geometry=geometry | {"positions_in_mm": False})  # numbered files: no mm, no warning
    assert LEGACY_ORDER not in stored_series_view(numbered, store, images, classifier.card, doctor).warnings


def test_study_command_saves_each_series_once_with_save(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.domain.results import Filters
    from core.storage.sqlite import SQLiteStore

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    empty_database(tmp_path / "data")  # as the app's first start leaves it
    monkeypatch.delenv("MONGODB_URI", raising=False)
    (tmp_path / "s.zip").write_bytes(zipped(dicom_series(head_volume(6, 128, range(2, 5)))))
    code, lines = study_lines(["--save", str(tmp_path / "s.zip")], capsys)
    assert code == 0 and lines[0]["saved"] == "saved"
    code, lines = study_lines(["--save", str(tmp_path / "s.zip")], capsys)
    assert lines[0]["saved"] == "already saved"
    store = SQLiteStore(tmp_path / "data" / "results.sqlite3")
    assert (
        store.summary(Filters(kinds=("series",))).total == 1
        and sum(d.total for d in store.daily_studies(Filters(), "UTC")) == 1
    )


def test_two_nifti_files_uploaded_together_count_as_one_study_in_statistics(tmp_path, tiny_classifier) -> None:
    from core.imaging.phantom_series import head_volume, nifti
    from core.services.access import Actor
    from core.services.statistics import _study_days as study_days
    from core.services.studies import triage_study
    from core.storage.protocol import EVERYTHING
    from core.storage.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "results.sqlite3")
    study = triage_study(
        [nifti(head_volume(4)), nifti(head_volume(4, seed=7))],
        tiny_classifier,
        store,
        actor=Actor("dr", "radiologist"),
        patient_ref=None,
        images=None,
        key=b"k" * 32,
    )
    assert len(study.views) == 2 and store.summary().total == 2
    assert sum(day.total for day in study_days(store, EVERYTHING, "UTC")) == 1


def test_an_upload_holding_two_studies_is_refused_not_given_one_merged_verdict(tiny_classifier) -> None:
    """A patient CD with today's exam and a prior: two StudyInstanceUIDs must not become one verdict and report."""
    from core.services.study_reading import analyse_study

    today = dicom_series(head_volume(3), study_uid="1.2.826.0.1.3680043.8.498.7", series_uid="1.2.3.1")
    prior = dicom_series(head_volume(3, seed=4), study_uid="1.2.826.0.1.3680043.8.498.8", series_uid="1.2.3.2")
    outcome = analyse_study([zipped(today + prior)], tiny_classifier)
    assert outcome.error_code == "several_studies" and not outcome.series and outcome.verdict is None
    assert "more than one study" in (outcome.error_message or "")
    assert analyse_study(today, tiny_classifier).error_code is None  # one study alone is analysed


def test_a_saved_series_reopens_with_the_rule_that_made_its_verdict_and_no_heat_map_of_another_model(
    tmp_path, tiny_classifier
) -> None:
    """A series saved under one model and reopened (worklist, History, report) after another shipped: its own rule
    is drawn, never the served model's, and no heat map of a model that never read it; a series saved before rules
    were kept gets its rule only from the same model."""
    from dataclasses import replace
    from types import SimpleNamespace

    from core.services.access import Actor
    from core.services.report_text import series_lines
    from core.services.series_views import section_heat, stored_series_view
    from core.services.studies import save_series
    from core.storage.images import FolderImages
    from core.storage.sqlite import SQLiteStore

    store, images = SQLiteStore(tmp_path / "results.sqlite3"), FolderImages(tmp_path / "images")
    analysis = analyse_volume(read_study(dicom_series(head_volume(6, 64, range(2, 4))))[0], tiny_classifier)
    status = save_series(
        analysis, store, actor=Actor("dr", "radiologist"), patient_ref=None, images=images, key=b"k" * 32
    )
    record = store.get(status.record_id)
    served, newer = tiny_classifier.card, replace(tiny_classifier.card, version="9.9.9", series=SeriesRule(7, 0.99))
    view = stored_series_view(record, store, images, newer, DOCTOR)
    assert (view.threshold, view.neighbours) == (served.series.threshold, served.series.neighbours)
    # the sections that set its score, found again: reopened, it opens there (it opened at the series' middle)
    assert view.window == tuple(w.index for w in analysis.window) and view.window
    assert section_heat(view, 0, SimpleNamespace(card=newer), explainer=None) is None
    assert f"{served.series.neighbours} neighbouring sections reach {served.series.threshold:.2f}" in "\n".join(
        series_lines(record, view, [])
    )
    legacy = replace(record, geometry={k: v for k, v in record.geometry.items() if k != "rule"})
    unknown = stored_series_view(legacy, store, images, newer, DOCTOR)
    assert unknown.threshold is None and unknown.neighbours is None and unknown.marked == []
    assert "not recorded" in "\n".join(series_lines(legacy, unknown, []))
    same = stored_series_view(legacy, store, images, served, DOCTOR)
    assert (same.threshold, same.neighbours) == (served.series.threshold, served.series.neighbours)
    from core.errors import AccessDenied

    with pytest.raises(AccessDenied):  # a supervisor sees aggregates, never a patient's pixels
        stored_series_view(record, store, images, served, Actor("boss", "supervisor"))


def test_a_series_uploaded_again_with_a_reference_gets_it_when_it_was_saved_without_one(
    tmp_path, tiny_classifier
) -> None:
    from core.services.access import Actor
    from core.services.studies import save_series
    from core.storage.sqlite import SQLiteStore

    store, doctor = SQLiteStore(tmp_path / "results.sqlite3"), Actor("dr", "radiologist")
    analysis = analyse_volume(read_study(dicom_series(head_volume(4, 64)))[0], tiny_classifier)
    first = save_series(analysis, store, actor=doctor, patient_ref=None, key=b"k" * 32)
    again = save_series(analysis, store, actor=doctor, patient_ref="c" * 64, key=b"k" * 32)
    assert again.state == "already saved" and store.get(first.record_id).patient_ref == "c" * 64
    other = save_series(analysis, store, actor=doctor, patient_ref="d" * 64, key=b"k" * 32)
    assert "another patient reference" in other.message and store.get(first.record_id).patient_ref == "c" * 64


def test_a_study_with_a_series_nobody_could_read_gets_no_no_tumour_verdict(tiny_classifier) -> None:
    """A T1 series read as no tumour and a FLAIR series the gate refused whole: 'No tumour' for the study was a
    statement about a series nobody read."""
    from dataclasses import replace as changed

    from core.services.study_reading import StudyOutcome

    negative = analyse_volume(read_study(dicom_series(head_volume(4, 64)))[0], tiny_classifier)
    negative = changed(negative, label="notumor")
    unread = changed(negative, label=None, score=None)
    assert StudyOutcome("x", (negative,)).verdict == "notumor"
    incomplete = StudyOutcome("x", (negative, unread))
    assert incomplete.verdict is None and incomplete.unanalysed == 1
    assert StudyOutcome("x", (changed(negative, label="glioma"), unread)).verdict == "tumour"


def test_the_series_rule_never_counts_sections_across_a_gap_as_neighbours() -> None:
    """Files at 0, 5, 10, 40, 45, 50 mm (those between lost): 10, 40 and 45 are not three neighbouring sections."""
    rule = SeriesRule(neighbours=3, threshold=0.5)
    curve = [0.1, 0.2, 0.9, 0.9, 0.9, 0.1]
    assert rule.score(curve)[0] == pytest.approx(0.9)  # read as one run: tumour
    level, used = rule.score(curve, breaks=(3,))  # a gap before the fourth section
    assert level == pytest.approx(0.1) and used == 3  # each side of the gap has a low section in its run
    volume = read_study(dicom_series(head_volume(8, 64), skip=(3, 4)))[0]  # 0, 5, 10, then 25 mm...
    assert volume.gap_starts == (3,)


def test_a_verdict_resting_on_fewer_neighbours_than_the_rule_takes_at_least_the_single_scan_threshold(
    tiny_classifier,
) -> None:
    """One section at P 0.30 under a rule of 4 at 0.25: called tumour as a series, no tumour as the same scan."""
    from dataclasses import replace as changed

    from core.model.classifier import Classifier

    card = tiny_classifier.card
    card = changed(card, series=SeriesRule(neighbours=4, threshold=0.01), rule=changed(card.rule, threshold=0.999))
    lenient = Classifier(card, tiny_classifier.model)
    volume = read_study(dicom_series(head_volume(1, 64)))[0]
    analysis = analyse_volume(volume, lenient)
    assert analysis.neighbours_used == 1 and analysis.score is not None
    assert analysis.score < 0.999 and not analysis.is_tumour  # by the single-scan 0.999, not the rule's 0.01
    assert any("judged at least by the single-scan threshold (1.00)" in w for w in analysis.warnings)  # 0.999
    # the record keeps the threshold the verdict was judged by, and a report made later from it says so
    from core.services.report_text import series_lines
    from core.services.series_views import series_view
    from core.services.studies import series_record

    record = series_record(analysis, patient_ref=None, uploader="dr", key=None)
    assert record.geometry["rule"] == {"threshold": 0.01, "neighbours": 4, "used": 1, "applied": 0.999}
    lines = "\n".join(series_lines(record, series_view(analysis), []))
    said = "the verdict rests on 1 neighbouring section (the rule asks 4), judged at least by the single-scan "
    assert f"{said}threshold (1.00)" in " ".join(analysis.warnings)  # fresh, and in the PDF made later
    assert f"T{said[1:]}threshold (1.00)" in lines
    assert "Flagged for review (it rests on 1 neighbouring section, fewer than the rule's 4)" in lines


def test_a_sections_heat_map_explains_the_series_call_not_the_sections_own(tmp_path, tiny_classifier) -> None:
    """A section at 0.40 under a rule at 0.30 decides "Glioma" while, as a single scan, it is "No tumour": its heat
    map in the viewer and the PDF showed where the model looked for "No tumour"."""
    from dataclasses import replace

    from core.model.explain import Explainer
    from core.services.series_views import section_heat, stored_series_view
    from core.services.studies import save_series
    from core.storage.images import FolderImages
    from core.storage.sqlite import SQLiteStore

    store, images = SQLiteStore(tmp_path / "results.sqlite3"), FolderImages(tmp_path / "images")
    analysis = analyse_volume(read_study(dicom_series(head_volume(4, 64, range(1, 3))))[0], tiny_classifier)
    status = save_series(analysis, store, actor=Actor("dr", "radiologist"), patient_ref=None, images=images, key=None)
    view = stored_series_view(store.get(status.record_id), store, images, tiny_classifier.card, DOCTOR)
    asked: list[str | None] = []

    class Recording(Explainer):
        def explain(self, analysis, label=None):
            asked.append(label)
            return super().explain(analysis, label)

    explainer = Recording(tiny_classifier)
    for label, is_tumour, expected in (("meningioma", True, "meningioma"), ("notumor", False, None)):
        heat = section_heat(replace(view, label=label, is_tumour=is_tumour), 1, tiny_classifier, explainer)
        assert heat is not None and heat.shape == view.sections[1].shape and asked[-1] == expected
    section_heat(replace(view, label="tumour", is_tumour=True), 1, tiny_classifier, explainer)  # type uncertain
    assert asked[-1] in {"glioma", "meningioma", "pituitary"}  # the section's most probable type, never "notumor"


def test_a_study_path_that_cannot_be_read_gets_its_own_reason_never_its_path(tmp_path, monkeypatch) -> None:
    """Every read error was "permission denied", an I/O error too."""
    from core.services import study_reading as studies

    for error, said in (
        (PermissionError(13, "Permission denied"), "permission denied"),
        (OSError(5, "Input/output error"), "input/output error"),
    ):

        def fails(path, error=error):
            raise error

        monkeypatch.setattr(studies, "files_of", fails)
        outcome = studies.analyse_path(tmp_path / "ZZCANARY-study", None)  # type: ignore[arg-type]
        assert outcome.error_code == "unreadable" and outcome.error_message == f"It cannot be read ({said})."


def test_a_tumour_series_names_its_type_when_one_stands_out_even_under_the_single_scan_threshold(
    classifier: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The type was named by the single-scan rule, threshold included: a series the series rule called tumour with
    a window mean P(tumour) of 0.40 read "Tumour, type uncertain" however clearly glioma stood out, and a reader
    confirming glioma was counted as disagreeing with the model."""
    from types import SimpleNamespace

    from core.model import volume as volume_module

    def fake(scans, classifier, batch_size):  # every section: glioma 0.38 of P(tumour) 0.40
        row = dict(zip(classifier.card.labels, (0.38, 0.01, 0.60, 0.01), strict=True))
        prediction = SimpleNamespace(
            tumour_probability=0.40, probabilities=row, gate=SimpleNamespace(decision="accepted"), timings_ms={}
        )
        return [SimpleNamespace(prediction=prediction) for _ in scans]

    monkeypatch.setattr(volume_module, "analyse_scans", fake)
    volume = read_study(dicom_series(head_volume(8, 96)))[0]
    analysis = analyse_volume(volume, classifier)
    assert classifier.card.series.threshold <= 0.40 < classifier.card.rule.threshold
    assert analysis.is_tumour and analysis.label == "glioma"


def test_a_study_is_stored_tumour_series_first_and_nothing_after_a_series_that_could_not_be_saved(
    tmp_path, tiny_classifier, monkeypatch
) -> None:
    """Each series is saved on its own: the glioma series failed and the no-tumour one was stored, so the study
    counted tumour-free until somebody pressed Retry; and a store failing the read-back raised out of the page."""
    from dataclasses import replace

    from core.errors import StoreUnavailable
    from core.imaging.phantom_series import head_volume, nifti
    from core.services.access import Actor
    from core.services.studies import NOT_SAVED, NOT_TRIED, save_study
    from core.services.study_reading import analyse_study
    from core.storage.sqlite import SQLiteStore

    outcome = analyse_study([nifti(head_volume(4)), nifti(head_volume(4, seed=7))], tiny_classifier)
    clear, glioma = (replace(s, label=label) for s, label in zip(outcome.series, ("notumor", "glioma"), strict=True))
    unread = replace(clear, label=None)  # between them in the order: it once reset the failure, and "clear" was saved
    outcome = replace(outcome, series=(unread, clear, glioma))
    store, doctor = SQLiteStore(tmp_path / "results.sqlite3"), Actor("dr", "radiologist")
    add_series = store.add_series

    def glioma_fails(record, sections):
        if record.label == "glioma":
            raise StoreUnavailable("The results database is locked by another process; try again.")
        return add_series(record, sections)

    monkeypatch.setattr(store, "add_series", glioma_fails)
    result = save_study(outcome, store, actor=doctor, patient_ref=None, images=None, key=b"k" * 32)
    assert [v.status.state for v in result.views] == [NOT_SAVED, NOT_SAVED, NOT_SAVED]
    assert result.views[1].status.message == NOT_TRIED and store.summary().total == 0  # no tumour-free study stored
    monkeypatch.setattr(store, "add_series", add_series)
    monkeypatch.setattr(store, "get", lambda record_id: (_ for _ in ()).throw(StoreUnavailable("down")))
    again = save_study(outcome, store, actor=doctor, patient_ref=None, images=None, key=b"k" * 32)  # the retry
    assert [v.status.state for v in again.views] == [NOT_SAVED, "saved", "saved"] and store.summary().total == 2
    # saved tumour first, each keeps its number on the Study page (History's PDF numbered them in saving order)
    monkeypatch.undo()
    assert [store.get(v.status.record_id).geometry["series_number"] for v in again.views[1:]] == [2, 3]


def test_a_series_whose_record_fails_its_checks_keeps_no_image_and_the_study_save_goes_on(
    tmp_path, tiny_classifier, monkeypatch
) -> None:
    """A single scan's record was checked before its pixels were kept, a series' after: a refused series record left
    an image no result names, and its error escaped the study's save (the Study page and `study --save` failed)."""
    from dataclasses import replace

    from core.errors import InvalidRecord
    from core.imaging.phantom_series import head_volume, nifti
    from core.services import studies
    from core.services.access import Actor
    from core.services.studies import NOT_SAVED, NOT_TRIED, save_study
    from core.services.study_reading import analyse_study
    from core.storage.images import FolderImages
    from core.storage.sqlite import SQLiteStore

    outcome = analyse_study([nifti(head_volume(4)), nifti(head_volume(4, seed=7))], tiny_classifier)
    clear, glioma = (replace(s, label=label) for s, label in zip(outcome.series, ("notumor", "glioma"), strict=True))
    outcome = replace(outcome, series=(clear, glioma))
    store, images = SQLiteStore(tmp_path / "results.sqlite3"), FolderImages(tmp_path / "images")
    real = studies.series_record

    def refused(analysis, **kwargs):  # as a non-finite lesion volume from a header's infinite spacing is
        record = real(analysis, **kwargs)
        if record.label == "glioma":
            raise InvalidRecord("Record refused: lesion_ml is not a finite number.")
        return record

    monkeypatch.setattr(studies, "series_record", refused)
    result = save_study(outcome, store, actor=Actor("dr", "radiologist"), patient_ref=None, images=images, key=None)
    assert [v.status.state for v in result.views] == [NOT_SAVED, NOT_SAVED]
    assert result.views[1].status.message == "Record refused: lesion_ml is not a finite number. (nothing was saved)"
    assert result.views[0].status.message == NOT_TRIED  # no tumour-free study stored in its place
    assert store.summary().total == 0 and not [p for p in (tmp_path / "images").rglob("*") if p.is_file()]
    # a section the store would refuse (a position that is no number) is checked before the pixels are kept too
    monkeypatch.setattr(studies, "series_record", real)
    rows = studies.section_rows
    monkeypatch.setattr(studies, "section_rows", lambda a: [replace(rows(a)[0], position=float("nan")), *rows(a)[1:]])
    result = save_study(outcome, store, actor=Actor("dr", "radiologist"), patient_ref=None, images=images, key=None)
    assert result.views[1].status.message.startswith("Section refused: ")
    assert store.summary().total == 0 and not [p for p in (tmp_path / "images").rglob("*") if p.is_file()]


def test_a_study_given_in_two_paths_states_the_verdict_of_all_its_series_on_the_second(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study's T1 and FLAIR folders given as two PATHs each got a study verdict of their own (one "notumor",
    one "tumour") on lines carrying the same study: the second states the verdict of both, says why, and both are
    saved (the database judges the study from all its series)."""
    from core.storage.sqlite import SQLiteStore

    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    empty_database(tmp_path / "data")  # as the app's first start leaves it
    monkeypatch.delenv("MONGODB_URI", raising=False)
    for folder, uid, lesion in (("t1", "1.2.3.1", range(2, 4)), ("flair", "1.2.3.2", range(1, 4))):
        (tmp_path / folder).mkdir()
        for k, data in enumerate(dicom_series(head_volume(6, 128, lesion), series_uid=uid)):
            (tmp_path / folder / f"{k}.dcm").write_bytes(data)
    (tmp_path / "other.nii.gz").write_bytes(nifti(head_volume(6, 128, range(2, 4)), gz=True))
    paths = [str(tmp_path / name) for name in ("t1", "flair", "other.nii.gz")]
    code, lines = study_lines(["--save", *paths], capsys)
    assert [line["source"] for line in lines] == paths and all(line["saved"] == "saved" for line in lines)
    assert code == (1 if any("error" in line for line in lines) else 0)  # no refusal for the split itself
    assert lines[0]["study"] == lines[1]["study"] != lines[2]["study"]
    verdicts = [lines[0]["series_verdict"], lines[1]["series_verdict"]]
    both = "tumour" if "tumour" in verdicts else None if None in verdicts else "notumor"
    assert lines[1]["study_verdict"] == both and lines[0]["study_verdict"] == verdicts[0]
    assert any(paths[0] in w and "all its series" in w for w in lines[1]["warnings"])
    assert not any("also read from" in w for w in lines[0]["warnings"] + lines[2]["warnings"])
    assert SQLiteStore(tmp_path / "data" / "results.sqlite3").summary().total == 3
    _, again = study_lines([paths[0], str(tmp_path / "t1" / "."), paths[0]], capsys)  # one PATH given thrice
    assert len(again) == 1 and not any("also read from" in w for w in again[0]["warnings"])


def test_the_second_path_of_a_study_is_judged_with_the_series_of_the_first() -> None:
    """T1 read "no tumour" from one folder, FLAIR "tumour" from another: the second PATH's lines say "tumour" for
    the study; a series nobody could read in the first keeps the study from "no tumour"."""
    from types import SimpleNamespace

    from core.cli.studies import whole_study
    from core.services.study_reading import StudyOutcome

    def series(label: str | None) -> SimpleNamespace:
        return SimpleNamespace(
            volume=SimpleNamespace(study="s"), label=label, is_tumour=label not in (None, "notumor"),
            negative_label="notumor", needs_review=False,
        )  # fmt: skip

    seen: dict = {}
    t1 = StudyOutcome("t1", (series("notumor"),))
    assert whole_study(t1, seen) == (t1, None)
    judged, note = whole_study(StudyOutcome("flair", (series("glioma"),)), seen)
    assert judged.verdict == "tumour" and "also read from t1" in note
    seen = {}
    whole_study(StudyOutcome("t1", (series("notumor"),), unread=("a series could not be read",)), seen)
    judged, _ = whole_study(StudyOutcome("t2", (series("notumor"),)), seen)
    assert judged.verdict is None  # the first PATH's unread series: no "no tumour" for the study
