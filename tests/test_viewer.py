"""The viewer's pure parts: windows, distances, the section figure and the quick scroller's frames and titles."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from core.imaging.phantom_series import dicom_series, head_volume
from core.imaging.series import read_study
from core.model.volume import analyse_volume
from core.services.series_views import series_view
from ui.lesion import area_line, stored_volume_line, volume_line
from ui.viewer_figures import cine_frames, curve_figure, distance_mm, section_figure, windowed


def _decode(uri: str, prefix: str) -> np.ndarray:
    assert uri.startswith(prefix)
    return cv2.imdecode(np.frombuffer(base64.b64decode(uri[len(prefix) :]), np.uint8), cv2.IMREAD_UNCHANGED)


def test_a_window_maps_its_level_to_mid_grey_and_its_width_to_the_whole_range() -> None:
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = windowed(ramp, level=100, width=50)
    assert out.dtype == np.uint8
    assert out.flat[74] == 0 and out.flat[126] == 255 and abs(int(out.flat[100]) - 127) <= 4
    assert np.array_equal(windowed(ramp, 128, 256), ramp)  # "as stored" changes nothing
    assert set(np.unique(windowed(ramp, 128, 1))) == {0, 255}  # width 1: a threshold, no division by zero


def test_distances_are_in_millimetres_from_the_pixel_spacing_row_then_column() -> None:
    assert distance_mm((0, 0), (3, 4), (1.0, 1.0)) == pytest.approx(5.0)
    assert distance_mm((0, 0), (10, 0), (0.5, 2.0)) == pytest.approx(20.0)  # x runs along columns
    assert distance_mm((0, 0), (0, 10), (0.5, 2.0)) == pytest.approx(5.0)  # y along rows
    assert distance_mm((0, 0), (1, 1), None) is None


def test_the_section_figure_carries_the_section_as_a_png_with_its_letters_and_line() -> None:
    section = np.tile(np.arange(64, dtype=np.uint8), (32, 1))
    from ui.viewer_figures import TITLE_WIDTH, title_lines

    long = (
        "Section 7 of 12 · H 30.0 mm · P(tumour) 0.93 (at or above the series threshold 0.50) · as a single scan: "
        "Glioma"
    )
    lines = title_lines(long)  # on one line it ran under the toolbar and past the chart's edge
    assert len(lines) > 1 and " · ".join(lines) == long and all(len(x) <= TITLE_WIDTH for x in lines[:-1])
    wrapped = section_figure(section, title=long)["layout"]
    assert wrapped["title"]["text"] == "<br>".join(lines) and wrapped["margin"]["t"] == 16 + 22 * len(lines)
    # in the margin, its first line below the chart's top edge (at 0.99 of the chart it rose past it, half hidden
    # under the control above)
    assert wrapped["title"]["yref"] == "container" and wrapped["title"]["y"] <= 1 - 20 / wrapped["height"]
    figure = section_figure(section, letters={"left": "R", "right": "L"}, line=((1, 2), (30, 2)), title="t")
    png = _decode(figure["data"][0]["source"], "data:image/png;base64,")
    assert png.shape == (32, 64) and np.array_equal(png, section)  # lossless, and grey: a third of the bytes
    letters = figure["layout"]["annotations"]
    assert [a["text"] for a in letters] == ["<b>R</b>", "<b>L</b>"]
    # at the image's edges (its axes' domains, fitted to it), on a dark box: placed on the whole chart, R and L
    # stood in the page's margins beside a narrower image, yellow on near-white
    assert all((a["xref"], a["yref"]) == ("x domain", "y domain") and a["bgcolor"] for a in letters)
    assert [(a["x"], a["xanchor"]) for a in letters] == [(0.0, "left"), (1.0, "right")]
    assert figure["layout"]["xaxis"]["constrain"] == figure["layout"]["yaxis"]["constrain"] == "domain"
    assert figure["layout"]["shapes"][0]["x1"] == 30
    unknown = section_figure(section, letters={})  # the files gave no orientation: said on the image
    assert [a["text"] for a in unknown["layout"]["annotations"]] == ["Orientation not given: left and right unknown"]
    assert section_figure(section)["layout"]["annotations"] == []  # no letters asked for (not a patient image)
    heat = np.zeros((32, 64), np.float32)
    heat[:, 32:] = 1.0
    hot = _decode(section_figure(section, heat=heat, opacity=0.5)["data"][0]["source"], "data:image/png;base64,")
    assert hot[0, 40, 2] > hot[0, 40, 0]  # red (BGR) where the map is hot, grey where it is cold
    assert hot[0, 10, 2] == hot[0, 10, 0]
    from core.model.explain import overlay  # the colours of the Scan page and the PDF (a red-white blend differed)

    assert np.array_equal(cv2.cvtColor(hot, cv2.COLOR_BGR2RGB), overlay(section, heat, 0.5))


def test_the_curve_marks_the_threshold_the_current_section_and_the_sections_above_and_skipped() -> None:
    figure = curve_figure([0.1, None, 0.91234, 0.95, 0.2], threshold=0.5, current=2, marked=[2, 3])
    line, above, skipped = figure["data"]
    assert line["x"] == [1, 2, 3, 4, 5] and line["y"] == [0.1, None, 0.9123, 0.95, 0.2] and not line["connectgaps"]
    assert (above["x"], above["y"], above["name"]) == ([3, 4], [0.9123, 0.95], "at or above threshold")
    assert (skipped["x"], skipped["name"]) == ([2], "skipped")  # counted from 1, as titles
    # below the probability axis, never at P(tumour) 0 (read as "no tumour" for an image nobody analysed)
    low, _ = figure["layout"]["yaxis"]["range"]
    assert low < skipped["y"][0] < 0 and min(figure["layout"]["yaxis"]["tickvals"]) == 0
    # hovers write a probability as the titles do: never "1.00" nor "0.00"
    near_one = curve_figure([0.998, 0.001], threshold=0.5, current=0, marked=[0])
    assert near_one["data"][0]["text"] == [">0.99", "<0.01"] and near_one["data"][1]["text"] == [">0.99"]
    assert "%{text}" in near_one["data"][0]["hovertemplate"] and ".2f" not in near_one["data"][0]["hovertemplate"]
    threshold, current = figure["layout"]["shapes"]
    assert threshold["y0"] == threshold["y1"] == 0.5 and current["x0"] == current["x1"] == 3
    assert figure["layout"]["annotations"][0]["text"] == "judged at 0.50" and figure["layout"]["height"] == 220
    plain = curve_figure([0.1, 0.2], threshold=0.7, current=0)  # nothing above, nothing skipped: the line alone
    assert [trace["name"] for trace in plain["data"]] == ["tumour probability"]
    # whole sections from 1: a short series had ticks at 1.5 and 2.5, a long one a section "0"
    assert figure["layout"]["xaxis"]["range"] == [0.5, 5.5] and figure["layout"]["xaxis"]["dtick"] == 1
    long = curve_figure([0.1] * 40, threshold=0.5, current=0)["layout"]["xaxis"]
    assert long["range"] == [0.5, 40.5] and long["tickformat"] == "d" and "dtick" not in long


def test_the_quick_scroller_gets_every_section_as_a_jpeg_with_a_title_each(tiny_classifier) -> None:
    from core.model.decision import two_places
    from ui.cine import titles

    volume = read_study(dicom_series(head_volume(6, 64, range(2, 4))))[0]
    view = series_view(analyse_volume(volume, tiny_classifier))
    frames = cine_frames(view.sections)
    assert len(frames) == len(view.sections) == 6
    first = _decode(frames[0], "data:image/jpeg;base64,")
    assert first.shape == view.sections[0].shape
    assert np.abs(first.astype(int) - view.sections[0].astype(int)).mean() < 4  # JPEG, close to the display
    lines = titles(view)
    assert len(lines) == 6 and lines[0].startswith("Section 1 of 6 · ") and lines[-1].startswith("Section 6 of 6")
    for index, line in enumerate(lines):
        p = view.curve[index]
        assert ("skipped" in line) if p is None else (f"P(tumour) {two_places(p)}" in line)


def test_sections_of_files_without_positions_are_titled_by_their_number_not_in_millimetres(tiny_classifier) -> None:
    from tests.scans import dicom_bytes
    from ui.cine import titles
    from ui.viewer import section_title

    placed = series_view(analyse_volume(read_study(dicom_series(head_volume(3, 64)))[0], tiny_classifier))
    assert " · H 5.0 mm · " in titles(placed)[1] and " · H 5.0 mm · " in section_title(placed, 1)
    numbered_volume = read_study([dicom_bytes(head_volume(3, 64), frames=3)])[0]  # classic multi-frame, no step
    numbered = series_view(analyse_volume(numbered_volume, tiny_classifier))
    assert " · file number 2 · " in titles(numbered)[1] and " · file number 2 · " in section_title(numbered, 1)
    assert not any(" mm" in line for line in titles(numbered))


def test_the_lesion_outline_is_a_path_on_the_section_figure_and_drawn_into_the_quick_scrollers_frames() -> None:
    sections = np.full((2, 40, 40), 60, np.uint8)
    square = np.array([[10, 10], [10, 29], [29, 29], [29, 10]], np.int32)
    figure = section_figure(sections[0], outline=(square,))
    paths = [s for s in figure["layout"]["shapes"] if s["type"] == "path"]
    assert [s["line"]["color"] for s in paths] == ["#000000", "#ff00ff"]  # a dark rim under the magenta line
    assert paths[1]["path"] == "M10,10L10,29L29,29L29,10Z"
    assert not section_figure(sections[0])["layout"]["shapes"]
    framed = [_decode(f, "data:image/jpeg;base64,") for f in cine_frames(sections, ((square,), ()))]
    assert framed[0].ndim == 3 and framed[0][10, 20, 2] > 180 and framed[0][10, 20, 1] < 90  # magenta (BGR)
    assert framed[1].ndim == 2  # a section without a lesion stays grey
    assert int(framed[0][20, 20, 1]) == pytest.approx(60, abs=6)  # inside the outline: the section itself


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (lambda: area_line(1368, 342.0), "Lesion: 342 mm² (1,368 px)"),
        (lambda: area_line(1368, None), "Lesion: 1,368 px (no pixel spacing)"),
        (lambda: area_line(0, 0.0), "No lesion outlined"),
        (lambda: area_line(None, None), None),
        (lambda: volume_line([0, 5, 9, 0], 12.44, (1, 2)), "Lesion volume: 12.4 mL, sections 2–3"),
        (lambda: volume_line([0, 5, 0], 0.05, (1, 1)), "Lesion volume: 0.05 mL, section 2"),
        (
            lambda: volume_line([0, 5, 9], None, (1, 2)),
            "Lesion: 14 px over sections 2–3 (no voxel size: no volume in mL)",
        ),
        (lambda: volume_line([0, 0], None, None), "No lesion outlined in this series"),
        (lambda: volume_line(None, None, None), None),
        (lambda: stored_volume_line(900, 3.25), "Lesion volume: 3.2 mL, as saved; outlines are not kept"),
        (lambda: stored_volume_line(None, None), None),
    ],
)
def test_lesion_lines_read_as_the_screen_shows_them(line, expected) -> None:
    assert line() == expected


def test_a_series_verdict_that_needs_review_says_so_on_its_line(tiny_classifier) -> None:
    from dataclasses import replace

    from ui.viewer import verdict_line

    view = series_view(analyse_volume(read_study(dicom_series(head_volume(4, 64)))[0], tiny_classifier))
    assert "needs review" in verdict_line(replace(view, needs_review=True))
    assert "needs review" not in verdict_line(replace(view, needs_review=False))
    # which of the two reasons (it read "few neighbours, or in the uncertain band" for both)
    full = replace(view, needs_review=True, neighbours=3, window=(0, 1, 2))
    assert verdict_line(full).count("(its score is in the review band)") == 1
    short = replace(full, window=(1, 2))
    assert "**needs review** (it rests on 2 neighbouring sections, fewer than the rule's 3)" in verdict_line(short)


def test_a_tumour_series_score_is_called_a_score_never_a_probability_of_tumour(tiny_classifier) -> None:
    """A meningioma series read "series tumour probability 45.9%" (below even odds) on the viewer, the Worklist and
    in the PDF: the number is its rule's score (the lowest of its best run of neighbouring sections)."""
    from dataclasses import replace

    from core.model.decision import SERIES_SCORE
    from core.services.report_text import series_lines
    from core.services.studies import series_record
    from ui.viewer import verdict_line

    analysis = analyse_volume(read_study(dicom_series(head_volume(6, 64)))[0], tiny_classifier)
    view = replace(series_view(analysis), label="meningioma", score=0.459)
    line = verdict_line(view)
    assert "series score **45.9%**" in line and SERIES_SCORE in line and "probability **" not in line
    record = replace(series_record(analysis, patient_ref=None, uploader="dr-a", key=None), label="meningioma")
    (first, *_) = series_lines(replace(record, tumour_probability=0.459), None, [])
    assert "series score 45.9%" in first and "tumour probability 45.9" not in first


