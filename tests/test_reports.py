"""PDF reports: rendered with fpdf2, read back with poppler-utils (pdftotext, pdftoppm) and checked."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from core.errors import AccessDenied, InvalidRecord
from core.imaging.phantom_series import CORONAL, dicom_series, head_volume
from core.imaging.series import read_study
from core.model.classifier import Classifier
from core.model.decision import ml_text
from core.model.explain import Explainer
from core.model.volume import analyse_volume
from core.services.access import Actor
from core.services.report_text import lesion_line, series_lines, study_facts
from core.services.reports import study_report
from core.services.reviews import review_result
from core.services.studies import save_series
from core.storage.images import FolderImages
from core.storage.sqlite import SQLiteStore

POPPLER = shutil.which("pdftotext") and shutil.which("pdftoppm")
pytestmark = pytest.mark.skipif(not POPPLER, reason="needs Debian's poppler-utils (pdftotext, pdftoppm)")


@pytest.fixture
def saved_study(tmp_path: Path, tiny_classifier: Classifier):
    store, images = SQLiteStore(tmp_path / "results.sqlite3"), FolderImages(tmp_path / "images")
    doctor = Actor("dr-a", "radiologist")
    ids = []
    uid = "1.2.826.0.1.3680043.8.498.77"
    for n, (orientation, series_uid) in enumerate(((None, uid + ".1"), (CORONAL, uid + ".2"))):
        files = dicom_series(
            head_volume(8, 128, range(2, 5), seed=n),
            study_uid=uid,
            series_uid=series_uid,
            **({"orientation": orientation} if orientation else {}),
        )
        analysis = analyse_volume(read_study(files)[0], tiny_classifier)
        status = save_series(analysis, store, actor=doctor, patient_ref="e" * 64, images=images, key=b"k" * 32)
        ids.append(status.record_id)
    return store, images, doctor, ids


def text_of(pdf: bytes, tmp_path: Path) -> str:
    (tmp_path / "report.pdf").write_bytes(pdf)
    return subprocess.run(
        ["pdftotext", "-layout", str(tmp_path / "report.pdf"), "-"], capture_output=True, text=True, check=True
    ).stdout


def test_a_study_report_states_the_verdicts_the_review_and_the_model_and_renders(
    saved_study, tmp_path: Path, tiny_classifier: Classifier
) -> None:
    store, images, doctor, ids = saved_study
    review_result(store, doctor, ids[0], "meningioma", ["wrong_type"], "", now=datetime(2026, 11, 30, 9, tzinfo=UTC))
    pdf = study_report(store, images, doctor, ids, tiny_classifier, Explainer(tiny_classifier))
    assert pdf.startswith(b"%PDF")
    text = text_of(pdf, tmp_path)
    assert "Brain MRI triage report" in text and "not a diagnosis" in text
    words = " ".join(text.split())  # a long headline wraps
    # a reader's tumour on one series makes the study one (the model's verdict led in large type before)
    assert "Study: Tumour (radiologist's final label, 1 of 2 series reviewed)" in words
    assert "Series 1: axial, 8 sections" in text and "Series 2: coronal" in text
    assert "eeeeeeeeeeee" in text and "e" * 13 not in text  # only a prefix of the keyed reference
    assert "Reviewed by dr-a on 2026-11-30 09:00 UTC: final label Meningioma (override)" in text
    assert "Final label (radiologist): Meningioma; model verdict: " in text
    assert "Not reviewed by a radiologist yet." in text and "Model verdict (not reviewed yet): " in text
    assert "Pixel spacing: 0.90 x 0.90 mm" in text and "tiny" in text and "limitations" in text.lower()
    assert "ZZCANARY" not in text  # the DICOM PatientName of the phantom never reaches a report
    # every page names its study and its place: a page apart from the first named nothing
    pages = text.split("\f")[:-1]
    assert len(pages) >= 2 and all(
        "patient reference eeeeeeeeeeee · study saved" in page and f"page {n} of {len(pages)}" in page
        for n, page in enumerate(pages, start=1)
    ), pages
    import re

    assert re.search(r"section \d+, [RLAPSIFH]+ ?\d+\.\d mm", text), text  # each key section's place, as the viewer's
    subprocess.run(
        ["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", str(tmp_path / "report.pdf"), str(tmp_path / "page")],
        check=True,
    )
    from PIL import Image

    page = np.asarray(Image.open(next(tmp_path.glob("page*.png"))).convert("L"))
    assert page.shape[0] > page.shape[1] and (page < 128).mean() > 0.02  # A4 portrait with text and images
    # each key section as read, and under it, apart, its heat map (drawn over the only copy, it hid the anatomy)
    subprocess.run(["pdfimages", "-png", str(tmp_path / "report.pdf"), str(tmp_path / "img")], check=True)
    pictures = [np.asarray(Image.open(f).convert("RGB")).astype(int) for f in sorted(tmp_path.glob("img-*.png"))]
    grey = [bool((np.ptp(p, axis=2) == 0).all()) for p in pictures]
    assert len(pictures) == 12 and grey == ([True] * 3 + [False] * 3) * 2  # two series, three key sections each
    assert "Below each section: its heat map." in text
    assert [e.action for e in store.audit_events()].count("report") == 2
    # numbered as the Study page numbered them (a series with no verdict, never saved, shifted the PDF's numbers)
    renumbered = text_of(study_report(store, images, doctor, ids, tiny_classifier, None, numbers=[1, 3]), tmp_path)
    assert "Series 3: coronal" in renumbered and "Series 2:" not in renumbered


def test_names_in_other_scripts_and_long_names_reach_the_report_whole_and_told_apart(
    saved_study, tmp_path: Path, tiny_classifier: Classifier
) -> None:
    """Two reviewers named in another script both read "??" (the sign-off could not be attributed), a 64-letter
    author ran off the page, and the limitations block did not say which model it was about."""
    from core.services.access import Actor

    store, images, _, ids = saved_study
    for name, record_id in (("张伟", ids[0]), ("李娜", ids[1])):
        review_result(store, Actor(name, "radiologist"), record_id, "notumor", ["false_alarm"], "")
    author = Actor("a" * 60 + "-end", "radiologist")
    words = " ".join(text_of(study_report(store, images, author, ids, tiny_classifier, None), tmp_path).split())
    assert "Reviewed by <U+5F20><U+4F1F> on" in words and "Reviewed by <U+674E><U+5A1C> on" in words
    assert "??" not in words and "a" * 60 + "-end" in words.replace(" ", "")  # wrapped, never cut
    card = tiny_classifier.card
    assert f"limitations of {card.name} {card.version}, the model in use when this report was made" in words
    reviewer = "ravi.shankar.venkataraman-" * 6 + "@hospital.example.org"  # a sign-on e-mail, longer than a line
    review_result(store, Actor(reviewer, "radiologist"), ids[0], "glioma", ["missed_lesion"], "")
    layout = text_of(study_report(store, images, author, ids, tiny_classifier, None), tmp_path)
    assert not re.search(r"Reviewed {3,}by", layout)  # justified, its two words were a page apart
    from core.services.report_drawing import pdf_text

    assert pdf_text("Jose\u0301") == "Jos\u00e9"  # an accent typed apart is one Latin-1 letter
    assert pdf_text("\u0915\u093f") != pdf_text("\u0915\u0940")  # names differing by a vowel sign stay apart


def test_a_report_is_refused_to_a_visitor_and_for_single_scans(saved_study, tiny_classifier: Classifier) -> None:
    store, images, _, ids = saved_study
    with pytest.raises(AccessDenied):
        study_report(store, images, None, ids, tiny_classifier, None)  # type: ignore[arg-type]
    with pytest.raises(InvalidRecord):
        study_report(store, images, Actor("dr-a", "radiologist"), ["0" * 64], tiny_classifier, None)


def test_a_report_is_of_one_reading(saved_study, tiny_classifier: Classifier) -> None:
    """Series read by two model versions were printed as one study under the first one's model (the pages pass one
    reading; the service trusted them to). A series saved before under another study reference (its record keeps
    the first) is reported with the study uploaded again."""
    store, images, doctor, ids = saved_study
    from core.domain.results import record_id

    first = store.get(ids[0])
    image = "c" * 64
    other_study = replace(first, id=record_id(image, first.model_name, first.model_version, first.frame),
                          image_sha256=image, study_ref="f" * 64)  # fmt: skip
    version = first.model_version + "-other"
    other_model = replace(first, id=record_id(first.image_sha256, first.model_name, version, first.frame),
                          model_version=version)  # fmt: skip
    store.add(other_model)
    with pytest.raises(InvalidRecord, match="different model versions"):
        study_report(store, images, doctor, [ids[0], other_model.id], tiny_classifier, None)
    assert [e.action for e in store.audit_events()].count("report") == 0
    store.add(other_study)
    assert study_report(store, images, doctor, [ids[0], other_study.id], tiny_classifier, None).startswith(b"%PDF")


def test_a_report_after_the_retention_period_says_the_images_are_gone(
    saved_study, tmp_path: Path, tiny_classifier: Classifier
) -> None:
    store, images, doctor, ids = saved_study
    for key in images.expired(datetime(2100, 1, 1, tzinfo=UTC)):
        images.delete(key)
    text = text_of(study_report(store, images, doctor, ids[:1], tiny_classifier, None), tmp_path)
    assert "no longer kept" in text and "Series 1" in text


def test_an_overridden_study_leads_with_the_radiologists_label_and_keeps_the_models_beside_it(
    saved_study, tmp_path: Path, tiny_classifier: Classifier
) -> None:
    store, images, doctor, ids = saved_study
    for record_id in ids:
        review_result(store, doctor, record_id, "notumor", ["false_alarm"], "")
    model = "Tumour" if any(store.get(i).is_tumour for i in ids) else "No tumour"
    text = text_of(study_report(store, images, doctor, ids, tiny_classifier, None), tmp_path)
    headline = next(line for line in text.splitlines() if line.strip().startswith("Study:"))
    assert headline.strip() == f"Study: No tumour (radiologist's final label) - model verdict: {model}"
    assert text.count("Final label (radiologist): No tumour; model verdict:") == 2


def test_a_review_saved_while_the_report_is_made_is_in_its_headline_as_in_its_body(
    saved_study, tmp_path: Path, tiny_classifier: Classifier, monkeypatch
) -> None:
    """The results were read before the seconds of heat maps and outlines, their reviews after: a colleague's
    override saved meanwhile was listed in the body under a headline "not yet reviewed"."""
    import core.services.reports as reports

    store, images, doctor, ids = saved_study
    colleague, made = Actor("dr-b", "radiologist"), reports.stored_series_view

    def slow_view(record, *args, **kwargs):
        if record.id == ids[0] and not store.reviews_of(ids[0]):  # the colleague presses Save meanwhile
            for record_id in ids:
                review_result(store, colleague, record_id, "glioma", ["missed_lesion"], "")
        return made(record, *args, **kwargs)

    monkeypatch.setattr(reports, "stored_series_view", slow_view)
    text = text_of(study_report(store, images, doctor, ids, tiny_classifier, None), tmp_path)
    headline = next(line for line in text.splitlines() if line.strip().startswith("Study:"))
    assert headline.strip().startswith("Study: Tumour (radiologist's final label)"), headline
    assert "not yet reviewed" not in text and text.count("Final label (radiologist): Glioma") == 2


def test_a_result_whose_review_summary_was_not_written_is_reported_from_its_reviews(
    saved_study, tmp_path: Path, tiny_classifier: Classifier
) -> None:
    """MongoDB writes a review, then the result's summary: a timeout between the two left the result saying
    "not reviewed" until the next review, and its report's headline said so above the review itself."""
    store, images, doctor, ids = saved_study
    for record_id in ids:
        review_result(store, doctor, record_id, "glioma", ["missed_lesion"], "")

    class SummaryBehind:
        def __getattr__(self, name):
            return getattr(store, name)

        def get(self, record_id):
            record = store.get(record_id)
            return record and replace(record, review_count=0, final_label=None, reviewer=None, review_verdict=None)

    text = text_of(study_report(SummaryBehind(), images, doctor, ids, tiny_classifier, None), tmp_path)
    headline = next(line for line in text.splitlines() if line.strip().startswith("Study:"))
    assert headline.strip().startswith("Study: Tumour (radiologist's final label)"), headline


