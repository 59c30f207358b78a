"""Reading whole series and volumes: order from geometry, every bad case named, nothing identifying kept."""

from __future__ import annotations

import io
import random
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

from core.errors import CorruptImage, FileTooLarge, ScanError, UnsupportedFormat
from core.imaging.geometry import orientation_letters
from core.imaging.limits import StudyLimits
from core.imaging.phantom_series import (
    AXIAL,
    CORONAL,
    SAGITTAL,
    dicom_series,
    enhanced_multiframe,
    head_volume,
    nifti,
    zipped,
)
from core.imaging.series import SeriesError, read_study, read_upload
from tests.scans import relabelled


def expected(volume: np.ndarray) -> np.ndarray:
    """The display of a 12-bit section with no window: its own 0.5-99.5 percentile stretch."""
    from core.imaging import stretch_to_uint8

    return np.stack([stretch_to_uint8(s) for s in volume])


def test_files_in_any_order_are_ordered_by_their_position_along_the_normal() -> None:
    volume = head_volume(10)
    files = dicom_series(volume)
    random.Random(3).shuffle(files)
    (series,) = read_study(files)
    assert series.sections.shape == (10, 128, 128) and series.source == "DICOM series"
    assert np.array_equal(series.sections, expected(volume))
    assert series.positions == tuple(5.0 * k for k in range(10)) and series.spacing == (0.9, 0.9)
    assert series.plane == "axial" and series.thickness == 5.0 and not series.warnings
    assert "ZZCANARY" not in repr(series) and "1.2.826" not in series.study + series.series  # UIDs only hashed


@pytest.mark.parametrize(
    ("orientation", "plane"),
    [(AXIAL, "axial"), (CORONAL, "coronal"), (SAGITTAL, "sagittal"), ((0.94, 0.342, 0.0, -0.342, 0.94, 0.0), "axial")],
)
def test_every_plane_and_an_oblique_one_are_ordered_by_geometry(orientation, plane) -> None:
    volume = head_volume(6)
    files = dicom_series(volume, orientation=orientation)
    (series,) = read_study(files[::-1])
    assert series.plane == plane and np.array_equal(series.sections, expected(volume))


def test_a_missing_section_is_named_as_a_gap() -> None:
    (series,) = read_study(dicom_series(head_volume(10), skip=(4,)))
    assert len(series.sections) == 9 and any("gap of 10.0 mm between sections 4 and 5" in w for w in series.warnings)


def rewritten(files: list[bytes], change) -> list[bytes]:
    """The files with ``change(dataset, k)`` applied to the k-th one."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    out = []
    for k, data in enumerate(files):
        ds = dcmread(DicomBytesIO(data))
        change(ds, k)
        buffer = DicomBytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def test_files_without_positions_are_numbered_and_no_distance_in_mm_is_claimed() -> None:
    """Instance numbers 1, 2, 3, 6 and no ImagePositionPatient: ordered by number, the jump named as numbers."""

    def numbered(ds, k) -> None:
        del ds.ImagePositionPatient
        ds.InstanceNumber = (1, 2, 3, 6)[k]

    (series,) = read_study(rewritten(dicom_series(head_volume(4)), numbered))
    assert not series.positions_in_mm and series.step_mm == 5.0  # the thickness, not a position's step
    assert any("jump from 3 to 6" in w for w in series.warnings)
    assert not any(" mm" in w for w in series.warnings)


@pytest.mark.parametrize("plane", [AXIAL, SAGITTAL])
def test_files_with_positions_but_no_orientation_are_stacked_by_their_positions_not_their_numbers(plane) -> None:
    """An export that dropped ImageOrientationPatient alone, numbers in acquisition order (1, 3, 5, ..., 2, 4, ...):
    the stack was put in that order, so the series rule's neighbours were sections two apart, and the note said
    the files gave no positions."""
    volume = head_volume(8, 64)
    order = [0, 4, 1, 5, 2, 6, 3, 7]  # section k is acquired order[k]-th: interleaved

    def no_orientation(ds, k) -> None:
        del ds.ImageOrientationPatient
        ds.InstanceNumber = order[k] + 1

    (series,) = read_study(rewritten(dicom_series(volume, orientation=plane), no_orientation))
    places = [
        int(np.argmax([np.corrcoef(shown.ravel(), v.ravel())[0, 1] for v in volume])) for shown in series.sections
    ]
    assert places in (list(range(8)), list(range(7, -1, -1)))  # neighbours side by side, which way round unknown
    assert series.positions_in_mm and series.step_mm == 5.0
    assert series.orientation is None and series.plane is None  # no letters claimed
    assert series.warnings == (
        "The files give no orientation (ImageOrientationPatient): sections are ordered by their positions, and "
        "which way they run (head or foot, left or right) is not known.",
    )
    assert not any("give no positions" in w for w in series.warnings)
    # one file without a position among them is left out, as with an orientation (it put all in number order)

    def one_unplaced(ds, k) -> None:
        no_orientation(ds, k)
        if k == 3:
            del ds.ImagePositionPatient

    (series,) = read_study(rewritten(dicom_series(volume, orientation=plane), one_unplaced))
    places = [
        int(np.argmax([np.corrcoef(shown.ravel(), v.ravel())[0, 1] for v in volume])) for shown in series.sections
    ]
    assert places in ([0, 1, 2, 4, 5, 6, 7], [7, 6, 5, 4, 2, 1, 0])
    assert any("1 file without a position in the head left out" in w for w in series.warnings)

    def one_point(ds, k) -> None:  # two different images at one point: no stack, as with an orientation
        no_orientation(ds, k)
        ds.ImagePositionPatient = [0.0, 0.0, 0.0]

    with pytest.raises(SeriesError, match="Two different sections lie at the same position"):
        read_study(rewritten(dicom_series(volume, orientation=plane), one_point))
    # one section alone: nothing is ordered, and the note said sections were ordered by their positions
    (single,) = read_study(rewritten(dicom_series(volume[:1], orientation=plane), no_orientation))
    assert single.warnings == ("The file gives no orientation (ImageOrientationPatient): left and right are unknown.",)


@pytest.mark.parametrize("plane", [AXIAL, CORONAL, SAGITTAL])
def test_the_first_section_is_the_same_end_of_the_head_however_the_files_encode_their_orientation(plane) -> None:
    """A patient-safety check: the same sections encoded with a mirrored row direction (the normal reversed) come
    out in the same order and the same way round, so section k of one series is section k of the other."""
    volume = head_volume(5)
    mirrored = (-plane[0], -plane[1], -plane[2], *plane[3:])
    (usual,) = read_study(dicom_series(volume, orientation=plane))
    # the mirrored files: the same patient positions, each section's columns stored in the opposite direction
    files = dicom_series(volume[:, :, ::-1], orientation=mirrored)

    def same_place(ds, k) -> None:  # the first pixel of a mirrored row lies at the far end of the usual row
        normal = np.cross(plane[:3], plane[3:])
        ds.ImagePositionPatient = [
            float(v) for v in k * 5.0 * normal + np.array([-100.0, -100.0, 0.0]) + 127 * 0.9 * np.array(plane[:3])
        ]

    (other,) = read_study(rewritten(files, same_place))
    assert other.orientation == usual.orientation and other.letters == usual.letters
    assert np.array_equal(other.sections, usual.sections)
    assert other.positions == usual.positions


def test_enhanced_multiframe_orientation_and_spacing_per_frame_are_read_and_mixed_ones_refused() -> None:
    volume = head_volume(4)
    (series,) = read_study([enhanced_multiframe(volume, order=[2, 0, 3, 1], orientation=SAGITTAL, per_frame=True)])
    assert series.plane == "sagittal" and series.spacing == (0.9, 0.9) and series.positions_in_mm
    assert np.allclose(np.diff(series.positions), 5.0) and not series.warnings
    assert np.array_equal(series.sections, expected(volume))
    with pytest.raises(SeriesError, match="mixes section orientations"):
        read_study([enhanced_multiframe(volume, orientation=SAGITTAL, per_frame=True, odd_frame=AXIAL)])


def test_an_upload_whose_headers_declare_too_many_pixels_is_refused_before_any_is_decoded(monkeypatch) -> None:
    from core.imaging import dicom

    files = dicom_series(head_volume(6))  # 6 x 128 x 128 pixels
    monkeypatch.setattr(dicom, "decode_frame", lambda *a: pytest.fail("decoded before the budget was checked"))
    with pytest.raises(FileTooLarge, match="refused before decoding"):
        read_study(files, study_limits=StudyLimits(max_dicom_pixels=5 * 128 * 128))
    with pytest.raises(FileTooLarge, match="refused before decoding"):
        read_study([enhanced_multiframe(head_volume(6))], study_limits=StudyLimits(max_dicom_pixels=5 * 128 * 128))


def test_a_file_of_more_frames_than_a_series_may_hold_leaves_its_series_unread_and_the_others_read() -> None:
    """One 600-frame file of another series in a study folder refused the whole study ("file_too_large"), its good
    series unanalysed and the file unnamed, where any other unreadable file leaves only its own series unread."""
    from core.imaging import dicom

    series = dicom_series(head_volume(6, 64))
    same = {k: pydicom.dcmread(io.BytesIO(series[0])).get(k) for k in ("StudyInstanceUID", "PatientID", "PatientName")}
    long = relabelled([enhanced_multiframe(head_volume(10, 64))], **same)
    upload = read_upload([*series, *long], study_limits=StudyLimits(max_sections=8))
    assert [volume.sections.shape[0] for volume in upload.volumes] == [6]
    (unread,) = upload.unread
    assert unread == "A DICOM series without a number: A file holds 10 frames; the limit is 8 sections."
    with pytest.raises(FileTooLarge, match="A file holds 10 frames; the limit is 8 sections"):  # alone: as before
        read_upload(long, study_limits=StudyLimits(max_sections=8))
    assert dicom.frames_of(pydicom.dcmread(io.BytesIO(long[0]), stop_before_pixels=True)) == 10


def test_a_study_of_one_series_with_a_cut_file_is_refused_naming_the_series() -> None:
    """One DICOM file cut short refused a one-series study with "The DICOM pixel data is truncated", naming no
    series (the reader looked for it among thousands); a study of several names it among the unread."""
    files = dicom_series(head_volume(6, 64))
    files[3] = files[3][:-2000]
    with pytest.raises(ScanError, match=r"^(DICOM series \d+|A DICOM series without a number): ") as refused:
        read_study(files)
    assert "truncated" in str(refused.value) or "cut" in str(refused.value)
    other = [relabelled([f], SeriesInstanceUID="1.2.826.0.1.3680043.8.498.1.2", SeriesNumber=7)[0] for f in files]
    with pytest.raises(ScanError, match=r", DICOM series 7: ") as refused:  # two series cut: both named, not one
        read_study([*relabelled(files, SeriesNumber=5), *other])
    assert str(refused.value).startswith("DICOM series 5, DICOM series 7: ")


def test_two_series_in_one_zip_come_back_apart_and_monochrome1_reads_as_monochrome2() -> None:
    first = dicom_series(head_volume(5, seed=1), series_uid="1.2.3.1")
    second = dicom_series(head_volume(4, seed=9), series_uid="1.2.3.2", orientation=SAGITTAL)
    inverted = dicom_series(head_volume(4, seed=9), series_uid="1.2.3.3", photometric="MONOCHROME1")
    volumes = read_study([zipped(first + second), *inverted])
    assert sorted(len(v.sections) for v in volumes) == [4, 4, 5] and len({v.series for v in volumes}) == 3
    by_plane = {v.plane: v for v in volumes if v.plane == "sagittal"}
    mono1 = next(v for v in volumes if v.plane == "axial" and len(v.sections) == 4)
    difference = np.abs(mono1.sections.astype(int) - by_plane["sagittal"].sections.astype(int))
    assert difference.max() <= 1  # the same pixels from both photometrics (up to the stretch's rounding)


def test_mixed_orientations_and_two_different_sections_at_one_position_are_refused() -> None:
    mixed = dicom_series(head_volume(3)) + dicom_series(head_volume(3, seed=5), orientation=SAGITTAL)[:1]
    with pytest.raises(SeriesError, match="mixes section orientations"):
        read_study(mixed)
    clash = dicom_series(head_volume(3)) + dicom_series(head_volume(3, seed=5))[:1]
    with pytest.raises(SeriesError, match="same position"):
        read_study(clash)
    (deduplicated,) = read_study(dicom_series(head_volume(3)) + dicom_series(head_volume(3))[:1])
    assert len(deduplicated.sections) == 3 and "duplicate" in deduplicated.warnings[0]
    # the note names the side, as the viewer's titles do: a bare "-26.2 mm" on a sagittal series read as a side
    sagittal = dicom_series(head_volume(3), orientation=SAGITTAL)
    (named,) = read_study(sagittal + sagittal[1:2])
    assert re.fullmatch(r"A duplicate of the section at [LR] \d+\.\d mm was left out\.", named.warnings[0])


def test_a_diffusion_or_multi_echo_series_is_read_as_one_volume_per_stack_each_named() -> None:
    """A diffusion series' b0 and b1000 images (or a dual echo's) share their positions in one series: "Two different
    sections lie at the same position" left it unread, and with it every routine brain protocol without a "No
    tumour". Files that say their b-value or echo are read as one stack each; files that do not are still named."""
    from core.imaging.series import read_upload

    t2 = dicom_series(head_volume(4, seed=1), series_uid="1.2.826.0.1.3680043.8.498.1.2")
    dwi = "1.2.826.0.1.3680043.8.498.1.3"
    b0 = relabelled(dicom_series(head_volume(4, seed=2), series_uid=dwi), DiffusionBValue=0, SeriesNumber=5)
    b1000 = relabelled(dicom_series(head_volume(4, seed=3), series_uid=dwi), DiffusionBValue=1000, SeriesNumber=5)
    upload = read_upload(t2 + b0 + b1000)
    assert upload.unread == () and [len(v.sections) for v in upload.volumes] == [4, 4, 4]
    assert len({v.series for v in upload.volumes}) == 3 and upload.volumes[1].uid_key == upload.volumes[2].uid_key
    named = sorted(v.warnings[0] for v in upload.volumes[1:])
    assert named == [
        "DICOM series 5, its images at b = 0 s/mm2 (one of its 2 stacks at the same positions).",
        "DICOM series 5, its images at b = 1000 s/mm2 (one of its 2 stacks at the same positions). Diffusion "
        "images: the model was trained on T1, T2 and FLAIR sections, not on these.",
    ]
    assert sorted(v.stack for v in upload.volumes) == ["", "b = 0 s/mm2", "b = 1000 s/mm2"]
    assert not upload.volumes[0].warnings  # a series of one stack is as before
    echoes = relabelled(b0, EchoNumbers=1) + relabelled(
        b0[:2], EchoNumbers=2
    )  # PD and T2 of a dual echo: 4 + 2 sections
    (_, first, second) = read_upload(t2 + echoes).volumes
    assert (len(first.sections), len(second.sections)) == (4, 2) and "echo 2" in second.warnings[0]
    with pytest.raises(SeriesError, match=r"same position .* diffusion, multi-echo or dynamic"):  # files that do not
        read_study(dicom_series(head_volume(4, seed=2), series_uid=dwi) + dicom_series(head_volume(4), series_uid=dwi))


