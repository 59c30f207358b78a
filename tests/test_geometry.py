"""Orientation letters are geometry: known-answer tests with a marker in a known quadrant of the patient.

Every volume below holds a head (an ellipse) with a bright marker in the patient's right-anterior quadrant (axial),
right-superior (coronal) or anterior-superior (sagittal), written under many geometries. Whatever the file's axes,
the displayed section must show the marker on the side its letters name, in the radiological view (the patient's
right on the screen's left; anterior on the left of a sagittal section; anterior or head at the top).
"""

from __future__ import annotations

from itertools import product

import numpy as np
import pytest

from core.imaging.geometry import (
    DisplayTransform,
    apply_transform,
    display_transform,
    nifti_orientation,
    orientation_letters,
    transformed_orientation,
)
from core.imaging.phantom_series import dicom_series
from core.imaging.series import read_study

RADIOLOGICAL = {
    "axial": {"left": "R", "right": "L", "top": "A", "bottom": "P"},
    "coronal": {"left": "R", "right": "L", "top": "H", "bottom": "F"},
    "sagittal": {"left": "A", "right": "P", "top": "H", "bottom": "F"},
}


def marker_sides(section: np.ndarray, letters: dict[str, str]) -> set[str]:
    """The letters of the screen edges nearest the brightest spot of a displayed section."""
    rows, cols = np.nonzero(section >= section.max() - 1)
    y, x = rows.mean() / section.shape[0], cols.mean() / section.shape[1]
    assert abs(x - 0.5) > 0.04 and abs(y - 0.5) > 0.04, "the marker must sit clearly in one quadrant"
    return {letters["left"] if x < 0.5 else letters["right"], letters["top"] if y < 0.5 else letters["bottom"]}