def test_a_sections_position_names_the_patient_side_it_lies_on(tiny_classifier) -> None:
    """A sagittal section 30 mm to the patient's left read "-30.0 mm" (measured along the view's normal, which
    points to the right): read against DICOM's x, the wrong hemisphere."""
    import io

    import pydicom

    from core.imaging.phantom_series import SAGITTAL

    files = []
    for k, x in enumerate((-30.0, 30.0)):
        ds = pydicom.dcmread(io.BytesIO(dicom_series(head_volume(2, 64, seed=k), orientation=SAGITTAL)[k]))
        ds.ImagePositionPatient = [x, -100.0, 100.0]
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        files.append(out.getvalue())
    view = series_view(analyse_volume(read_study(files)[0], tiny_classifier))
    assert sorted(view.place(i) for i in range(2)) == ["L 30.0 mm", "R 30.0 mm"]
    left = next(i for i in range(2) if view.place(i) == "L 30.0 mm")
    assert view.positions[left] == -30.0  # stored along the normal, which points to the patient's right


def test_a_sections_title_reads_it_against_the_series_rule_that_made_the_verdict(tiny_classifier) -> None:
    """A section at 0.40 under a rule at 0.30 counted toward a tumour verdict while its title said "No tumour",
    the call it would get as a single scan."""
    from dataclasses import replace

    from ui.cine import titles
    from ui.viewer import section_title

    view = series_view(analyse_volume(read_study(dicom_series(head_volume(3, 64)))[0], tiny_classifier))
    view = replace(view, curve=(0.40, 0.20, None), section_labels=("notumor", "notumor", None), threshold=0.30)
    view = replace(view, skipped={2: "too little brain"})
    first = section_title(view, 0)
    assert "P(tumour) 0.40 (at or above the series threshold 0.30) · as a single scan: No tumour" in first
    assert "(below the series threshold 0.30)" in section_title(view, 1)
    assert "skipped: too little brain" in section_title(view, 2)
    assert "(at or above the series threshold 0.30)" in titles(view)[0]
    unknown = replace(view, threshold=None)  # a series saved by another model, its rule not recorded
    assert "series threshold" not in section_title(unknown, 0)