def test_a_series_whose_files_are_not_mr_says_so_as_a_single_scan_does() -> None:
    """A secondary capture (OT) or a series without a modality was analysed without the warning the Scan page gives
    the same file: the series-reading path dropped it."""
    (captured,) = read_study(relabelled(dicom_series(head_volume(3)), Modality="OT"))
    assert captured.warnings == ("The DICOM modality is 'OT', not MR: check that this is an MRI slice.",)
    (series,) = read_study(dicom_series(head_volume(3)))
    assert series.warnings == ()


def test_an_enhanced_files_window_in_its_functional_groups_is_applied_as_a_classic_files_is() -> None:
    """Enhanced MR keeps its window (FrameVOILUTSequence) and rescale (PixelValueTransformationSequence) in its
    functional groups: they were not looked for, so its frames got a percentile stretch and the same series looked,
    and fed the model, otherwise than as classic files. The frame's own group wins over the shared one."""
    from pydicom.dataset import Dataset

    volume = head_volume(4)
    (classic,) = read_study(relabelled(dicom_series(volume), WindowCenter=800, WindowWidth=1200))
    ds = pydicom.dcmread(io.BytesIO(enhanced_multiframe(volume)))
    window = Dataset()
    window.WindowCenter, window.WindowWidth = 800, 1200
    ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence = [window]
    wide = Dataset()
    wide.WindowCenter, wide.WindowWidth = 2000, 4000
    ds.PerFrameFunctionalGroupsSequence[2].FrameVOILUTSequence = [wide]  # the third frame's own window
    out = io.BytesIO()
    ds.save_as(out)
    (enhanced,) = read_study([out.getvalue()])
    same = [k for k in range(4) if np.array_equal(enhanced.sections[k], classic.sections[k])]
    assert same == [0, 1, 3]  # its own window for the third: darker than the shared one's
    rescaled = pydicom.dcmread(io.BytesIO(enhanced_multiframe(volume)))  # a window at the top, an identity rescale
    rescaled.WindowCenter, rescaled.WindowWidth = 800, 1200  # in the groups: the window stays (it was dropped)
    identity = Dataset()
    identity.RescaleIntercept, identity.RescaleSlope, identity.RescaleType = 0, 1, "US"
    rescaled.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence = [identity]
    kept = io.BytesIO()
    rescaled.save_as(kept)
    assert np.array_equal(read_study([kept.getvalue()])[0].sections, classic.sections)
    assert enhanced.sections[2].mean() < classic.sections[2].mean()
    from core.imaging.scan import read_scan  # the Scan page reads one frame of it by the same rule

    for frame in (1, 2):
        assert np.array_equal(read_scan(out.getvalue(), frame=frame).pixels, enhanced.sections[frame])
    facts = read_scan(out.getvalue(), frame=1).acquisition  # its pixel size and plane, in the groups too: the lesion
    assert (facts["PixelSpacing"], facts["Plane"]) == ("0.9\\0.9", "axial")  # was in pixels on the Scan page
    assert "TransferSyntax" in facts


def test_an_enhanced_multiframe_file_is_one_series_ordered_by_its_frame_positions() -> None:
    volume = head_volume(7)
    (series,) = read_study([enhanced_multiframe(volume, order=[3, 0, 6, 1, 5, 2, 4])])
    assert series.source == "multi-frame DICOM" and np.array_equal(series.sections, expected(volume))
    assert series.positions == tuple(5.0 * k for k in range(7))