def ras_head(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Intensity at RAS+ world points (mm): a head 120 x 150 mm, the marker 30 mm right and 40 mm anterior."""
    head = ((x / 60) ** 2 + (y / 75) ** 2 < 1) & (np.abs(z) < 40)
    marker = ((x - 30) ** 2 + (y - 40) ** 2 < 12**2) & (np.abs(z) < 40)
    return np.where(marker, 1000, np.where(head, 300, 0)).astype(np.int16)


def nifti_of(affine: np.ndarray, shape: tuple[int, int, int]) -> bytes:
    """A NIfTI file whose voxels sample :func:`ras_head` through ``affine``."""
    import nibabel

    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    world = affine[:3, :3] @ np.stack([i.ravel(), j.ravel(), k.ravel()]) + affine[:3, 3:4]
    data = ras_head(*world).reshape(shape)
    return nibabel.Nifti1Image(data, affine).to_bytes()


def centred(axes: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """An affine with voxel axes ``axes`` (3 x 3, mm per voxel) whose centre voxel lies at the world origin."""
    affine = np.eye(4)
    affine[:3, :3] = axes
    affine[:3, 3] = -axes @ ((np.array(shape) - 1) / 2)
    return affine


def rotation_z(degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


NIFTI_AXES = {
    "RAS": np.diag([2.0, 2.0, 10.0]),
    "LAS": np.diag([-2.0, 2.0, 10.0]),
    "LPS": np.diag([-2.0, -2.0, 10.0]),
    "RPI": np.diag([2.0, -2.0, -10.0]),
    "swapped (PRS: i runs posterior, j right)": np.array([[0, 2.0, 0], [-2.0, 0, 0], [0, 0, 10.0]]),
    "oblique (20 deg about z)": rotation_z(20) @ np.diag([2.0, 2.0, 10.0]),
    "oblique and mirrored (-25 deg, LAS)": rotation_z(-25) @ np.diag([-2.0, 2.0, 10.0]),
}


@pytest.mark.parametrize("name", list(NIFTI_AXES))
def test_a_nifti_marker_in_the_right_anterior_quadrant_shows_under_the_letters_r_and_a(name: str) -> None:
    shape = (80, 96, 5)
    (volume,) = read_study([nifti_of(centred(NIFTI_AXES[name], shape), shape)])
    assert volume.letters == RADIOLOGICAL["axial"]
    assert marker_sides(volume.sections[len(volume.sections) // 2], volume.letters) == {"R", "A"}


def stored_dicom(plane: str, flip_rows: bool, flip_cols: bool, transpose: bool) -> tuple[list[bytes], set[str]]:
    """A 5-section DICOM series of ``plane`` stored in one of eight ways, and where its marker is in the patient."""
    standard = {
        "axial": (1.0, 0, 0, 0, 1.0, 0),
        "coronal": (1.0, 0, 0, 0, 0, -1.0),
        "sagittal": (0, 1.0, 0, 0, 0, -1.0),
    }
    section = np.zeros((96, 96), np.uint16)
    yy, xx = np.mgrid[:96, :96]
    section[((yy - 48) / 40) ** 2 + ((xx - 48) / 34) ** 2 < 1] = 1200
    section[(yy - 22) ** 2 + (xx - 22) ** 2 < 36] = 4000  # top-left of the standard view
    expected = {"axial": {"R", "A"}, "coronal": {"R", "H"}, "sagittal": {"A", "H"}}[plane]
    transform = DisplayTransform(transpose, flip_rows, flip_cols)
    stored = apply_transform(section, transform)
    orientation = transformed_orientation(standard[plane], transform)
    return dicom_series(np.stack([stored] * 5), orientation=orientation), expected


STORED_WAYS = list(product((False, True), repeat=3))  # every flip and transpose of the standard view


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("flags", STORED_WAYS)
def test_dicom_series_in_every_plane_and_storage_order_show_the_marker_under_its_letters(plane, flags) -> None:
    files, expected = stored_dicom(plane, *flags)
    (volume,) = read_study(files)
    assert volume.plane == plane
    assert volume.letters == RADIOLOGICAL[plane]
    assert marker_sides(volume.sections[2], volume.letters) == expected


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("flags", STORED_WAYS)
def test_one_dicom_slice_on_the_scan_page_shows_the_marker_under_its_letters_as_the_study_page_does(
    plane, flags
) -> None:
    """The Scan page showed a single file as stored, with no letters: the patient's right on the right for a file
    stored that way, while the Study page showed the same file mirrored back, letters beside it."""
    from core.imaging.scan import read_scan

    files, expected = stored_dicom(plane, *flags)
    scan = read_scan(files[2])
    assert scan.letters == RADIOLOGICAL[plane] and marker_sides(scan.pixels, scan.letters) == expected


def test_an_oblique_section_names_each_edge_with_the_axes_it_leans_towards_and_never_one_letter_twice() -> None:
    """At 45 degrees the dominant axis was a tie: the right edge read "L" and the bottom "R", so R stood at two
    edges; a slight obliquity keeps its single letters."""
    letters = orientation_letters((0.7071, 0.7071, 0, -0.7071, 0.7071, 0))
    assert letters == {"right": "LP", "left": "RA", "bottom": "RP", "top": "LA"}
    assert len(set(letters.values())) == 4
    slight = rotation_z(20) @ np.eye(3)
    assert orientation_letters((*slight[:, 0], *slight[:, 1])) == RADIOLOGICAL["axial"]  # 20 degrees: L right, P bottom
    assert orientation_letters((1.0, 0, 0, 0, 1.0, 0)) == RADIOLOGICAL["axial"]


def test_the_display_transform_leaves_standard_views_alone_and_moves_geometry_with_pixels() -> None:
    assert display_transform((1.0, 0, 0, 0, 1.0, 0)).identity
    assert display_transform((0, 1.0, 0, 0, 0, -1.0)).identity
    neurological = (-1.0, 0, 0, 0, 1.0, 0)
    transform = display_transform(neurological)
    assert transform == DisplayTransform(flip_left_right=True)
    assert orientation_letters(transformed_orientation(neurological, transform)) == RADIOLOGICAL["axial"]


def test_nifti_directions_come_from_the_affine_in_patient_lps_coordinates() -> None:
    assert nifti_orientation(np.diag([2.0, 2.0, 10.0, 1.0])) == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    assert nifti_orientation(np.diag([-1.0, -1.0, 1.0, 1.0])) == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def test_study_command_writes_the_displayed_middle_section_and_its_letters(
    tmp_path, tiny_card, capsys, monkeypatch
) -> None:
    import json

    import cv2

    from core.cli import main

    shape = (80, 96, 5)
    path = tmp_path / "head.nii"
    path.write_bytes(nifti_of(centred(NIFTI_AXES["LPS"], shape), shape))
    main(["study", "--model", str(tiny_card), "--display-out", str(tmp_path / "shown"), str(path)])
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    display = line["display"]
    assert {k: display[k] for k in ("top", "bottom", "left", "right")} == RADIOLOGICAL["axial"]
    shown = cv2.imread(display["image"], cv2.IMREAD_GRAYSCALE)
    assert shown.shape == (96, 80) and marker_sides(shown, display) == {"R", "A"}
    (tmp_path / "a-file").write_text("not a folder")  # refused before anything is analysed or saved
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    assert main(["study", "--display-out", str(tmp_path / "a-file"), "--save", str(path)]) == 2
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert line["error"]["code"] == "unwritable" and not (tmp_path / "data").exists()


def test_the_study_commands_picture_of_unlike_pixels_is_drawn_true_as_the_viewer_draws_it() -> None:
    """0.5 x 1 mm pixels (a 64 x 128 stored section of a square field) were written 64 x 128, squashed 2:1."""
    import cv2

    from core.imaging.phantom_series import dicom_series, head_volume
    from core.imaging.series import read_study
    from core.services.study_reading import display_png

    files = dicom_series(head_volume(3, 128)[:, ::2, :])

    def spaced(ds, k) -> None:
        ds.PixelSpacing = [1.8, 0.9]  # rows 1.8 mm apart, columns 0.9 mm

    from tests.test_series import rewritten

    (volume,) = read_study(rewritten(files, spaced))
    assert volume.sections.shape[1:] == (64, 128)
    _, png = display_png(volume)
    assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE).shape == (128, 128)


def test_study_output_that_cannot_be_written_is_refused_first_or_said_on_its_line_and_a_link_loop_is_one_path(
    tmp_path, tiny_card, capsys, monkeypatch
) -> None:
    """A display folder that existed read-only passed the check (it only made the folder): the batch saved its
    first series, then stopped on its first picture with 'bad_input', unreported, the other PATHs never read. A
    PATH that is a link loop ended the whole batch with 'internal_error' before anything was read."""
    import json
    import tempfile

    from core.cli import main
    from core.cli import studies as study_command

    shape = (80, 96, 5)
    path = tmp_path / "head.nii"
    path.write_bytes(nifti_of(centred(NIFTI_AXES["LPS"], shape), shape))
    (tmp_path / "read-only").mkdir()

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", denied)  # root may write anywhere: the folder refuses as it would
    assert main(["study", "--model", str(tiny_card), "--display-out", str(tmp_path / "read-only"), str(path)]) == 2
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert line["error"]["code"] == "unwritable" and "permission denied" in line["error"]["message"]
    monkeypatch.undo()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(study_command, "write_new", full)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    code = main(
        ["study", "--model", str(tiny_card), "--display-out", str(tmp_path / "out"), str(tmp_path / "loop"), str(path)]
    )
    lines = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert code == 1 and len(lines) == 2 and lines[0]["error"]["code"] in ("unreadable", "not_found")
    assert lines[1]["display"]["error"] == "not written (no space left on device)" and "study_verdict" in lines[1]


def test_direction_cosines_a_little_off_unit_length_are_normalised_before_they_measure_steps() -> None:
    """Cosines within the 5 % a file may be off were used as written: ``1.04\\0\\0\\0\\1.04\\0`` made every step
    between sections, and so every lesion volume, 8 % too large with no word."""
    from core.imaging.phantom_series import head_volume
    from tests.scans import relabelled

    files = relabelled(
        dicom_series(head_volume(4, 64), spacing=2.5), ImageOrientationPatient=[1.04, 0, 0, 0.02, 1.04, 0]
    )
    volume = read_study(files)[0]
    assert volume.step_mm == pytest.approx(2.5, rel=1e-3)
    row, column = np.array(volume.orientation[:3]), np.array(volume.orientation[3:])
    assert np.linalg.norm(row) == pytest.approx(1.0) and np.linalg.norm(column) == pytest.approx(1.0)
    assert row @ column == pytest.approx(0.0, abs=1e-12)


def test_a_position_along_an_oblique_normal_names_both_sides_it_leans_to_as_the_edge_letters_do() -> None:
    """At 45 degrees between left and posterior the dominant axis alone was a tie: "L 30.9 mm" hid the second
    direction the edge letters name."""
    from core.imaging.geometry import place_text

    oblique = (0.7071, -0.7071, 0.0, 0.0, 0.0, -1.0)  # normal (0.71, 0.71, 0): towards left and posterior
    assert (place_text(oblique, 30.9), place_text(oblique, -30.9)) == ("LP 30.9 mm", "RA 30.9 mm")
    assert (place_text((1, 0, 0, 0, 1, 0), 12.0), place_text((1, 0, 0, 0, 1, 0), -12.0)) == ("H 12.0 mm", "F 12.0 mm")
    assert place_text(None, -4.0) == "-4.0 mm"


def test_a_scans_pixel_spacing_is_read_as_a_series_sections_are() -> None:
    """Two parsers of one header field: PixelSpacing 0.9\\0.9\\0.9 gave a series mm and mm2 and a single scan of the
    same file pixels only."""
    from types import SimpleNamespace

    from core.imaging.geometry import dicom_spacing, pixel_spacing

    for text in ("0.9\\0.9", "0.9\\0.9\\0.9", "a\\b", "0\\1", "0.5\\1.0", "1e30\\1"):
        scan = SimpleNamespace(acquisition={"PixelSpacing": text})
        assert pixel_spacing(scan) == dicom_spacing(text.split("\\")), text
    assert pixel_spacing(SimpleNamespace(acquisition={"PixelSpacing": "0.9\\0.9\\0.9"})) == (0.9, 0.9)