def test_the_quick_scroller_names_the_image_edges_or_says_the_files_give_none(tiny_classifier) -> None:
    """Its frames carry no letters: nothing told the reader which side was the patient's left."""
    from dataclasses import replace

    from ui.cine import directions

    axial = series_view(analyse_volume(read_study(dicom_series(head_volume(3, 64)))[0], tiny_classifier))
    assert directions(axial) == "Image edges: top A, bottom P, left R, right L"  # radiological view
    bare = replace(axial, geometry={**axial.geometry, "orientation": None})  # files without ImageOrientationPatient
    assert directions(bare) == "Orientation not given: left and right unknown."


def test_pixels_spaced_unlike_in_rows_and_columns_are_drawn_square(tiny_classifier) -> None:
    """A series of 2 x 1 mm pixels (rows x columns) was drawn with square pixels, squashed to half its height."""
    from dataclasses import replace

    from core.services.series_views import as_displayed

    sections = np.zeros((2, 40, 60), np.uint8)
    shown, spacing = as_displayed(sections, (2.0, 1.0))
    assert shown.shape == (2, 80, 60) and spacing == pytest.approx([1.0, 1.0])  # 80 mm tall, 60 mm wide
    big, spacing = as_displayed(np.zeros((1, 400, 300), np.uint8), (1.0, 3.0))  # 400 x 900 mm: fits DISPLAY_SIDE
    assert big.shape[2] / big.shape[1] == pytest.approx(900 / 400, rel=0.01) and spacing[0] == pytest.approx(
        spacing[1], rel=0.01
    )
    assert as_displayed(sections, None)[0].shape == (2, 40, 60)
    assert as_displayed(sections, (0.0, 1.0))[0].shape == (2, 40, 60)
    view = series_view(analyse_volume(read_study(dicom_series(head_volume(3, 64)))[0], tiny_classifier))
    assert view.sections.shape[1:] == (64, 64)  # square pixels stay as they are
    assert replace(view).geometry["spacing"] == pytest.approx([0.9, 0.9])