def test_a_study_with_a_localizer_and_a_series_that_cannot_be_put_together_reads_its_other_series() -> None:
    """One unusual series stopped the whole study: the scanner's three-plane localizer (nearly every brain MR has
    one) made "One series mixes section orientations" of a study the PACS watch then dropped for good. Localizer
    images are left out and counted; a series that cannot be put together is named while the others are read."""
    from pydicom import dcmread

    from core.imaging.series import read_upload

    t1 = dicom_series(head_volume(4))
    localizer = []
    planes = (None, SAGITTAL, (1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    for plane, raw in zip(planes, dicom_series(head_volume(3, seed=2)), strict=True):
        ds = dcmread(io.BytesIO(raw))
        ds.SeriesInstanceUID, ds.ImageType = "1.2.826.0.1.3680043.8.498.1.9", ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImageOrientationPatient = list(plane) if plane else ds.ImageOrientationPatient
        out = io.BytesIO()
        ds.save_as(out)
        localizer.append(out.getvalue())
    mixed = dicom_series(head_volume(3), series_uid="1.2.826.0.1.3680043.8.498.1.7")
    mixed += dicom_series(head_volume(3, seed=5), orientation=SAGITTAL, series_uid="1.2.826.0.1.3680043.8.498.1.7")[:1]
    upload = read_upload(t1 + localizer + mixed)
    assert [len(v.sections) for v in upload.volumes] == [4]
    assert upload.notes == ("3 localizer image(s) (the scanner's positioning images) were left out.",)
    assert len(upload.unread) == 1 and "mixes section orientations" in upload.unread[0]
    with pytest.raises(SeriesError, match="only localizer images"):
        read_upload(localizer)


@pytest.mark.parametrize(
    ("description", "localizer"),
    [
        ("AAHead_Scout_64ch-head-coil", True),  # Siemens: "\bscout\b" never matched after an underscore
        ("Survey_32ch_HeadCoil", True),  # Philips: the three-plane survey made the study "mixes orientations"
        ("ExamCard_Survey", True),
        ("SmartSurvey", True),
        ("3-pl loc", True),
        ("Scout", True),
        ("t2_tse_tra", False),
        ("AX T2 FLAIR", False),
        ("Scoutline_T1", False),
    ],
)
def test_vendor_names_of_localizers_are_found_whatever_marks_join_them(description: str, localizer: bool) -> None:
    from pydicom.dataset import Dataset

    from core.imaging.series_headers import is_localizer

    header = Dataset()
    header.SeriesDescription = description
    assert is_localizer(header) is localizer


def _non_image(sop_class: str, series_uid: str) -> bytes:
    """A DICOM object without an image, of ``sop_class``, in the phantom study."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.TransferSyntaxUID = sop_class, ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPInstanceUID = series_uid + ".1"
    if sop_class != "1.2.840.10008.1.3.10":  # a DICOMDIR names its class in the file meta only
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, series_uid + ".1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.826.0.1.3680043.8.498.1", series_uid, "PR"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_cd_export_reads_its_images_and_leaves_out_its_index_reports_and_other_files() -> None:
    """A study exported to CD (a DICOMDIR index, a presentation state, a viewer's AUTORUN.INF) or zipped by macOS
    (its "._" copies): the index and the presentation state were series "nobody could read", so the study never got
    a "No tumour"; one file that is neither DICOM nor NIfTI refused the whole zip. They are left out and counted."""
    from core.imaging.series import read_upload

    t1 = dicom_series(head_volume(4))
    index = _non_image("1.2.840.10008.1.3.10", "1.2.826.0.1.3680043.8.498.1.8")  # Media Storage Directory
    state = _non_image("1.2.840.10008.5.1.4.1.1.11.1", "1.2.826.0.1.3680043.8.498.1.9")  # Grayscale Softcopy PS
    others = [b"\x00\x05\x16\x07" + bytes(60), b"[autorun]\r\nopen=viewer.exe\r\n"]  # AppleDouble, AUTORUN.INF
    names = [f"DICOM/IM{k}" for k in range(4)] + ["DICOMDIR", "DICOM/PS0", "__MACOSX/DICOM/._IM0", "AUTORUN.INF"]
    upload = read_upload([zipped([*t1, index, state, *others], names)])
    assert [len(v.sections) for v in upload.volumes] == [4] and upload.unread == ()
    assert upload.notes == (
        "2 DICOM object(s) without an image (a DICOMDIR index, reports, presentation states) were left out.",
        "2 file(s) in the zip that are neither DICOM nor NIfTI (a viewer program, an index, a read-me) were left out.",
    )
    with pytest.raises(SeriesError, match="holds no image: only DICOM objects without one"):
        read_upload([index, state])
    with pytest.raises(SeriesError, match="The zip holds no DICOM or NIfTI file"):
        read_upload([zipped(others)])
    with pytest.raises(UnsupportedFormat, match="neither DICOM nor NIfTI") as loose:  # a file given itself: said,
        read_upload([*t1, others[1]])  # not skipped, with what to do (it said what was wrong only)
    assert "remove it from the files chosen" in str(loose.value) and "Scan page" in str(loose.value)
    headerless = t1[0][128 + 4 :]  # an older export without the preamble: said, not left out as another file
    assert headerless[:2] == b"\x02\x00"
    with pytest.raises(UnsupportedFormat, match="without the standard 128-byte preamble"):
        read_upload([zipped([*t1[1:], headerless])])


def test_dicom_files_without_their_preamble_in_a_folder_refuse_the_study_never_shorten_it(
    tmp_path: Path, tiny_classifier
) -> None:
    """A folder's files written without the preamble were left out as "not DICOM": the sections of a tumour among
    them went missing from a study then called "no tumour", with a note about ignored files only. Only four leading
    tags were known as such a file; one opening on its SOP Class UID, or on its 'DICM' marker, was not."""
    from pydicom import dcmread, dcmwrite

    from core.imaging.scan import is_headerless_dicom
    from core.services.study_reading import analyse_path

    files = dicom_series(head_volume(6))

    def bare(data: bytes, implicit: bool) -> bytes:
        ds = dcmread(io.BytesIO(data))
        del ds.file_meta
        ds.preamble = None  # written bare: neither preamble nor marker
        for keyword in ("SpecificCharacterSet", "ImageType"):
            if keyword in ds:
                delattr(ds, keyword)
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
        return buffer.getvalue()

    for headerless in (bare(files[5], True), bare(files[5], False), files[5][128:]):
        assert is_headerless_dicom(headerless), headerless[:8]
        folder = tmp_path / f"study-{headerless[:2].hex()}-{len(headerless)}"
        folder.mkdir()
        for k, data in enumerate([*files[:5], headerless]):
            (folder / f"IM{k}").write_bytes(data)
        outcome = analyse_path(folder, tiny_classifier)
        assert outcome.error_code == "unsupported_format" and not outcome.series
        assert "without the standard 128-byte preamble" in (outcome.error_message or "")
    for other in (b"\x89PNG\r\n\x1a\n", b"PK\x03\x04", b"\x08\x00\x16\x00\xff\xff\xff\x7f", b"hello world"):
        assert not is_headerless_dicom(other + b"\x00" * 16)


def test_a_study_folder_reads_linked_folders_and_refuses_a_part_it_cannot_read(tmp_path: Path, monkeypatch) -> None:
    """The folder walk skipped a subfolder it could not read (permissions) and did not follow a linked one: the
    FLAIR series with the tumour went missing, and the T1 series alone was called "no tumour", exit 0."""
    import os

    from core.services.study_reading import files_of

    uid = "1.2.826.0.1.3680043.8.498.93"
    study, elsewhere = tmp_path / "study", tmp_path / "elsewhere" / "flair"
    (study / "t1").mkdir(parents=True)
    elsewhere.mkdir(parents=True)
    for k, data in enumerate(dicom_series(head_volume(4), study_uid=uid, series_uid=uid + ".1")):
        (study / "t1" / f"IM{k}").write_bytes(data)
    for k, data in enumerate(dicom_series(head_volume(4, seed=3), study_uid=uid, series_uid=uid + ".2")):
        (elsewhere / f"IM{k}").write_bytes(data)
    (study / "flair").symlink_to(elsewhere, target_is_directory=True)
    (study / "t1" / "loop").symlink_to(study, target_is_directory=True)  # a link back up: each folder read once
    (study / "again").symlink_to(elsewhere, target_is_directory=True)  # two links to one folder
    (study / "t1-too").symlink_to(study / "t1", target_is_directory=True)  # a link to a sibling
    (study / "t1" / "IM0-again").symlink_to(study / "t1" / "IM0")  # a file linked twice
    files, ignored = files_of(study)
    assert len(files) == 8 and ignored == 0
    assert len(read_upload(files).volumes) == 2

    real = os.scandir

    def denied(path):
        if Path(os.path.realpath(path)) == elsewhere.resolve():
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(ScanError, match=r"cannot be read \(permission denied\)") as refused:
        files_of(study)
    assert refused.value.code == "unreadable"
    monkeypatch.setattr(os, "scandir", real)
    (study / "t1" / "IM9").symlink_to(tmp_path / "gone")  # each odd entry named: which of thousands, and what
    with pytest.raises(ScanError, match=r"^t1/IM9 inside it is a link to nothing: the study is not read"):
        files_of(study)
    (study / "t1" / "IM9").unlink()
    os.mkfifo(study / "t1" / "pipe")  # never opened: a read of it waits for ever
    with pytest.raises(ScanError, match=r"^t1/pipe inside it is not a regular file"):
        files_of(study)
    (study / "t1" / "pipe").unlink()
    (study / "t1" / "up").symlink_to(tmp_path, target_is_directory=True)  # "-> ..", "-> /": all above read as it
    with pytest.raises(ScanError, match=r"^t1/up inside it links to a folder that holds the study folder itself"):
        files_of(study)
    (study / "t1" / "up").unlink()
    assert len(files_of(study)[0]) == 8


def test_a_classic_multiframe_file_is_numbered_in_stored_order_and_measured_by_its_declared_step() -> None:
    """Frames of a classic multi-frame file carry no positions: they were placed along the stored normal, and a
    file whose frames run the other way came out mirrored head to foot, its positions named on the wrong side. They
    are numbered in stored order; the declared step still measures them; without one no distance between sections
    (so no lesion volume in mL) is claimed."""
    from tests.scans import dicom_bytes

    volume = head_volume(5)
    spaced = dicom_bytes(volume, frames=5, extra={"SpacingBetweenSlices": 4.0, "PixelSpacing": [0.9, 0.9]})
    (stepped,) = read_study([spaced])
    assert not stepped.positions_in_mm and stepped.step_mm == pytest.approx(4.0)
    assert any("which way they run" in note for note in stepped.warnings)
    (numbered,) = read_study([dicom_bytes(volume, frames=5, extra={"PixelSpacing": [0.9, 0.9]})])
    assert not numbered.positions_in_mm and numbered.step_mm is None and numbered.spacing is not None
    assert np.array_equal(numbered.sections, stepped.sections)  # same order: the frames' own


def test_enhanced_multiframe_frames_without_their_own_positions_are_not_given_a_made_up_stack() -> None:
    """An enhanced file whose one plane position is shared by every frame (a dynamic or multi-echo acquisition at
    one place) was stacked 5 mm apart from the origin: time points shown as sections 45 mm apart, one slice's
    lesion counted ten times into a volume."""
    from pydicom import dcmread

    raw = enhanced_multiframe(head_volume(6))
    ds = dcmread(io.BytesIO(raw))
    ds.SharedFunctionalGroupsSequence[0].PlanePositionSequence = ds.PerFrameFunctionalGroupsSequence[
        0
    ].PlanePositionSequence
    for group in ds.PerFrameFunctionalGroupsSequence:
        del group.PlanePositionSequence
    shared = io.BytesIO()
    ds.save_as(shared)
    with pytest.raises(SeriesError, match="one position"):
        read_study([shared.getvalue()])
    del ds.SharedFunctionalGroupsSequence[0].PlanePositionSequence  # no position anywhere: numbered, not placed
    unplaced = io.BytesIO()
    ds.save_as(unplaced)
    (series,) = read_study([unplaced.getvalue()])
    assert not series.positions_in_mm and series.step_mm == pytest.approx(5.0) and len(series.sections) == 6


def test_a_series_without_positions_steps_by_its_declared_spacing_between_sections_not_their_thickness() -> None:
    """5 mm sections 6.5 mm apart (a gap) measured 5 mm apart: lesion volumes 23 % too small."""
    from pydicom import dcmread

    files = []
    for raw in dicom_series(head_volume(4)):
        ds = dcmread(io.BytesIO(raw))
        del ds.ImagePositionPatient
        ds.SliceThickness, ds.SpacingBetweenSlices = 5.0, 6.5
        out = io.BytesIO()
        ds.save_as(out)
        files.append(out.getvalue())
    (series,) = read_study(files)
    assert not series.positions_in_mm and series.step_mm == pytest.approx(6.5)


@pytest.mark.parametrize("flip", [(1, 1, 1), (-1, 1, 1), (1, -1, -1)])
def test_nifti_volumes_of_any_axis_flips_come_out_the_same_way_up(flip) -> None:
    volume = head_volume(8)
    reference = read_study([nifti(volume)])[0]
    data = np.transpose(volume[:, ::-1, ::-1], (2, 1, 0)).astype(np.int16)
    for axis, sign in enumerate(flip):
        if sign < 0:
            data = np.flip(data, axis)
    affine = np.diag([0.9 * flip[0], 0.9 * flip[1], 5.0 * flip[2], 1.0])
    affine[:3, 3] = [(s < 0) * (n - 1) * abs(z) for s, n, z in zip(flip, data.shape, (0.9, 0.9, 5.0), strict=True)]
    import nibabel

    raw = nibabel.Nifti1Image(data, affine).to_bytes()
    (series,) = read_study([raw])
    assert series.source == "NIfTI volume" and series.sections.shape == (8, 128, 128)
    assert np.array_equal(series.sections, reference.sections)
    assert read_study([nifti(volume, gz=True)])[0].sections.shape == (8, 128, 128)


def test_zips_with_path_tricks_bombs_or_too_many_files_are_refused_before_reading() -> None:
    files = dicom_series(head_volume(2))
    with pytest.raises(UnsupportedFormat, match="outside itself"):
        read_study([zipped(files, ["../../etc/cron.d/x", "a"])])
    with pytest.raises(UnsupportedFormat, match="another zip"):
        read_study([zipped([zipped(files)], ["inner.zip"])])
    bomb = zipped([b"\x00" * (20 * 2**20)], ["zeros.dcm"])
    with pytest.raises(FileTooLarge, match="compressed over"):
        read_study([bomb])
    with pytest.raises(FileTooLarge, match="limit is 1"):
        read_study([zipped(files)], study_limits=StudyLimits(max_zip_members=1))
    with pytest.raises(FileTooLarge, match="sections"):
        read_study(files, study_limits=StudyLimits(max_sections=1))
    empty = zipped([], [])  # its end record alone: it read as "neither DICOM nor NIfTI (a read-me, a picture?)"
    assert empty[:4] == b"PK\x05\x06"
    with pytest.raises(ScanError, match="The zip holds no file") as refused:
        read_study([empty])
    assert refused.value.code == "empty_file"
    assert len(read_study([*files, empty])) == 1  # beside a series (a folder's stray one): nothing to refuse


def test_orientation_letters_follow_the_direction_cosines() -> None:
    assert orientation_letters(AXIAL) == {"right": "L", "left": "R", "bottom": "P", "top": "A"}
    assert orientation_letters(SAGITTAL) == {"right": "P", "left": "A", "bottom": "F", "top": "H"}


def test_files_without_a_study_uid_uploaded_together_are_one_study_and_apart_are_two() -> None:
    """Two NIfTI files of one upload were one study on the Study page and its report but two in Statistics."""
    from core.imaging.phantom_series import nifti

    first, second = nifti(head_volume(4)), nifti(head_volume(4, seed=9))
    together = read_study([first, second])
    assert len(together) == 2 and together[0].study == together[1].study
    assert together[0].series != together[1].series
    apart = read_study([first])[0].study, read_study([second])[0].study
    assert apart[0] != apart[1] and together[0].study not in apart
    with_uid = dicom_series(head_volume(3), study_uid="1.2.826.0.1.3680043.8.498.5")
    mixed = read_study([first, *with_uid])  # a DICOM study keeps its own UID's identity
    assert len({v.study for v in mixed}) == 2


def test_dicom_files_without_a_study_uid_from_two_uploads_are_not_one_study() -> None:
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    def without_uid(files: list[bytes]) -> list[bytes]:
        out = []
        for data in files:
            ds = dcmread(DicomBytesIO(data))
            del ds.StudyInstanceUID
            buffer = DicomBytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            out.append(buffer.getvalue())
        return out

    a = read_study(without_uid(dicom_series(head_volume(3), series_uid="1.2.3.1")))[0]
    b = read_study(without_uid(dicom_series(head_volume(3, seed=4), series_uid="1.2.3.2")))[0]
    assert a.study != b.study


def nifti_bomb(shape: tuple[int, int, int]) -> bytes:
    """A gzipped NIfTI of zeros: a few hundred KB that unpack to ``shape`` voxels of uint8."""
    import gzip

    import nibabel

    header = nibabel.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352  # as a writer sets it (a new header says 0: the header read as voxels, refused)
    raw = io.BytesIO()
    raw.write(header.binaryblock + b"\x00" * 4)  # header and the empty extension block: voxels start at 352
    with gzip.GzipFile(fileobj=(out := io.BytesIO()), mode="wb") as stream:
        stream.write(raw.getvalue())
        zeros = b"\x00" * 2**20
        total = int(np.prod(shape))
        for _ in range(total // len(zeros)):
            stream.write(zeros)
        stream.write(b"\x00" * (total % len(zeros)))
    return out.getvalue()


@pytest.mark.heavy
def test_a_nifti_gzip_bomb_is_refused_from_its_header_with_little_memory() -> None:
    """2048 x 1024 x 500 voxels in a 1 MB file once took the server past 8 GB: refused before any voxel is read,
    measured in a fresh process (peak RSS)."""
    import subprocess
    import sys

    # the child's own high-water mark (VmHWM, reset to its size once the bomb is built): getrusage's ru_maxrss
    # survives fork and exec, so it would report this test process's size instead
    script = (
        "from core.imaging.series import read_study; from tests.test_series import nifti_bomb\n"
        "kb = lambda field: int([x.split()[1] for x in open('/proc/self/status') if x.startswith(field)][0])\n"
        "bomb = nifti_bomb((1024, 1024, 500)); open('/proc/self/clear_refs', 'w').write('5'); base = kb('VmRSS:')\n"
        "try:\n    read_study([bomb])\nexcept Exception as error:\n    print(type(error).__name__, error)\n"
        "print('grew_mb', (kb('VmHWM:') - base) / 1024, len(bomb))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    lines = done.stdout.splitlines()
    assert lines[0].startswith("FileTooLarge") and "refused before reading" in lines[0], done.stdout + done.stderr
    grew, size = float(lines[1].split()[1]), int(lines[1].split()[2])
    assert size < 2 * 2**20 and grew < 50  # MB: the header was read, nothing else


@pytest.mark.heavy
def test_a_large_but_allowed_volume_is_read_section_by_section() -> None:
    volume = head_volume(12, 256)  # 1.5 MB of int16 voxels
    (series,) = read_study([nifti(volume, gz=True)])
    assert series.sections.shape == (12, 256, 256) and series.sections.dtype == np.uint8
    with pytest.raises(FileTooLarge, match="limit is 1 MB"):
        read_study([nifti(volume, gz=True)], study_limits=StudyLimits(max_volume_bytes=2**20))


def test_a_zip_with_a_damaged_member_gets_a_specific_refusal() -> None:
    import zipfile

    from core.errors import CorruptImage

    archive = bytearray(zipped(dicom_series(head_volume(2))))
    member = zipfile.ZipFile(io.BytesIO(bytes(archive))).infolist()[0]
    start = member.header_offset + 30 + len(member.filename) + member.compress_size // 2  # inside its data
    archive[start : start + 50] = bytes(50)
    with pytest.raises(CorruptImage, match="A file in the zip is damaged"):
        read_study([bytes(archive)])


def test_nan_voxels_are_background_not_a_blank_volume() -> None:
    import nibabel

    volume = head_volume(4).astype(np.float32)
    data = np.transpose(volume[:, ::-1, ::-1], (2, 1, 0)).copy()
    data[np.random.default_rng(0).random(data.shape) < 0.01] = np.nan  # 1 % NaN, as a masked export has
    (series,) = read_study([nibabel.Nifti1Image(data, np.diag([0.9, 0.9, 5.0, 1.0])).to_bytes()])
    assert series.sections.max() == 255 and series.sections.mean() > 20  # the head is there, not "blank"


def test_a_gantry_tilted_nifti_steps_along_the_sections_normal_not_along_its_sheared_axis() -> None:
    """A tilted acquisition's affine shears the third axis (each section moves 1.82 mm forward as it moves 5 mm up):
    the step along that axis, 5.32 mm, was taken for the distance between sections, so positions, the step and
    every lesion volume came out 6 % too large."""
    import nibabel

    tilt = np.radians(20.0)
    affine = np.array([[0.9, 0, 0, -90.0], [0, 0.9, 5.0 * np.tan(tilt), -100.0], [0, 0, 5.0, -40.0], [0, 0, 0, 1]])
    data = np.transpose(head_volume(6).astype(np.float32)[:, ::-1, ::-1], (2, 1, 0)).copy()
    (series,) = read_study([nibabel.Nifti1Image(data, affine).to_bytes()])
    assert series.plane == "axial" and series.step_mm == pytest.approx(5.0) and series.thickness == pytest.approx(5.0)
    assert series.positions == pytest.approx([-40.0 + 5.0 * k for k in range(6)])  # head-ward, as DICOM's are
    (upright,) = read_study([nibabel.Nifti1Image(data, np.diag([0.9, 0.9, 5.0, 1.0])).to_bytes()])
    assert upright.step_mm == pytest.approx(5.0) and upright.positions[:2] == pytest.approx((0.0, 5.0))


def test_a_nifti_that_does_not_say_where_its_voxels_lie_shows_no_left_and_right() -> None:
    """qform and sform codes 0: the affine is a reader's guess (nibabel's assumes radiological storage, the
    standard's method 1 the opposite), and the viewer, the scroller and the report printed R and L from it."""
    import struct

    import nibabel

    data = np.transpose(head_volume(6).astype(np.float32)[:, ::-1, ::-1], (2, 1, 0)).copy()
    raw = bytearray(nibabel.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])).to_bytes())
    struct.pack_into("<hh", raw, 252, 0, 0)  # qform_code, sform_code
    (series,) = read_study([bytes(raw)])
    assert series.orientation is None and series.letters == {} and "left and right are unknown" in series.warnings[0]
    assert series.spacing == pytest.approx((2.0, 2.0)) and series.step_mm == pytest.approx(3.0)  # sizes still hold
    anterior = np.full((40, 50, 6), 300.0, np.float32)  # i: x, j: y (towards anterior), k: z
    anterior[18:22, 42:46, :] = 1000.0  # a marker near the front of the head
    for codes in ((1, 1), (0, 0)):  # placed, then a header that says nothing
        raw = bytearray(nibabel.Nifti1Image(anterior, np.diag([2.0, 2.0, 3.0, 1.0])).to_bytes())
        struct.pack_into("<hh", raw, 252, *codes)
        (shown,) = read_study([bytes(raw)])
        rows = np.nonzero(shown.sections[3] == shown.sections[3].max())[0]
        assert rows.mean() < shown.sections.shape[1] / 3, codes  # anterior at the top either way, never upside down