def test_the_header_and_a_series_section_are_plain_lines(saved_study) -> None:
    store, _, doctor, ids = saved_study
    record = store.get(ids[0])
    facts = dict(study_facts([record], "dr-a", datetime(2026, 12, 1, 10, 5, tzinfo=UTC)))
    assert facts["Patient reference (pseudonymous)"] == "e" * 12 and facts["Series"] == "1"
    assert facts["Report made"] == "2026-12-01 10:05 UTC by dr-a" and facts["Model"].startswith("tiny ")
    lines = series_lines(record, None, [])  # no view: the images are gone; the rule kept with the record is said
    assert lines[0].startswith("Model verdict (not reviewed yet): ") and "series score" in lines[0]
    rule = record.geometry["rule"]
    fewer = rule["used"] < rule["neighbours"]  # which of the two reasons (the PDF said "..., or is uncertain")
    why = f"it rests on {rule['used']} neighbouring" if fewer else "its score is in the review band"
    judged = (
        ""
        if rule["applied"] == rule["threshold"]
        else f"; judged at {rule['applied']:.2f} (on fewer neighbouring sections than the rule asks)"
    )
    few = [  # as the Study page says it of the series, fresh or reopened
        f"The verdict rests on {rule['used']} neighbouring sections (the rule asks {rule['neighbours']}), judged at "
        f"least by the single-scan threshold ({rule['applied']:.2f})"
    ]
    flagged = [line for line in lines if line.startswith("Flagged for review (")]
    assert flagged == ([] if record.gate != "needs_review" else [next(f for f in flagged if why in f)])
    assert lines[1:] == [
        "Pixel spacing: 0.90 x 0.90 mm",
        "Lesion volume: not measured (no lesion segmenter when the series was saved)",
        f"Rule: tumour when {rule['neighbours']} neighbouring sections reach {rule['threshold']:.2f}{judged}",
        *(few if fewer else []),  # both were dropped once the images were purged
        *(flagged if record.gate == "needs_review" else []),  # the PDF never said a series needed review
        "Not reviewed by a radiologist yet.",
    ]
    review_result(store, doctor, ids[0], "meningioma", ["wrong_type"], "", now=datetime(2026, 11, 30, 9, tzinfo=UTC))
    reviewed = store.get(ids[0])
    lines = series_lines(reviewed, None, store.reviews_of(ids[0]))
    assert lines[0].startswith("Final label (radiologist): Meningioma; model verdict: ")
    assert lines[-1] == "Reviewed by dr-a on 2026-11-30 09:00 UTC: final label Meningioma (override)"