def test_probabilities_are_never_printed_as_certainty() -> None:
    """29 of 60 pituitary slices read "100.0%", and sections "P(tumour) 1.00", in the viewer, the scroller and the
    PDF."""
    from core.model.decision import bounded, percent, two_places

    assert [percent(p) for p in (0.9996, 0.0004, 0.123)] == [">99.9%", "<0.1%", "12.3%"]
    assert [two_places(p) for p in (0.996, 0.004, 0.5)] == [">0.99", "<0.01", "0.50"]
    assert [bounded(p, 3) for p in (0.9995, 0.999, 0.0005, 0.001)] == [">0.999", "0.999", "<0.001", "0.001"]


@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.5, 0.89])  # the card's review band, series and scan thresholds
def test_a_value_below_a_threshold_never_reads_as_the_threshold(threshold: float) -> None:
    """Rounded, a section at 0.2996 read "P(tumour) 0.30 (below the series threshold 0.30)", and a scan at 0.0496
    "5.0%" unflagged beside a flagged "5.0%" "in the review band (5%-89%)". Every figure is cut, never rounded up."""
    from core.model.decision import bounded, percent, two_places

    for value in (threshold - 0.0004, threshold - 1e-5, threshold, threshold + 1e-5):
        shown = [float(percent(value).rstrip("%")) / 100, float(two_places(value)), float(bounded(value, 3))]
        assert all((s < threshold) == (value < threshold) for s in shown), (value, shown)
    from ui.viewer import _delta  # History's change: no "+0.00" drawn as a red rise

    assert [_delta(v, "in score") for v in (0.001, -0.004, 0.02, None)] == [
        None,
        None,
        "+0.02 in score since the prior",
        None,
    ]