def test_a_nifti_takes_its_spacing_and_directions_from_one_matrix_and_says_when_qform_and_sform_disagree() -> None:
    """The spacing came from pixdim while the directions came from the sform: an sform of 0.5 mm voxels under
    pixdim 1 mm measured every distance twice as long and every lesion volume eight times as large."""
    import nibabel

    data = np.transpose(head_volume(6).astype(np.float32)[:, ::-1, ::-1], (2, 1, 0)).copy()
    image = nibabel.Nifti1Image(data, None)
    image.header.set_sform(np.diag([0.5, 0.5, 0.5, 1.0]), 2)
    image.header.set_zooms((1.0, 1.0, 1.0))
    (series,) = read_study([image.to_bytes()])
    assert series.spacing == pytest.approx((0.5, 0.5)) and series.step_mm == pytest.approx(0.5)
    assert series.warnings == ()
    image = nibabel.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    image.header.set_qform(np.diag([-2.0, 2.0, 3.0, 1.0]), 1)  # the qform mirrored left-right
    image.header.set_sform(np.diag([2.0, 2.0, 3.0, 1.0]), 2)
    (series,) = read_study([image.to_bytes()])  # which one a reader takes differs: no side is claimed (the
    # sform's letters were shown with a warning that a reopened series and its report never carried)
    assert series.letters == {} and "qform and sform" in " ".join(series.warnings)
    assert series.spacing == pytest.approx((2.0, 2.0)) and series.step_mm == pytest.approx(3.0)