def test_a_flag_on_a_record_older_than_its_rules_neighbours_keeps_both_reasons(saved_study) -> None:
    """The PDF named one reason for a flag from the neighbours kept with the record: one saved before they were
    kept read "its score is in the review band", though it may have been flagged for too few neighbours."""
    from types import SimpleNamespace

    store, _, _, ids = saved_study
    record = store.get(ids[0])
    older = dict(record.geometry["rule"])
    del older["used"], older["applied"]
    flagged = replace(record, gate="needs_review", geometry=dict(record.geometry) | {"rule": older})
    lines = series_lines(flagged, None, [])
    assert "Flagged for review (fewer neighbouring sections than the rule asks, or a score in the review band)" in lines
    view = SimpleNamespace(neighbours=older["neighbours"], window=(4, 5), threshold=None, model="tiny")
    lines = series_lines(flagged, view, [])  # reopened: the view's window tells
    assert (
        f"Flagged for review (it rests on 2 neighbouring sections, fewer than the rule's {older['neighbours']})"
        in lines
    )


def test_the_lesion_line_states_the_stored_volume_or_the_pixels_or_that_none_was_measured(saved_study) -> None:
    store, _, _, ids = saved_study
    record = store.get(ids[0])
    assert lesion_line(replace(record, lesion_px=5120, lesion_ml=3.456)) == (
        "Lesion volume (segmenter): 3.5 mL (5,120 px over its sections)"
    )
    assert lesion_line(replace(record, lesion_px=5120)).startswith("Lesion area (segmenter): 5,120 px")
    assert lesion_line(record).startswith("Lesion volume: not measured")