def test_a_sections_heat_map_is_made_from_the_pixels_the_model_read_and_drawn_on_the_displayed_ones(
    tiny_classifier, monkeypatch
) -> None:
    """The heat map re-analysed the square display copy of a 1.8 x 0.9 mm series: P(tumour) 1.00 on the curve, 0.28
    to 0.64 on the copy, so the map explained another input than the verdict's."""
    from core.model.explain import Explainer
    from core.services import series_views
    from tests.scans import relabelled

    files = relabelled(dicom_series(head_volume(3, 64)), PixelSpacing=[1.8, 0.9])
    view = series_view(analyse_volume(read_study(files)[0], tiny_classifier))
    assert view.read is not None and view.read.shape == (3, 64, 64) and view.sections.shape[1:] == (128, 64)
    read = []
    real = series_views.analyse_scan
    monkeypatch.setattr(series_views, "analyse_scan", lambda scan, c: read.append(scan.pixels.shape) or real(scan, c))
    heat = series_views.section_heat(view, 1, tiny_classifier, Explainer(tiny_classifier))
    assert read == [(64, 64)] and heat is not None and heat.shape == (128, 64)
    square = series_view(analyse_volume(read_study(dicom_series(head_volume(3, 64)))[0], tiny_classifier))
    assert square.read is None  # the displayed sections are those read: not kept twice
    shrunk = series_view(analyse_volume(read_study(dicom_series(head_volume(2, 600)))[0], tiny_classifier))
    assert shrunk.sections.shape[1:] == (512, 512) and shrunk.read is None  # shrunk only: the same anatomy


def test_a_single_scan_with_unlike_pixel_spacing_is_drawn_true_as_the_study_page_draws_it(tiny_classifier) -> None:
    """A 256 x 256 DICOM slice with 1.0 x 0.5 mm pixels was drawn square on the Scan page (squashed 2:1), while the
    Study page drew the same file 512 x 256."""
    import cv2

    from core.imaging.scan import read_scan
    from core.model.analysis import analyse_scan
    from core.services.views import display_factors, scan_view
    from tests.scans import dicom_bytes, synthetic_slice

    data = dicom_bytes(synthetic_slice(256).astype("uint16") * 16, extra={"PixelSpacing": [1.0, 0.5]})
    view = scan_view(analyse_scan(read_scan(data), tiny_classifier), None)
    drawn = cv2.imdecode(np.frombuffer(view.original(), np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape[:2] == (512, 256) and (view.height, view.width) == (256, 256)  # the file's own size said
    assert display_factors((256, 256), (1.0, 0.5)) == (2.0, 1.0)
    assert display_factors((1024, 512), None) == (0.5, 0.5) and display_factors((300, 300), (0.0, 0.5)) == (1.0, 1.0)
    # stored as columns down the patient's right (a display that turns rows into columns): its spacing turns with
    # it. Read as stored, the 0.5 x 1 mm slice was drawn 4:1 on the Scan page and kept so for the Worklist
    from core.imaging.geometry import pixel_spacing

    turned = {"PixelSpacing": [0.5, 1.0], "ImageOrientationPatient": [0, 1, 0, 1, 0, 0]}
    scan = read_scan(dicom_bytes(synthetic_slice(256).astype("uint16") * 16, extra=turned))
    assert scan.display.transpose and pixel_spacing(scan) == (1.0, 0.5)
    analysis = analyse_scan(scan, tiny_classifier)
    view = scan_view(analysis, None)
    assert cv2.imdecode(np.frombuffer(view.original(), np.uint8), cv2.IMREAD_COLOR).shape[:2] == (512, 256)
    from core.services.triage import new_record

    assert new_record(analysis, patient_ref=None, uploader="dr-a").geometry["spacing"] == [1.0, 0.5]  # the Worklist's