def test_thousands_of_tiny_dicom_files_are_refused_before_any_is_read(monkeypatch) -> None:
    """2,000 tiny slices were refused only after reading them all (6.4 s, 666 MB)."""
    import core.imaging.series as series

    files = dicom_series(head_volume(3, 16)) * 700  # 2,100 files of 16 x 16 pixels
    read = []
    monkeypatch.setattr(series, "_sections_of", lambda *args: read.append(1) or [])
    with pytest.raises(FileTooLarge, match="2100 DICOM files; the limit is 1024"):
        read_study(files)
    assert read == []


def test_a_zero_or_negative_pixel_spacing_or_thickness_is_unknown_never_a_zero_millimetre_claim() -> None:
    def odd(ds, k) -> None:
        ds.PixelSpacing, ds.SliceThickness = [0.0, -0.9], -5.0

    (series,) = read_study(rewritten(dicom_series(head_volume(3)), odd))
    assert series.spacing is None and series.thickness is None
    assert series.positions_in_mm and series.step_mm == 5.0  # the positions still place the sections


def test_voxel_sizes_that_are_no_sizes_measure_nothing_in_nifti_or_dicom() -> None:
    """pixdim 0 (nibabel read it as 1 mm, saying so on stderr only) or -1, and a spacing of 1e30 mm in either
    format, were measured with: mm, mm2 and mL a header's mistake made, without a word."""
    import struct

    import nibabel

    data = np.transpose(head_volume(6).astype(np.float32)[:, ::-1, ::-1], (2, 1, 0)).copy()
    for pixdim in ((0.0, 2.0, 3.0), (-1.0, 2.0, 3.0), (1e30, 2.0, 3.0)):  # (NaN: refused as damaged)
        image = nibabel.Nifti1Image(data, None)
        image.header.set_qform(np.diag([2.0, 2.0, 3.0, 1.0]), 1)  # no sform: the affine is built from pixdim
        raw = bytearray(image.to_bytes())
        struct.pack_into("<3f", raw, 80, *pixdim)
        (series,) = read_study([bytes(raw)])
        assert series.spacing is None and series.step_mm is None and not series.positions_in_mm, pixdim
        assert any("voxel sizes are not usable" in w for w in series.warnings)
    huge = nibabel.Nifti1Image(data, np.diag([1e30, 2.0, 3.0, 1.0]))  # an sform of no size
    (series,) = read_study([huge.to_bytes()])
    assert series.spacing is None and not series.positions_in_mm
    (series,) = read_study([nibabel.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])).to_bytes()])
    assert series.spacing == pytest.approx((2.0, 2.0)) and series.step_mm == pytest.approx(3.0)  # a size: measured

    def absurd(ds, k) -> None:
        ds.PixelSpacing, ds.SliceThickness = [1e30, 1e30], 1e30

    (series,) = read_study(rewritten(dicom_series(head_volume(3)), absurd))
    assert series.spacing is None and series.thickness is None


def test_a_nifti_header_that_puts_its_voxels_gigabytes_into_the_file_is_refused_before_inflating(monkeypatch) -> None:
    """A small volume with vox_offset 4e9: every size check passed and the gzip stream was inflated to 4 GB."""
    import gzip as gzip_module

    import nibabel

    header = nibabel.Nifti1Header()
    header.set_data_shape((64, 64, 8))
    header.set_data_dtype(np.uint8)
    header.set_data_offset(4_000_000_000)
    with gzip_module.GzipFile(fileobj=(out := io.BytesIO()), mode="wb") as stream:
        stream.write(header.binaryblock + b"\x00" * 4 + b"\x00" * 2**20)
    asked: list[int] = []
    real_read = gzip_module.GzipFile.read
    monkeypatch.setattr(gzip_module.GzipFile, "read", lambda self, n=-1: asked.append(n) or real_read(self, n))
    with pytest.raises(CorruptImage, match="4,000,000,000 bytes into the file"):
        read_study([out.getvalue()])
    assert max(asked) <= 540  # the header only


def test_an_upload_of_many_small_nifti_files_is_refused_from_their_headers_before_any_is_inflated() -> None:
    """Forty gzip files of zeros, each within the per-volume limit, held 3.7 GB before the series count was checked."""
    each = nifti_bomb((256, 256, 200))  # 12.5 MB of voxels each, a few kB of gzip
    with pytest.raises(FileTooLarge, match="refused before reading them"):
        read_study([each] * 4, study_limits=StudyLimits(max_study_voxel_bytes=40 * 2**20))
    with pytest.raises(FileTooLarge, match="NIfTI volumes; the limit is 32"):
        read_study([each] * 33)