@pytest.fixture
def segmented_study(tmp_path: Path, tiny_card: Path, tiny_lesion_card: Path):
    """One series saved by a classifier with the (untrained, threshold 1e-9) segmenter beside it: its lesion is the
    brain box of every analysed section, so its volume is known and its outline is the box."""
    from core.model.classifier import with_segmenter

    classifier = with_segmenter(Classifier.from_card(tiny_card), tiny_lesion_card)
    store, images = SQLiteStore(tmp_path / "results.sqlite3"), FolderImages(tmp_path / "images")
    doctor = Actor("dr-a", "radiologist")
    analysis = analyse_volume(read_study(dicom_series(head_volume(8, 128, range(2, 5))))[0], classifier)
    status = save_series(analysis, store, actor=doctor, patient_ref="e" * 64, images=images, key=b"k" * 32)
    return store, images, doctor, status.record_id, classifier


def test_a_lesion_volume_saved_as_a_lower_bound_says_so_in_the_report_and_on_reopening(
    tmp_path: Path, tiny_card: Path, tiny_lesion_card: Path
) -> None:
    """A section inside the lesion not analysed: the Study page said the volume was a lower bound, but the saved
    series kept no such note, so the PDF (and the Worklist) gave the volume as if it were whole."""
    from core.model.classifier import with_segmenter

    classifier = with_segmenter(Classifier.from_card(tiny_card), tiny_lesion_card)
    store, images = SQLiteStore(tmp_path / "results.sqlite3"), FolderImages(tmp_path / "images")
    doctor = Actor("dr-a", "radiologist")
    heads = head_volume(8, 128, range(2, 5))
    heads[4] = 0  # a blank section inside the lesion's span: not analysed
    analysis = analyse_volume(read_study(dicom_series(heads))[0], classifier)
    status = save_series(analysis, store, actor=doctor, patient_ref="e" * 64, images=images, key=b"k" * 32)
    record = store.get(status.record_id)
    notes = record.geometry["lesion_caveats"]  # the test segmenter marks every section: it reaches both ends too
    assert any(n.startswith("1 section(s) inside or next to the lesion's span") for n in notes)
    assert all("lower bound" in n for n in notes)
    text = " ".join(text_of(study_report(store, images, doctor, [record.id], classifier, None), tmp_path).split())
    assert "lower bound" in text and f"{ml_text(record.lesion_ml)} mL" in text


def test_a_few_voxels_of_lesion_are_never_written_as_no_volume_at_all() -> None:
    """A measured lesion of 0.003 mL printed "0.00 mL", read as none, on the page and in the report."""
    from ui.lesion import area_line, lesion_size, volume_line

    assert (ml_text(0.003), ml_text(0.0), ml_text(1.234), ml_text(0.384)) == ("<0.01", "0.00", "1.2", "0.38")
    assert (ml_text(0.996), ml_text(1.0)) == ("1.0", "1.0")  # one writing across 1 mL ("1.00" beside "1.0")
    # one writing on every surface: the screen's 1.2 mL and 342 mm² were the PDF's 1.25 mL and 342.4 mm²
    assert lesion_size(3.75, "mL") == f"{ml_text(3.75)} mL" == "3.8 mL"
    assert area_line(1368, 342.44) == "Lesion: 342 mm² (1,368 px)" and lesion_size(342.44, "mm2") == "342 mm²"
    assert volume_line([10], 0.003, (0, 0)) == "Lesion volume: <0.01 mL, section 1"
    assert (lesion_size(0.004, "mL"), lesion_size(0.38, "mL"), lesion_size(12.44, "mL")) == (
        "<0.01 mL",
        "0.38 mL",
        "12.4 mL",
    )


def test_key_sections_are_those_the_verdict_rested_on_not_isolated_spikes_elsewhere() -> None:
    """The PDF showed and outlined the three likeliest sections anywhere (isolated spikes at 4, 26 and 28) while
    the verdict rested on the run 13-17 where the viewer opens; the PACS key images lead with that run too."""
    from types import SimpleNamespace

    from core.model.volume import sections_to_see
    from core.pacs.captures import key_sections as key_images_of
    from core.services.reports import key_sections

    curve = [0.05] * 30
    for spike in (3, 25, 27):
        curve[spike] = 0.99
    for k, p in zip(range(12, 17), (0.8, 0.85, 0.9, 0.88, 0.82), strict=True):
        curve[k] = p
    assert key_sections(SimpleNamespace(curve=curve, window=tuple(range(12, 17)), is_tumour=True)) == [13, 14, 15]
    assert key_sections(SimpleNamespace(curve=curve, window=(), is_tumour=True)) == [3, 25, 27]  # no rule known
    # a "no tumour" verdict: its window is its best run below the threshold, and sections over 0.99 in a shorter
    # run were shown nowhere; the likeliest are
    assert key_sections(SimpleNamespace(curve=curve, window=tuple(range(12, 17)), is_tumour=False)) == [3, 25, 27]
    assert sections_to_see(curve, [12, 13], 3) == [3, 12, 13]  # a short window, then the likeliest
    assert sections_to_see([0.5, None, 0.7], [0, 1, 2], 3) == [0, 2]  # a skipped section is never shown
    series = SimpleNamespace(
        curve=curve,
        tumour_sections=[i for i, p in enumerate(curve) if p >= 0.5],
        window=[SimpleNamespace(index=i) for i in range(12, 17)],
    )
    assert key_images_of(series) == [3, 12, 13, 14, 15, 16, 25, 27]
    crowded = [0.99] * 20 + curve[12:17]  # twenty likelier sections than the deciding five: the five stay
    series = SimpleNamespace(
        curve=crowded, tumour_sections=list(range(25)), window=[SimpleNamespace(index=i) for i in range(20, 25)]
    )
    assert set(range(20, 25)) <= set(key_images_of(series)) and len(key_images_of(series)) == 12


