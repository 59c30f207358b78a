"""Series and volumes generated in code: DICOM series of a synthetic head (with or without a tumour) in any plane,
zips of them, enhanced multi-frame files and NIfTI volumes, for tests and benchmarks. Nothing here is a real scan."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from core.imaging.phantoms import synthetic_slice

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def head_volume(n: int = 12, size: int = 128, tumour_sections: range | None = None, seed: int = 0) -> np.ndarray:
    """(n, size, size) uint16 (12-bit values): sections of a synthetic head, a lesion in ``tumour_sections``."""
    sections = []
    for k in range(n):
        image = synthetic_slice(size, tumour=tumour_sections is not None and k in tumour_sections, seed=seed + k)
        sections.append(image.astype(np.uint16) * 16)
    return np.stack(sections)


def dicom_series(
    volume: np.ndarray,
    orientation: tuple[float, ...] = AXIAL,
    spacing: float = 5.0,
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    series_uid: str = "1.2.826.0.1.3680043.8.498.1.1",
    photometric: str = "MONOCHROME2",
    skip: tuple[int, ...] = (),
) -> list[bytes]:
    """One DICOM file per section, positions along the normal of ``orientation``, InstanceNumber scrambled."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, column)
    files = []
    for k, stored in enumerate(volume):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.PatientName = "MR", "ZZCANARY^Series"
        ds.InstanceNumber = (k * 7) % len(volume) + 1  # not the order: positions decide
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.ImagePositionPatient = [float(v) for v in (k * spacing * normal + np.array([-100.0, -100.0, 0.0]))]
        ds.PixelSpacing, ds.SliceThickness = [0.9, 0.9], spacing
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = (4095 - stored if photometric == "MONOCHROME1" else stored).astype("<u2").tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


def enhanced_multiframe(
    volume: np.ndarray,
    spacing: float = 5.0,
    order: list[int] | None = None,
    orientation: tuple[float, ...] = AXIAL,
    per_frame: bool = False,
    odd_frame: tuple[float, ...] | None = None,
) -> bytes:
    """An enhanced MR multi-frame file whose frames carry their own positions (stored in ``order``), along the normal
    of ``orientation``; orientation and pixel measures shared, or given in every frame's group (``per_frame``), the
    second frame stored with ``odd_frame``'s orientation when given."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    order = order or list(range(len(volume)))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.3.4", "1.2.3.4.5", "MR"
    ds.NumberOfFrames = len(volume)
    ds.Rows, ds.Columns = volume.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0

    def geometry(group: Dataset, directions: tuple[float, ...]) -> None:
        plane, measures = Dataset(), Dataset()
        plane.ImageOrientationPatient = [float(v) for v in directions]
        measures.PixelSpacing, measures.SliceThickness = [0.9, 0.9], spacing
        group.PlaneOrientationSequence, group.PixelMeasuresSequence = [plane], [measures]

    shared = Dataset()
    if not per_frame:
        geometry(shared, orientation)
    ds.SharedFunctionalGroupsSequence = [shared]
    normal, frames = np.cross(orientation[:3], orientation[3:]), []
    for number, k in enumerate(order):
        group, position = Dataset(), Dataset()
        position.ImagePositionPatient = [float(v) for v in np.array([-100.0, -100.0, 0.0]) + k * spacing * normal]
        group.PlanePositionSequence = [position]
        if per_frame:
            geometry(group, odd_frame if odd_frame is not None and number == 1 else orientation)
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.stack([volume[k] for k in order]).astype("<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def zipped(files: list[bytes], names: list[str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for k, data in enumerate(files):
            archive.writestr(names[k] if names else f"study/IM{k:05d}", data)
    return buffer.getvalue()


def nifti(volume: np.ndarray, affine: np.ndarray | None = None, gz: bool = False) -> bytes:
    """A NIfTI-1 file of ``volume`` given as (sections, rows, cols) in the radiological view (anterior at the top,
    the patient's right on the left), stored x, y, z under ``affine`` (default: RAS+, 0.9 x 0.9 x 5 mm)."""
    import gzip

    import nibabel

    data = np.transpose(volume[:, ::-1, ::-1], (2, 1, 0)).astype(np.int16)  # sections -> z, rows -> y, cols -> x
    image = nibabel.Nifti1Image(data, affine if affine is not None else np.diag([0.9, 0.9, 5.0, 1.0]))
    raw = image.to_bytes()
    return gzip.compress(raw) if gz else raw