def test_a_scaled_nifti_is_read_section_by_section_and_shown_as_its_scaled_values() -> None:
    """nibabel applies a header's scl_slope to the whole volume at once (and again when it reorients it): a
    uint8 volume within the budget became float64 five times its size, before any section was cut."""
    import tracemalloc

    import nibabel

    from core.imaging.nifti import read_nifti

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 200, (128, 128, 60), dtype=np.uint8)
    affine = np.array([[-0.9, 0, 0, 10], [0, 0.9, 0, -5], [0, 0, 3.0, 2], [0, 0, 0, 1]])  # reoriented when read

    def made(values: np.ndarray, slope: float, inter: float) -> bytes:
        image = nibabel.Nifti1Image(values, affine)
        image.header.set_slope_inter(slope, inter)
        return image.to_bytes()

    plain = read_nifti(made(stored.astype(np.float32), 1.0, 0.0)).sections
    for slope, inter in ((2.5, 10.0), (-1.5, 300.0)):  # the same picture as its scaled values, however stored
        values = stored.astype(np.float32) * slope + inter
        expected = read_nifti(made(values, 1.0, 0.0)).sections
        shown = read_nifti(made(stored, slope, inter)).sections
        assert np.abs(shown.astype(int) - expected.astype(int)).max() <= 1
    assert np.abs(255 - shown.astype(int) - plain.astype(int)).max() <= 1  # a negative slope inverts the greys
    masked = stored.astype(np.float32)
    masked[:, :, :5] = np.nan  # outside a mask: background, black however the values are scaled
    inverted = read_nifti(made(masked, -1.5, 300.0)).sections
    assert inverted[:5].max() == 0 and inverted[5:].max() == 255
    larger = rng.integers(0, 200, (256, 256, 60), dtype=np.uint8)
    data = made(larger, 2.0, 1.0)
    tracemalloc.start()  # (after a first read: what is loaded once is not counted)
    read_nifti(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * larger.nbytes  # about 3: the stored copy, its sections, the picture; whole as float64, 8 more


def test_a_series_with_a_file_the_model_cannot_read_is_named_unread_and_the_others_are_read() -> None:
    """An ordinary neuro study with a colour map (DTI FA, perfusion) or a spectroscopy object: one such file refused
    the whole upload, so the T1 series beside it was never analysed (and the PACS watch never tried the study)."""
    from core.errors import UnsupportedDicom
    from core.imaging.series import read_upload

    def numbered(files: list[bytes], number: int) -> list[bytes]:
        out = []
        for data in files:
            ds = pydicom.dcmread(io.BytesIO(data))
            ds.SeriesNumber = number
            buffer = io.BytesIO()
            ds.save_as(buffer)
            out.append(buffer.getvalue())
        return out

    t1 = numbered(dicom_series(head_volume(6, 64), series_uid="1.2.826.0.1.3680043.8.498.1.1"), 3)
    fa = dicom_series(head_volume(2, 64), series_uid="1.2.826.0.1.3680043.8.498.1.2", photometric="PALETTE COLOR")
    upload = read_upload(t1 + numbered(fa, 7))
    assert len(upload.volumes) == 1 and len(upload.volumes[0].sections) == 6
    (unread,) = upload.unread
    assert unread.startswith("DICOM series 7: ") and "colour" in unread  # which series, so the reader can find it
    with pytest.raises(UnsupportedDicom, match="colour"):  # nothing else in the upload: its own reason, as before
        read_upload(fa)
    broken = [*t1[:3], t1[3][:-1000], *t1[4:]]  # one file of a series cut off: the series is not read short
    upload = read_upload(broken + numbered(dicom_series(head_volume(4, 64), series_uid="1.2.3.9"), 9))
    assert [len(v.sections) for v in upload.volumes] == [4] and upload.unread[0].startswith("DICOM series 3: ")


def test_one_file_without_a_position_leaves_the_others_in_the_order_of_the_head_and_is_named() -> None:
    """A single derived image without ImagePositionPatient put the whole series in instance-number order (scrambled
    here, as scanners' often are): the k-neighbouring-section rule and the viewer ran over sections out of order."""
    volume = head_volume(8)

    def unplaced(ds, k) -> None:
        if k == 3:
            del ds.ImagePositionPatient

    (series,) = read_study(rewritten(dicom_series(volume), unplaced))
    assert series.positions_in_mm and len(series.sections) == 7
    assert np.array_equal(series.sections, expected(np.delete(volume, 3, axis=0)))
    assert "1 file without a position in the head left out." in series.warnings


def test_sections_of_different_pixel_spacings_measure_nothing() -> None:
    """The first file's spacing was taken for all: distances on the others off by their ratio, areas by its
    square, and the lesion volume with them."""

    def finer(ds, k) -> None:
        if k % 2:
            ds.PixelSpacing = [0.45, 0.45]

    (series,) = read_study(rewritten(dicom_series(head_volume(6)), finer))
    assert series.spacing is None and any("different pixel spacings" in w for w in series.warnings)
    (same,) = read_study(dicom_series(head_volume(6)))
    assert same.spacing is not None


def test_one_frame_enhanced_files_are_placed_by_their_functional_groups() -> None:
    """A series of one-frame enhanced MR files (a vendor's export) kept its positions, orientation and spacing in
    the functional groups, which were read for files of several frames only: it was ordered by instance number,
    said to give no positions, shown with no letters and measured in nothing."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    volume = head_volume(6)
    files = []
    for k in range(6):
        ds = dcmread(DicomBytesIO(enhanced_multiframe(volume[k : k + 1], orientation=SAGITTAL, per_frame=True)))
        normal = np.cross(SAGITTAL[:3], SAGITTAL[3:])
        ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient = list(normal * 5.0 * k)
        ds.InstanceNumber, ds.SOPInstanceUID = 6 - k, f"1.2.3.4.5.{k + 1}"
        buffer = DicomBytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    random.Random(1).shuffle(files)
    (series,) = read_study(files)
    assert series.positions_in_mm and series.spacing == pytest.approx((0.9, 0.9)) and series.step_mm == 5.0
    assert series.letters and not any("no positions" in w for w in series.warnings)
    (alone,) = read_study(files[:1])
    assert alone.letters == series.letters


def test_direction_cosines_that_are_not_a_plane_are_no_orientation() -> None:
    """``1\\0\\0\\1\\0\\0`` (one direction twice) gave two edges the same letter and every section one position."""
    from pydicom.dataset import Dataset

    from core.imaging.geometry import frame_orientation

    for cosines, plane in (
        ([1, 0, 0, 1, 0, 0], False),
        ([1, 0, 0, 0, 0.8, 0.6], True),
        ([1, 0, 0, 0.8, 0.6, 0], False),
        ([1, 0, 0, 0.8, 0, 0], False),
    ):
        ds = Dataset()
        ds.ImageOrientationPatient = cosines
        assert (frame_orientation(ds, None) is not None) is plane
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9995, 0.0316]  # rounded as files carry them: still a plane
    assert frame_orientation(ds, None) is not None


def test_zips_over_the_uploads_limit_together_are_refused_before_any_is_unpacked(monkeypatch) -> None:
    """Each zip was checked against the limit alone and unpacked whole before their sum was: twenty zips under
    the limit took twenty times its memory. An encrypted zip or an unknown compression method was an
    unexpected error."""
    import struct
    import zipfile

    from core.imaging import archive

    files = dicom_series(head_volume(3))
    one = zipped(files)
    size = sum(len(f) for f in files)
    opened = []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or 1 / 0)
    with pytest.raises(FileTooLarge, match="in all"):
        read_study([files[0], one, one], study_limits=StudyLimits(max_total_bytes=2 * size))
    assert opened == []  # refused from the headers: nothing was unpacked
    monkeypatch.undo()
    assert len(read_study([one, one], study_limits=StudyLimits(max_total_bytes=2 * size))) == 1

    encrypted = bytearray(zipped(files[:1], ["a.dcm"]))
    struct.pack_into("<H", encrypted, 6, 1)  # the local header's flags: encrypted
    central = encrypted.index(b"PK\x01\x02")
    struct.pack_into("<H", encrypted, central + 8, 1)
    with pytest.raises(UnsupportedFormat, match="password-protected"):
        archive.unzip(bytes(encrypted))
    unknown = bytearray(zipped(files[:1], ["a.dcm"]))
    struct.pack_into("<H", unknown, 8, 99)  # compression method 99 (AES or another the library cannot read)
    struct.pack_into("<H", unknown, unknown.index(b"PK\x01\x02") + 10, 99)
    with pytest.raises(UnsupportedFormat, match="compression method"):
        archive.unzip(bytes(unknown))


def test_malformed_header_values_and_unknown_syntaxes_name_their_series_and_the_others_are_read() -> None:
    """An empty WindowCenter or NumberOfFrames "ab" in one file was an unexpected error for the whole study; a
    negative NumberOfFrames lowered the upload's pixel budget and its file gave nothing, unsaid; a transfer syntax
    pydicom does not know read as invalid values; an RGB NIfTI was an unexpected error."""
    import nibabel

    from core.errors import UnsupportedDicom
    from core.imaging.dicom import check_transfer_syntax
    from core.imaging.series import read_upload

    good = dicom_series(head_volume(4), series_uid="1.2.3.9.1")

    def broken(value):
        def change(ds, k) -> None:
            ds.SeriesInstanceUID, ds.SeriesNumber = "1.2.3.9.2", 7
            if k == 1:
                setattr(ds, *value)
                ds.WindowWidth = "400"  # beside an empty WindowCenter: read as a window, it failed

        return change

    for value in (("WindowCenter", ""), ("NumberOfFrames", 9), ("NumberOfFrames", -1000)):
        other = rewritten(dicom_series(head_volume(4)), broken(value))
        if value[1] == 9:  # "ab": written over the encoded value, as no library writes it
            other[1] = other[1].replace(b"\x28\x00\x08\x00IS\x02\x009 ", b"\x28\x00\x08\x00IS\x02\x00ab", 1)
            assert b"IS\x02\x00ab" in other[1]
        upload = read_upload(good + other)
        assert len(upload.volumes) == 1 and len(upload.volumes[0].sections) == 4, value
        invalid = "The DICOM header holds invalid values; it cannot be displayed reliably."
        assert upload.unread == (f"DICOM series 7: {invalid}",)
    header = pydicom.dcmread(io.BytesIO(good[0]), stop_before_pixels=True)
    header.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.110"  # JPEG XL: newer than the library
    with pytest.raises(UnsupportedDicom, match="does not know"):
        check_transfer_syntax(header)
    rgb = np.zeros((8, 8, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    with pytest.raises(SeriesError, match="colour"):
        read_study([nibabel.Nifti1Image(rgb, np.eye(4)).to_bytes()])


def test_a_nifti_2_file_is_read_as_its_nifti_1_twin_is() -> None:
    """NIfTI-2 keeps its magic at byte 4, where it was never looked for: "neither DICOM nor NIfTI"."""
    import nibabel

    data = np.transpose(head_volume(6).astype(np.float32)[:, ::-1, ::-1], (2, 1, 0)).copy()
    affine = np.diag([0.9, 0.9, 5.0, 1.0])
    (one,) = read_study([nibabel.Nifti1Image(data, affine).to_bytes()])
    (two,) = read_study([nibabel.Nifti2Image(data, affine).to_bytes()])
    assert np.array_equal(one.sections, two.sections) and one.letters == two.letters and two.step_mm == 5.0
    with pytest.raises(CorruptImage):
        read_study([nibabel.Nifti2Image(data, affine).to_bytes()[:600]])


def test_a_nifti_in_metres_or_microns_is_measured_in_millimetres_and_one_slice_in_2_d_is_read() -> None:
    """A header in metres gave a spacing of 0.0009 "mm" (distances, gaps and lesion volumes 1000 times off,
    unsaid); a single slice stored as X x Y was refused though X x Y x 1 was read."""
    import nibabel

    from core.imaging.nifti import read_nifti
    from core.imaging.phantom_series import head_volume

    data = np.transpose(head_volume(4, 64)[:, ::-1, ::-1], (2, 1, 0)).astype(np.int16)
    for unit, scale in (("mm", 1.0), ("meter", 0.001), ("micron", 1000.0)):
        image = nibabel.Nifti1Image(data, np.diag([0.9 * scale, 0.9 * scale, 5.0 * scale, 1.0]))
        image.header.set_xyzt_units(xyz=unit)
        volume = read_nifti(image.to_bytes())
        assert volume.spacing == pytest.approx((0.9, 0.9)) and volume.thickness == pytest.approx(5.0), unit
        assert volume.positions[1] - volume.positions[0] == pytest.approx(5.0)
    for affine in (np.diag([0.9, 0.9, 5.0, 1.0]), np.diag([-0.9, -0.9, 5.0, 1.0])):  # canonical or not
        flat = nibabel.Nifti1Image(data[:, :, 0], affine)
        assert read_nifti(flat.to_bytes()).sections.shape[0] == 1


@pytest.mark.parametrize(("orientation", "plane"), [(SAGITTAL, "sagittal"), (CORONAL, "coronal"), (AXIAL, "axial")])
def test_a_nifti_is_cut_in_the_plane_it_was_acquired_in_as_its_dicom_twin_is(orientation, plane) -> None:
    """A 2-D sagittal acquisition (5 mm across x) was cut into axial sections: thick-slab reformats, read by the
    classifier and stretched five times in the viewer, where its DICOM twin is read sagittally."""
    import nibabel

    volume = head_volume(6)
    (dicom,) = read_study(dicom_series(volume, orientation=orientation))
    # the same voxels stored as NIfTI (RAS+): voxel (i, j, k) is column i, row j of section k, placed as DICOM has it
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    affine = np.eye(4)
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    affine[:3, 0], affine[:3, 1] = row * 0.9 * lps_to_ras, column * 0.9 * lps_to_ras
    affine[:3, 2], affine[:3, 3] = np.cross(row, column) * 5.0 * lps_to_ras, np.array([-100.0, -100.0, 0]) * lps_to_ras
    (twin,) = read_study([nibabel.Nifti1Image(np.transpose(volume, (2, 1, 0)).astype(np.int16), affine).to_bytes()])
    assert twin.plane == dicom.plane == plane and twin.sections.shape == dicom.sections.shape == (6, 128, 128)
    assert twin.letters == dicom.letters and twin.spacing == pytest.approx(dicom.spacing) == (0.9, 0.9)
    assert twin.positions == pytest.approx(dicom.positions) and twin.step_mm == pytest.approx(5.0)
    # the DICOM sections are stretched one by one, the volume's as a whole: the same picture, not the same bytes
    assert np.corrcoef(twin.sections.ravel(), dicom.sections.ravel())[0, 1] > 0.98 and not twin.warnings


@pytest.mark.parametrize(("orientation", "plane"), [(SAGITTAL, "sagittal"), (CORONAL, "coronal")])
@pytest.mark.parametrize("sections", [1, 8])
def test_a_nifti_slab_of_thin_sections_or_a_single_one_is_cut_across_them(orientation, plane, sections) -> None:
    """Eight sagittal sections of 1.8 mm (a pituitary slab), or one, were cut into 128 axial strips 8 (or 1)
    pixels wide, each refused as no brain, with no word: the thickness rule wants 2 mm."""
    import nibabel

    volume = head_volume(sections)
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    affine, lps_to_ras = np.eye(4), np.array([-1.0, -1.0, 1.0])
    affine[:3, 0], affine[:3, 1] = row * 0.9 * lps_to_ras, column * 0.9 * lps_to_ras
    affine[:3, 2] = np.cross(row, column) * 1.8 * lps_to_ras
    (twin,) = read_study([nibabel.Nifti1Image(np.transpose(volume, (2, 1, 0)).astype(np.int16), affine).to_bytes()])
    assert twin.plane == plane and twin.sections.shape == (sections, 128, 128)
    assert twin.spacing == pytest.approx((0.9, 0.9)) and (sections == 1 or twin.step_mm == pytest.approx(1.8))


def test_a_nifti_of_thin_or_thick_voxels_in_every_direction_is_cut_axially() -> None:
    import nibabel

    from core.imaging.nifti import read_nifti
    from core.imaging.phantom_series import head_volume

    data = np.transpose(head_volume(4, 64)[:, ::-1, ::-1], (2, 1, 0)).astype(np.int16)
    overlapping = read_nifti(nibabel.Nifti1Image(data, np.diag([1.0, 1.0, 0.5, 1.0])).to_bytes())  # thin, axial
    assert overlapping.plane == "axial" and overlapping.sections.shape[0] == 4 and not overlapping.warnings
    coarse = read_nifti(nibabel.Nifti1Image(data, np.diag([4.0, 4.0, 1.0, 1.0])).to_bytes())  # no thin plane
    assert coarse.plane == "axial" and any("4.0 mm thick within its sections" in w for w in coarse.warnings)
    assert coarse.spacing == (4.0, 4.0)
    for zooms in ([5.0, 1.0, 5.0], [1.0, 5.0, 5.0]):  # thick along two axes, one of them the third: said too
        both = read_nifti(nibabel.Nifti1Image(data, np.diag([*zooms, 1.0])).to_bytes())
        assert any("5.0 mm thick within its sections" in w for w in both.warnings), zooms
    # 64 sections of 5 mm would span 320 mm, more than any head: a header whose spacing is not the volume's, cut
    # axially and said to be coarse (cut across x, it made 64 sagittal slivers, each refused as no brain)
    implausible = read_nifti(nibabel.Nifti1Image(data, np.diag([5.0, 0.9, 0.9, 1.0])).to_bytes())
    assert implausible.plane == "axial" and implausible.sections.shape[0] == 4
    assert any("5.0 mm thick within its sections" in w for w in implausible.warnings)


def test_files_of_two_patients_are_refused_even_under_one_study_uid(tiny_classifier) -> None:
    """Two patients' series under one Study Instance UID (a mislabelled study, two CDs' files dropped together)
    were read as one study: both filed under the reference typed, the other patient's series in this one's history
    and report. The PACS pull refused them; an upload and the command line did not."""
    from core.imaging.series import SeveralPatients, read_upload
    from core.services.study_reading import analyse_study

    uid = "1.2.826.0.1.3680043.8.498.91"
    first = relabelled(dicom_series(head_volume(4), study_uid=uid, series_uid=uid + ".1"), PatientID="ZZ-1")
    second = dicom_series(head_volume(4, seed=9), study_uid=uid, series_uid=uid + ".2")
    with pytest.raises(SeveralPatients, match="more than one patient"):
        read_upload([*first, *relabelled(second, PatientID="ZZ-2")])
    with pytest.raises(SeveralPatients):  # one ID, two issuers: two hospitals' patients
        read_upload(
            [*relabelled(first, IssuerOfPatientID="A"), *relabelled(second, PatientID="ZZ-1", IssuerOfPatientID="B")]
        )
    outcome = analyse_study([*first, *relabelled(second, PatientID="ZZ-2")], tiny_classifier)
    assert outcome.error_code == "several_patients" and not outcome.series
    # one patient, with or without an issuer on some of its files, or files without an ID: one study
    same = relabelled(second, PatientID=" ZZ-1 ", IssuerOfPatientID="A")
    assert len(read_upload([*first, *same]).volumes) == 2
    assert len(read_upload([*first, *relabelled(second, PatientID="")]).volumes) == 2


def test_a_malformed_value_where_a_series_is_told_leaves_that_series_unread_not_the_study_failed() -> None:
    """One flipped bit in a file's SeriesNumber VR ("I2" for "IS") turned the whole study into "Unexpected error;
    try again": the values that tell a file's series were read outside the guard its pixels have."""
    from core.imaging.series import read_upload

    uid = "1.2.826.0.1.3680043.8.498.92"
    good = dicom_series(head_volume(4), study_uid=uid, series_uid=uid + ".1")
    other = relabelled(dicom_series(head_volume(4, seed=5), study_uid=uid, series_uid=uid + ".2"), SeriesNumber=7)
    flipped = other[0].replace(b"\x20\x00\x11\x00IS", b"\x20\x00\x11\x00I2", 1)
    assert flipped != other[0]
    upload = read_upload([*good, flipped, *other[1:]])
    assert len(upload.volumes) == 1 and upload.volumes[0].sections.shape[0] == 4
    assert len(upload.unread) == 1 and "header holds invalid values" in upload.unread[0]