def test_the_key_section_is_the_one_of_the_most_suspicious_with_the_largest_lesion() -> None:
    """The most suspicious section alone was segmented: "No lesion found on this section" was printed beside the
    volume of a lesion on the next key section."""
    from types import SimpleNamespace

    from core.model.lesion import Lesion
    from core.services.reports import key_lesion
    from tests.scans import synthetic_slice

    sections = np.stack([synthetic_slice(128, seed=k) for k in range(5)])
    view = SimpleNamespace(
        curve=[0.1, 0.9, 0.8, 0.7, None],
        window=(1, 2, 3),
        is_tumour=True,
        sections=sections,
        read=None,
        geometry={"spacing": [1.0, 1.0]},
    )
    areas = iter([0, 40, 0])  # the key sections 1, 2, 3 in order: the lesion on 2, the highest P on 1

    def lesion(pixels, box, spacing):
        area = next(areas)
        return Lesion(np.zeros(pixels.shape, bool), area, float(area), [], "fake 1")

    key = key_lesion(view, SimpleNamespace(name="fake 1 (abcdef12)", lesion=lesion))
    assert key.index == 2 and key.lesion.area_px == 40 and key.segmenter == "fake 1 (abcdef12)"


def test_a_report_states_the_lesion_volume_and_outlines_the_lesion_on_the_key_section(
    segmented_study, tmp_path: Path, tiny_classifier: Classifier
) -> None:
    store, images, doctor, record_id, classifier = segmented_study
    record = store.get(record_id)
    assert record.lesion_ml is not None and record.lesion_ml > 0
    assert record.geometry["lesion_model"].startswith("tiny-lesion 0.0.1 (")  # History compares one segmenter's
    pdf = study_report(store, images, doctor, [record_id], classifier, Explainer(classifier))
    text = text_of(pdf, tmp_path)
    assert (
        f"Lesion volume (segmenter): {ml_text(record.lesion_ml)} mL ({record.lesion_px:,} px over its sections)" in text
    )
    assert "Series 1: lesion outline" in text and "Segmented again for this report by tiny-lesion 0.0.1" in text
    assert "Lesion on this section: " in text and " mm²" in text and "(outlined in magenta)" in text
    by = record.geometry["lesion_model"]
    assert (
        f"Series lesion volume (stored when it was saved, measured by {by}): {ml_text(record.lesion_ml)} mL"
        in " ".join(text.split())
    )
    assert "Key section " in text and " of 8 (the largest lesion of the most suspicious sections" in text
    listing = subprocess.run(
        ["pdfimages", "-list", str(tmp_path / "report.pdf")], capture_output=True, text=True, check=True
    ).stdout.splitlines()[2:]
    assert len(listing) == 3 + 3 + 1  # the three key sections as read, their heat maps, and the outlined one
    outlined_page = int(listing[-1].split()[0])
    subprocess.run(
        [
            "pdftoppm",
            "-png",
            "-r",
            "100",
            "-f",
            str(outlined_page),
            "-l",
            str(outlined_page),
            str(tmp_path / "report.pdf"),
            str(tmp_path / "lesion"),
        ],
        check=True,
    )
    from PIL import Image

    page = np.asarray(Image.open(next(tmp_path.glob("lesion*.png"))).convert("RGB")).astype(int)
    magenta = (page[..., 0] > 200) & (page[..., 1] < 90) & (page[..., 2] > 200)
    assert magenta.sum() > 200  # the outline is drawn on the key section, in the screen's colour
    # without a segmenter: the stored volume only, and a line saying why no outline is drawn
    text = text_of(study_report(store, images, doctor, [record_id], tiny_classifier, None), tmp_path)
    assert f"Lesion volume (segmenter): {ml_text(record.lesion_ml)} mL" in text
    assert "No lesion outline: no lesion segmenter is loaded" in text and "lesion outline\n" not in text