def test_an_enhanced_multi_echo_file_is_read_as_one_volume_per_echo_from_its_frames_groups() -> None:
    """Its frames give their echo time in the standard per-frame sequence, which was not read: two echoes at each
    position were refused as "two different sections ... whose files do not say which image is which"."""
    from pydicom import dcmread
    from pydicom.dataset import Dataset

    from core.imaging.phantom_series import enhanced_multiframe
    from core.imaging.series import read_upload

    volume = np.concatenate([head_volume(4), head_volume(4, seed=7)])
    ds = dcmread(io.BytesIO(enhanced_multiframe(volume, order=[0, 1, 2, 3, 0, 1, 2, 3])))
    ds.PixelData = volume.astype("<u2").tobytes()  # each echo its own images (the order above stored the first's
    for k, group in enumerate(ds.PerFrameFunctionalGroupsSequence):  # twice: one series' images, read once)
        echo = Dataset()
        echo.EffectiveEchoTime = 10.0 if k < 4 else 80.0
        group.MREchoSequence = [echo]
    buffer = io.BytesIO()
    ds.save_as(buffer)
    upload = read_upload([buffer.getvalue()])
    assert not upload.unread and sorted(v.stack for v in upload.volumes) == ["echo time 10 ms", "echo time 80 ms"]
    assert all(v.sections.shape[0] == 4 for v in upload.volumes)


def test_a_series_scan_date_is_the_first_valid_dicom_date_and_is_kept_as_days_moved_by_the_key() -> None:
    from datetime import date

    from pydicom.dataset import Dataset

    from core.identity import scan_day
    from core.imaging.series_headers import scan_date

    def header(**values) -> Dataset:
        ds = Dataset()
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        return ds

    assert scan_date(header(StudyDate="20260301", SeriesDate="20260302")) == date(2026, 3, 1)
    assert scan_date(header(StudyDate="", SeriesDate="2026.03.02")) == date(2026, 3, 2)  # blanked; the old form
    assert scan_date(header(StudyDate="20261341", AcquisitionDate="20260303")) == date(2026, 3, 3)  # no 13th month
    assert scan_date(header(StudyDate="18991231")) is None and scan_date(header()) is None
    (volume,) = read_study(relabelled(dicom_series(head_volume(3)), StudyDate="20260301"))
    assert volume.scanned == date(2026, 3, 1)
    one, other = b"k" * 32, b"j" * 32
    days = [scan_day(date(2026, 3, 1), key) for key in (one, other)]
    assert days[0] != days[1] and days[0] < (date(2026, 3, 1) - date(1970, 1, 1)).days  # moved back, by the key
    assert scan_day(date(2026, 3, 11), one) - days[0] == 10 and scan_day(None, one) is None  # the days between


def test_a_study_path_that_is_not_a_folder_is_read_as_one_file(tmp_path: Path, tiny_classifier) -> None:
    """A pipe (``study <(cat study.zip)``) or a device was walked as a folder and refused with "a folder inside
    it cannot be read (not a directory)"; it is one file, read as such. An empty file in a study was "neither DICOM
    nor NIfTI (a read-me, a picture?)": it is said to be empty."""
    import os
    import threading

    from core.services.study_reading import analyse_path, files_of

    uid = "1.2.826.0.1.3680043.8.498.94"
    data = dicom_series(head_volume(1), study_uid=uid, series_uid=uid + ".1")[0]
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)

    def feed() -> None:
        with open(pipe, "wb") as writer:
            writer.write(data)

    feeder = threading.Thread(target=feed, daemon=True)  # never holds the run up when the pipe is not read
    feeder.start()
    files, ignored = files_of(pipe)
    feeder.join(timeout=10)
    assert files == [data] and ignored == 0
    empty = analyse_path(Path(os.devnull), tiny_classifier)
    assert empty.error_code == "empty_file" and "folder" not in (empty.error_message or "")
    from core.imaging.limits import StudyLimits

    with pytest.raises(ScanError, match="over 0 MB, the limit") as refused:  # a device without end: read no further
        files_of(Path("/dev/zero"), StudyLimits(max_total_bytes=1000))
    assert refused.value.code == "file_too_large"


def test_a_damaged_nii_gz_is_refused_never_analysed_as_it_decompresses() -> None:
    """A byte flipped inside the deflate stream: the reader stopped at the end of the volume, never reached the
    gzip trailer, and analysed and saved a volume a third of whose voxels had changed, with no word said."""
    import gzip

    packed = nifti(head_volume(6, 64, range(2, 4)), gz=True)
    assert read_study([packed])[0].sections.shape[0] == 6
    wrong_crc = packed[:-8] + bytes([packed[-8] ^ 0xFF]) + packed[-7:]  # the data intact, its checksum not
    flipped = bytearray(packed)
    flipped[len(packed) // 2] ^= 0x10  # inside the compressed data
    for damaged in (wrong_crc, bytes(flipped)):
        with pytest.raises(CorruptImage, match="damaged"):
            read_study([damaged])
    padded = gzip.compress(gzip.decompress(packed) + b"\x00" * (2 << 20))  # far more than the header's volume
    with pytest.raises(CorruptImage, match="holds more voxels than its header declares"):
        read_study([padded])


def test_a_nifti_whose_unit_code_nifti_does_not_define_is_read_unmeasured_not_an_internal_error() -> None:
    import nibabel

    raw = bytearray(nifti(head_volume(4, 64)))
    raw[123] = 0xF0  # xyzt_units: no such code (nibabel raised KeyError: "Unexpected error; try again")
    with pytest.raises(KeyError):
        nibabel.Nifti1Image.from_bytes(bytes(raw)).header.get_xyzt_units()
    (series,) = read_study([bytes(raw)])
    assert series.spacing is None and not series.positions_in_mm  # no size claimed in an unknown unit
    assert any("a unit NIfTI does not define" in w for w in series.warnings)


def test_a_zip_with_names_in_another_encoding_or_a_directory_pointing_astray_is_damaged_not_an_internal_error() -> None:
    """Names flagged UTF-8 but written otherwise raised UnicodeDecodeError, and an end record giving a wrong offset
    of the directory "negative seek value": both "Unexpected error; try again", which a retry cannot help; a bad
    checksum read "damaged (BadZipFile)"."""
    import struct
    import zipfile

    files = dicom_series(head_volume(2))
    good = zipped(files, ["name0_\u00e9.dcm", "name1_\u00e9.dcm"])
    named = bytes(good).replace("\u00e9".encode(), b"\xff\xfe")  # flag bit 11 (UTF-8) set by zipfile, kept
    with pytest.raises(CorruptImage, match="not in the encoding it declares"):
        read_study([named])
    astray = bytearray(good)
    struct.pack_into("<I", astray, astray.rfind(b"PK\x05\x06") + 16, 0xC0000000)
    with pytest.raises(CorruptImage, match="damaged"):
        read_study([bytes(astray)])
    with zipfile.ZipFile(stored := io.BytesIO(), "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.dcm", files[0])
    rotten = bytearray(stored.getvalue())
    rotten[30 + len("a.dcm") + 200] ^= 0xFF  # inside its stored data: its CRC no longer matches
    with pytest.raises(CorruptImage, match=r"damaged \(a checksum does not match\)"):
        read_study([bytes(rotten)])


def test_voxels_that_are_not_numbers_are_shown_as_background_and_said() -> None:
    """A block of NaN inside the brain was drawn black (as a mask's outside is) with no word said."""
    import nibabel

    data = np.transpose(head_volume(6, 64), (2, 1, 0)).astype(np.float32)
    data[20:30, 20:30, 2:4] = np.nan
    (series,) = read_study([nibabel.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0])).to_bytes()])
    assert any("200 of its voxels are not numbers" in note for note in series.warnings)
    assert (series.sections >= 0).all() and series.sections.dtype == np.uint8  # drawn, as background
    (plain,) = read_study([nibabel.Nifti1Image(np.nan_to_num(data), np.diag([1.0, 1.0, 3.0, 1.0])).to_bytes()])
    assert not any("not numbers" in note for note in plain.warnings)


def test_a_series_holding_another_series_images_is_read_once_and_said() -> None:
    """A series sent twice (or re-exported with a corrected pixel spacing) was two volumes with one identity: the
    page said "already saved" of the second, and the PDF printed the first's record, spacing and volume under
    both series' numbers."""
    volume = head_volume(n=8, size=96)
    first = relabelled(dicom_series(volume, series_uid="1.2.3.1"), SeriesNumber=2)
    again = relabelled(dicom_series(volume, series_uid="1.2.3.2"), SeriesNumber=3)
    upload = read_upload(first + again)
    assert [v.number for v in upload.volumes] == [2]
    assert upload.notes == (
        "The upload's series 2 (DICOM series 3) holds the same images as the upload's series 1 (DICOM series 2) (a "
        "series sent twice?): read once, as the latter.",
    )
    corrected = relabelled(dicom_series(volume, series_uid="1.2.3.3"), SeriesNumber=4, PixelSpacing=[1.2, 0.8])
    upload = read_upload(first + corrected)
    assert len(upload.volumes) == 1 and upload.volumes[0].spacing == (0.9, 0.9)
    assert "one header is wrong; check which" in upload.notes[0]
    other = relabelled(dicom_series(head_volume(n=8, size=96, seed=3), series_uid="1.2.3.4"), SeriesNumber=5)
    assert len(read_upload(first + other).volumes) == 2 and not read_upload(first + other).notes  # two series
    # blank series (one grey level each, whatever their stored values) are no content to tell apart, and series
    # of two studies are left to the study's own checks (one of them vanished, unsaid)
    blank = [dicom_series(np.full((4, 96, 96), v, np.uint16), series_uid=f"1.2.3.{v}") for v in (500, 900)]
    assert len(read_upload(blank[0] + blank[1]).volumes) == 2
    elsewhere = dicom_series(volume, study_uid="1.2.826.0.1.3680043.8.498.2", series_uid="1.2.3.6")
    assert len(read_upload(first + elsewhere).volumes) == 2


def test_a_nifti_holding_more_sections_than_its_header_declares_or_voxels_inside_its_header_is_refused() -> None:
    """A header declaring 8 of the 16 sections stored read the first 8 as the whole head (tumour-free: "no
    tumour"), without a word, plain or gzipped; and a voxel offset of 0 read the header's own bytes as voxels,
    every section shifted."""
    import gzip

    from core.imaging.nifti import read_nifti

    whole = nifti(head_volume(16, size=64))
    assert read_nifti(whole).sections.shape[0] == 16
    short = bytearray(whole)
    short[46:48] = (8).to_bytes(2, "little")  # dim[3], the sections: 8 declared, 16 stored
    for data in (bytes(short), gzip.compress(bytes(short))):
        with pytest.raises(CorruptImage, match="holds more voxels than its header declares"):
            read_nifti(data)
    padded = whole + b"\x00" * 16  # less than a section past the volume: padding, read as before
    assert read_nifti(padded).sections.shape[0] == 16 and read_nifti(gzip.compress(padded)).sections.shape[0] == 16
    inside = bytearray(whole)
    inside[108:112] = np.float32(0).tobytes()  # vox_offset
    with pytest.raises(CorruptImage, match="puts the voxels inside itself"):
        read_nifti(bytes(inside))


def test_a_nifti_with_header_extensions_is_read() -> None:
    """The header was parsed from the file's first 540 bytes, extensions and all: one of more than about 190 bytes
    (AFNI's, a long comment) refused the file as "damaged or is not a NIfTI volume"."""
    import nibabel
    from nibabel.nifti1 import Nifti1Extension

    image = nibabel.Nifti1Image(head_volume(6, size=64).transpose(2, 1, 0), np.diag([0.9, 0.9, 5.0, 1.0]))
    image.header.extensions.append(Nifti1Extension(6, b"a comment " * 300))  # 3 kB
    (volume,) = read_study([image.to_bytes()])
    assert volume.sections.shape == (6, 64, 64)


def test_an_image_type_of_one_value_is_read_as_one_value() -> None:
    """ImageType written as one value was iterated letter by letter: "LOCALIZER" alone was no localizer (the
    mosaic check read it as one value: one reading for both now)."""
    from pydicom.dataset import Dataset

    from core.imaging.series_headers import is_localizer

    header = Dataset()
    header.ImageType = "LOCALIZER"
    assert is_localizer(header)
    header.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert is_localizer(header)