def test_every_image_of_a_long_report_lies_inside_its_page_with_its_caption(
    segmented_study, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only text breaks an FPDF page: with three series a key section was drawn past the bottom of the page, its
    letters and caption ("section 18: P(tumour) 0.86") landing on the next pages beside other sections."""
    from fpdf import FPDF

    store, images, doctor, record_id, classifier = segmented_study
    placed = []
    draw = FPDF.image

    def image(self, *args, **kwargs):
        placed.append((self.page, kwargs["y"], kwargs["h"], self.h - self.b_margin))
        return draw(self, *args, **kwargs)

    monkeypatch.setattr(FPDF, "image", image)
    titled, write = [], FPDF.cell

    def cell(self, *args, **kwargs):
        if str(args[2] if len(args) > 2 else kwargs.get("text", "")).startswith("Series 1:"):
            titled.append(self.page)
        return write(self, *args, **kwargs)

    monkeypatch.setattr(FPDF, "cell", cell)
    study_report(store, images, doctor, [record_id] * 3, classifier, Explainer(classifier))
    assert len(placed) >= 3 * 4
    assert all(y + h <= bottom + 0.01 for _, y, h, bottom in placed)
    from core.services.reports import _series
    from core.services.series_views import series_view

    volume = read_study(dicom_series(head_volume(8, 128, range(2, 6))))[0]
    view = series_view(analyse_volume(volume, classifier))
    heat = {(1, index): np.full(view.sections[index].shape, 0.5) for index in range(len(view.sections))}
    for start, maps in ((start, maps) for start in range(100, 240, 4) for maps in ({}, heat)):  # lines ending low
        placed.clear()  # on a page, with heat maps beneath the key sections and without (they took the sections
        pdf = FPDF(format="A4")  # to the next page, apart from their title and curve)
        pdf.set_auto_page_break(True, margin=15)
        pdf.add_page()
        pdf.set_y(float(start))
        _series(pdf, 1, store.get(record_id), view, [], maps)
        assert placed and all(y + h <= bottom + 0.01 for _, y, h, bottom in placed)
        assert len({page for page, *_ in placed}) == 1 and titled[-1] == placed[0][0], start  # with its title


def test_key_sections_keep_their_proportions_and_carry_the_patient_directions(tiny_classifier: Classifier) -> None:
    """A 96 x 128 sagittal section (1 mm pixels) is drawn 4:3 wide, not squashed square, with its letters."""
    from core.imaging.phantom_series import SAGITTAL
    from core.services.report_drawing import section_image
    from core.services.series_views import series_view

    volume = read_study(dicom_series(head_volume(4, 128)[:, :96, :], orientation=SAGITTAL))[0]
    view = series_view(analyse_volume(volume, tiny_classifier))

    class Page:
        def __init__(self) -> None:
            self.images, self.texts, self.filled, self.at = [], [], [], (0.0, 0.0)

        def image(self, data, x, y, w, h) -> None:
            self.images.append((x, y, w, h))

        def set_xy(self, x, y) -> None:
            self.at = (x, y)

        def cell(self, w, h, text, fill=False) -> None:
            self.texts.append((text, self.at))
            self.filled.append(fill)

        def set_font(self, *a) -> None: ...

        def set_fill_color(self, *a) -> None: ...

        def set_text_color(self, *a) -> None: ...

    page = Page()
    section_image(page, view, np.zeros((*view.sections[0].shape, 3), np.uint8), 10.0, 20.0, 60.0)
    ((x, y, w, h),) = page.images
    assert (x, y, w, h) == pytest.approx((10.0, 27.5, 60.0, 45.0))  # 4:3, centred in its 60 x 60 box
    from fpdf import FPDF  # a narrow image without directions: its note wrapped inside it (it ran onto the next)

    pdf, written = FPDF(format="A4"), []
    pdf.add_page()
    pdf.multi_cell = lambda w, h, text, **kw: (
        written.append((pdf.get_x(), pdf.get_y(), w)) or FPDF.multi_cell(pdf, w, h, text, **kw)
    )
    portrait = replace(view, geometry=dict(view.geometry) | {"orientation": None, "spacing": [1.0, 0.25]})
    section_image(pdf, portrait, np.zeros((*view.sections[0].shape, 3), np.uint8), 10.0, 20.0, 60.0)
    x, y, w = written[-1]  # 96 x 128 pixels at 1 x 0.25 mm: drawn 20 mm wide, the note 41 mm long
    assert w < 20 and x >= 10.0 + (60.0 - 20.0) / 2 and 20.0 < y < 80.0
    # drawn under 12 mm wide (a tall thin section), no word fitted inside: fpdf2 stopped the whole report
    thin = replace(portrait, geometry=dict(portrait.geometry) | {"spacing": [1.0, 0.05]})
    section_image(pdf, thin, np.zeros((*view.sections[0].shape, 3), np.uint8), 10.0, 20.0, 60.0)
    x, y, w = written[-1]  # 4 mm wide: the note beside it, in the box's margin
    assert x == 10.0 and w == pytest.approx((60.0 - 4.0) / 2 - 1)
    page.images.clear()  # a record saved before a zero spacing was refused: square pixels, not a division by zero
    zero = replace(view, geometry=dict(view.geometry) | {"spacing": [0.0, 0.0]})
    section_image(page, zero, np.zeros((*view.sections[0].shape, 3), np.uint8), 10.0, 20.0, 60.0)
    assert page.images[0][2:] == pytest.approx((60.0, 45.0))
    letters = {text: at for text, at in page.texts}
    assert set(letters) == set(volume.letters.values()) and letters[volume.letters["top"]][1] < y + 2
    assert page.filled and all(page.filled)  # each on its dark box: a yellow "F" on the bright neck was not read


def test_a_report_of_a_study_with_a_series_nobody_could_read_gives_no_no_tumour(saved_study) -> None:
    from core.services.report_text import study_headline

    store, _, _, ids = saved_study
    records = [replace(store.get(i), is_tumour=False, label="notumor", gate="accepted") for i in ids]
    assert study_headline(records, False) == "Study verdict (model, not yet reviewed): No tumour"
    headline = study_headline(records, False, unread=1)
    assert "No tumour" not in headline and "1 series of the study could not be analysed" in headline
    assert headline.startswith("Study verdict (model, not yet reviewed): no verdict (")  # it read "none", as in
    # "nothing found"
    # every saved series reviewed as no tumour: still no study verdict, the unread series is nobody's
    reviewed = [replace(r, final_label="notumor") for r in records]
    headline = study_headline(reviewed, False, unread=1)
    assert not headline.startswith("Study: No tumour") and headline.startswith("Study: no verdict")
    assert study_headline(reviewed, False).startswith("Study: No tumour (radiologist's final label)")
    # a series flagged for review: said with the model's verdict, as the report sent to the PACS says it
    flagged = [replace(records[0], gate="needs_review"), *records[1:]]
    assert study_headline(flagged, False).endswith("No tumour (flagged for review: read the series marked so first)")
    assert "flagged" not in study_headline([replace(r, final_label="notumor") for r in flagged], False)
    # one series overridden to a tumour, another not reviewed: the study is a tumour, not the model's "No tumour"
    partly = [replace(records[0], final_label="glioma"), *records[1:]]
    headline = study_headline(partly, False)
    assert headline.startswith(f"Study: Tumour (radiologist's final label, 1 of {len(records)} series reviewed)")
    partly_clear = [replace(records[0], final_label="notumor"), *records[1:]]
    assert study_headline(partly_clear, False).startswith("Study verdict (model): No tumour - 1 of")


def test_a_report_made_later_from_history_still_gives_no_verdict_to_a_study_with_an_unread_series(
    tmp_path: Path, tiny_classifier: Classifier
) -> None:
    """The series nobody could read is never saved, so a report made from the saved series alone said "No tumour"
    for a study the Study page had left without a verdict; the saved series keep the count."""
    from core.services.studies import save_study
    from core.services.study_reading import analyse_study

    uid = "1.2.826.0.1.3680043.8.498.81"
    files = dicom_series(head_volume(8, 128, range(2, 5)), study_uid=uid, series_uid=uid + ".1")
    files += dicom_series(np.zeros((4, 96, 96), np.uint16), study_uid=uid, series_uid=uid + ".2")
    outcome = analyse_study(files, tiny_classifier)
    assert outcome.unanalysed == 1 and outcome.verdict in (None, "tumour")
    store, images, doctor = SQLiteStore(tmp_path / "r.db"), FolderImages(tmp_path / "img"), Actor("dr-a", "radiologist")
    saved = save_study(outcome, store, actor=doctor, patient_ref=None, images=images, key=b"k" * 32)
    ids = [view.record.id for view in saved.views if view.record is not None]
    assert len(ids) == 1 and store.get(ids[0]).geometry["study_unread"] == 1
    text = text_of(study_report(store, images, doctor, ids, tiny_classifier, None), tmp_path)  # as History makes it
    assert "1 series of the study could not be analysed" in " ".join(text.split())


def test_a_report_names_the_series_of_the_study_that_could_not_be_put_together(
    tmp_path: Path, tiny_classifier: Classifier
) -> None:
    """ "1 series of the study could not be analysed", and not which: the Study page had named it (its DICOM series
    number and why); the PDF made later from History, and History itself, named none to look for."""
    from core.imaging.phantom_series import SAGITTAL
    from core.services.studies import save_study
    from core.services.study_reading import analyse_study
    from tests.scans import relabelled

    uid = "1.2.826.0.1.3680043.8.498.82"
    files = dicom_series(head_volume(8, 128, range(2, 5)), study_uid=uid, series_uid=uid + ".1")
    mixed = dicom_series(head_volume(3), study_uid=uid, series_uid=uid + ".7")  # mixed orientations: not put together
    mixed += dicom_series(head_volume(3, seed=5), orientation=SAGITTAL, study_uid=uid, series_uid=uid + ".7")[:1]
    outcome = analyse_study(files + relabelled(mixed, SeriesNumber=7), tiny_classifier)
    (named,) = outcome.unread
    assert named.startswith("DICOM series 7: ")
    store, images, doctor = SQLiteStore(tmp_path / "r.db"), FolderImages(tmp_path / "img"), Actor("dr-a", "radiologist")
    saved = save_study(outcome, store, actor=doctor, patient_ref=None, images=images, key=b"k" * 32)
    ids = [view.record.id for view in saved.views if view.record is not None]
    assert store.get(ids[0]).study_unread_named == (named,)
    text = " ".join(text_of(study_report(store, images, doctor, ids, tiny_classifier, None), tmp_path).split())
    assert f"Not analysed, read yourself: {named}" in text


def test_a_report_of_a_study_whose_series_are_filed_under_two_patients_is_refused(
    saved_study, tiny_classifier: Classifier
) -> None:
    """A series linked to another patient before the study was saved kept that link: the PDF named the first
    series' reference for every series (one patient's findings under another's reference)."""
    from core.errors import InvalidRecord

    store, images, doctor, ids = saved_study
    assert store.set_patient_ref(ids[1], "f" * 64, was="e" * 64)
    with pytest.raises(InvalidRecord, match="different patient references"):
        study_report(store, images, doctor, ids, tiny_classifier, None)
    assert not [e for e in store.audit_events() if e.action == "report"]  # nothing made, nothing audited
    assert study_report(store, images, doctor, ids[:1], tiny_classifier, None).startswith(b"%PDF")


def test_a_report_whose_events_cannot_all_be_written_leaves_none(
    saved_study, tiny_classifier: Classifier, monkeypatch
) -> None:
    """The first series' "report" event stayed when the second's failed: the trail recorded a report nobody got."""
    from core.errors import StoreUnavailable

    store, images, doctor, ids = saved_study
    written = store.append_audit

    def second_fails(event, *args, **kwargs):
        if event.action == "report" and any(e.action == "report" for e in pending):
            raise StoreUnavailable("The audit trail cannot be written.")
        pending.append(event)
        return written(event, *args, **kwargs)

    pending: list = []
    monkeypatch.setattr(store, "append_audit", second_fails)
    with pytest.raises(StoreUnavailable):
        study_report(store, images, doctor, ids, tiny_classifier, None)
    monkeypatch.undo()
    assert not [e for e in store.audit_events() if e.action == "report"]


def test_a_stretched_series_key_lesion_is_segmented_from_the_pixels_the_model_read(
    tiny_card: Path, tiny_lesion_card: Path
) -> None:
    """The PDF segmented the square display copy of a 1.8 x 0.9 mm series, another input than the model's (and
    than its heat map's): it now reads the stored section, measures it with that section's spacing and draws the
    outline on the displayed one."""
    from core.imaging.phantom_series import dicom_series, head_volume
    from core.imaging.series import read_study
    from core.model.classifier import Classifier, with_segmenter
    from core.model.volume import analyse_volume
    from core.services.reports import key_lesion
    from core.services.series_views import series_view
    from tests.scans import relabelled

    classifier = with_segmenter(Classifier.from_card(tiny_card), tiny_lesion_card)
    files = relabelled(dicom_series(head_volume(6, 64, range(1, 5))), PixelSpacing=[1.8, 0.9])
    view = series_view(analyse_volume(read_study(files)[0], classifier))
    assert view.read is not None and view.sections.shape[1:] == (128, 64)
    key = key_lesion(view, classifier.segmenter)
    assert key is not None and key.lesion is not None and key.lesion.area_px > 0
    assert key.lesion.mask.shape == (64, 64)  # the stored section's, as the model read it
    assert key.lesion.area_mm2 == pytest.approx(key.lesion.area_px * 1.8 * 0.9, rel=1e-3)
    points = np.concatenate(key.lesion.outline)
    assert points[:, 1].max() > 64 and points[:, 1].max() < 128 and points[:, 0].max() < 64  # on the displayed one


def test_the_reports_curve_draws_every_section_read_even_one_between_two_skipped() -> None:
    """Only lines joined neighbouring sections: one above the threshold between two skipped ones was not drawn at
    all, and points at P 1 sat on the frame's top edge."""
    from types import SimpleNamespace

    from core.services.report_drawing import curve

    drawn: list = []

    class Page:
        def __getattr__(self, name):
            return lambda *args, **kwargs: drawn.append((name, args, kwargs))

    view = SimpleNamespace(curve=(0.1, None, 0.95, None, 1.0, 0.2), threshold=0.3)
    curve(Page(), view, 10.0, 20.0, 100.0, 30.0)
    dots = [kwargs for name, _, kwargs in drawn if name == "circle"]
    assert len(dots) == 4  # every section read, the isolated ones too
    assert [round(d["x"]) for d in dots if d["radius"] > 0.5] == [50, 89]  # the two above the threshold, marked
    assert all(20.0 < d["y"] < 50.0 and 10.0 < d["x"] < 110.0 for d in dots)  # inside the frame, off its edges
    (threshold,) = [args for name, args, _ in drawn if name == "line" and args[0::2] == (10.0, 110.0)]  # dashed
    below = next(d for d in dots if round(d["x"]) == 11)  # P 0.1, under the threshold 0.3: drawn below its line
    assert below["y"] > threshold[1]
    ticks = [args[2] for name, args, kwargs in drawn if name == "cell" and kwargs.get("align") == "C"]
    assert ticks == ["1", "5", "6"]  # which dot is which section: the first, the last and every 5th
    scale = [args for name, args, kwargs in drawn if name == "cell" and kwargs.get("align") == "R"]
    assert [text for *_, text in scale] == ["0", "0.5", "1"]  # the caption's "0 to 1" alone left the dots unread
    levels = [args[1] for name, args, _ in drawn if name == "set_xy"][-4:-1]  # each beside its level, 1 on top
    assert 50.0 >= levels[0] > levels[1] > levels[2] >= 20.0 - 1.2
    drawn.clear()
    curve(Page(), SimpleNamespace(curve=(0.4,), threshold=None), 10.0, 20.0, 100.0, 30.0)
    *_, caption = [args for name, args, _ in drawn if name == "cell"]
    assert "red" not in caption[2]  # no threshold, no red: the caption does not say there is


def test_the_pdf_the_lists_and_the_pacs_report_name_each_series_by_the_scanners_number_too(
    tiny_classifier: Classifier, tmp_path: Path
) -> None:
    """The PDF's "Series 2: sagittal" was the page's count in upload order while the report sent to the PACS wrote
    "Series 5 SAG T1": a reader opened series 2 in their viewer, another series. The page's number now carries the
    scanner's beside it, and the PACS report writes "DICOM series 5"."""
    from core.imaging.phantom_series import SAGITTAL
    from core.pacs import objects
    from core.services.studies import save_study
    from core.services.study_reading import analyse_study
    from tests.scans import relabelled
    from ui.wording import series_kind

    uid = "1.2.826.0.1.3680043.8.498.83"
    axial = relabelled(
        dicom_series(head_volume(8, 96, range(2, 5)), study_uid=uid, series_uid=uid + ".1"), SeriesNumber=5
    )
    sagittal = dicom_series(head_volume(6, 96, seed=4), orientation=SAGITTAL, study_uid=uid, series_uid=uid + ".2")
    files = axial + relabelled(sagittal, SeriesNumber=3)
    outcome = analyse_study(files, tiny_classifier)
    store, images, doctor = SQLiteStore(tmp_path / "r.db"), FolderImages(tmp_path / "img"), Actor("dr-a", "radiologist")
    saved = save_study(outcome, store, actor=doctor, patient_ref=None, images=images, key=b"k" * 32)
    records = [store.get(view.record.id) for view in saved.views]
    by_plane = {r.geometry["plane"]: r for r in records}
    assert (by_plane["axial"].geometry["dicom_series"], by_plane["sagittal"].geometry["dicom_series"]) == (5, 3)
    page = {r.geometry["plane"]: r.geometry["series_number"] for r in records}
    assert series_kind(by_plane["sagittal"]) == f"series {page['sagittal']} (DICOM series 3), sagittal, 6 sections"
    text = " ".join(
        text_of(study_report(store, images, doctor, [r.id for r in records], tiny_classifier, None), tmp_path).split()
    )
    assert f"Series {page['axial']} (DICOM series 5): axial, 8 sections" in text
    assert f"Series {page['sagittal']} (DICOM series 3): sagittal, 6 sections" in text
    sr = objects.verdict_report(
        objects.headers(files), outcome.series, outcome.verdict, objects.ModelFacts("m", "1", "0" * 64)
    )
    lines = sorted(
        str(i.TextValue).split(" (UID")[0] for i in sr.ContentSequence if "TextValue" in i and "UID" in str(i.TextValue)
    )
    assert lines == ["DICOM series 3", "DICOM series 5"]
    nifti = replace(
        by_plane["axial"], geometry={k: v for k, v in by_plane["axial"].geometry.items() if k != "dicom_series"}
    )
    assert "DICOM" not in series_kind(nifti)  # a NIfTI volume (or a series saved before) has no such number
