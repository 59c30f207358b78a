"""DICOM's display transform (PS3.3 C.11), as a radiologist's viewer applies it: stored values -> uint8.

Modality LUT (rescale slope and intercept) first; padding (PixelPaddingValue) left out and shown black; then the VOI
LUT (on integer values, as its table is indexed) or the first window (LINEAR, LINEAR_EXACT or SIGMOID, straight to
0..255); a percentile stretch when neither is present; MONOCHROME1 inverted last.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from core.errors import CorruptImage
from core.imaging.geometry import functional_groups
from core.imaging.limits import stretch_to_uint8


def _as_stored(value: Any, dataset: Any) -> int:
    """A 16-bit header value in the pixels' own sign: files with signed pixels often write a negative padding value
    or first mapped LUT value as US (-2000 as 63536), which then matched no pixel, or blackened the whole image."""
    number = int(value)
    signed = int(dataset.get("PixelRepresentation", 0) or 0) == 1
    return number - 65536 if signed and 32768 <= number <= 65535 else number


def padding_of(stored: np.ndarray, dataset: Any) -> np.ndarray | None:
    """Where the stored values are padding (PixelPaddingValue, up to PixelPaddingRangeLimit: the corners a scanner
    fills around a rotated or reformatted image), None when none is declared or found."""
    try:
        value = dataset.get("PixelPaddingValue")
        limit = dataset.get("PixelPaddingRangeLimit")
        ends = (value, limit if limit is not None else value)
        low, high = sorted(_as_stored(v, dataset) for v in ends) if value is not None else (0, 0)
    except (TypeError, ValueError):  # a malformed value: no padding assumed, the image shown as stored
        return None
    if value is None:
        return None
    mask = (stored >= low) & (stored <= high)
    return mask if mask.any() and not mask.all() else None


_FRAME_GROUPS = {  # a functional group's macro -> the elements it carries that the display or the facts read
    "PixelValueTransformationSequence": ("RescaleIntercept", "RescaleSlope", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction", "WindowCenterWidthExplanation"),
    # the pixel size and plane: an enhanced slice on the Scan page had neither (its lesion in pixels only)
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
}


def frame_view(dataset: Any, frame: int | None) -> Any:
    """``dataset`` as :func:`display` and the acquisition facts read it for one frame: an enhanced file keeps its
    rescale, window, pixel size and plane in its functional groups (shared, or the frame's own, which wins), not at
    the top level, where they were not looked for (its frames got a percentile stretch: the same series looked, and
    fed the model, otherwise than as classic files). The dataset itself when it has no such group."""
    from pydicom.dataset import Dataset

    own, shared = functional_groups(dataset, frame)
    groups = (shared, own)  # the frame's own last: it wins
    found = {
        keyword: item[keyword]
        for group in groups
        if group is not None
        for macro, keywords in _FRAME_GROUPS.items()
        for item in (group.get(macro) or [])[:1]
        for keyword in keywords
        if keyword in item
    }
    if not found:
        return dataset
    view = Dataset()
    for element in dataset:  # the top level's own values stay where the groups give none (its window beside an
        if element.keyword != "PixelData" and element.keyword not in found:  # identity rescale in the groups)
            view.add(element)
    for element in found.values():
        view.add(element)
    if hasattr(dataset, "file_meta"):  # its transfer syntax, one of the facts
        view.file_meta = dataset.file_meta
    return view


def display(stored: np.ndarray, dataset: Any) -> np.ndarray:
    """Stored values -> displayed uint8: modality LUT, VOI LUT or window (first of several), else stretch; padding
    black, and left out of the stretch (white corners of a rotated slice shrank the brain crop and its score)."""
    from pydicom.pixels import apply_modality_lut

    _check_rescale(dataset)
    values = apply_modality_lut(stored, dataset)
    padding = padding_of(stored, dataset)
    if padding is not None:
        values = np.where(padding, np.min(values[~padding]), values)
    voi_sequence = dataset.get("VOILUTSequence")
    if voi_sequence:
        shown = apply_voi_table(values, dataset)
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        shown = apply_window(values, *first_window(dataset), window_function(dataset))
    else:
        shown = stretch_to_uint8(values)
    if inverted(dataset):
        shown = 255 - shown
    if padding is not None:
        shown = np.where(padding, 0, shown).astype(np.uint8)
    return shown


def _check_rescale(dataset: Any) -> None:
    """Refuse a rescale slope that is not a non-zero number, or an intercept that is not a number: every value
    became 0 or NaN, and the file was called a blank image."""
    try:  # an empty or multi-valued one is no number either (it ended as an internal error)
        slope, intercept = float(dataset.get("RescaleSlope", 1)), float(dataset.get("RescaleIntercept", 0))
        bits = int(dataset.get("BitsAllocated") or 16)
    except (TypeError, ValueError):
        slope = intercept = math.nan
        bits = 16
    # values past 1e30 are no MR values: a slope of 1e308 overflowed them all to infinity ("a blank image")
    reach = abs(slope) * 2.0**bits + abs(intercept) if math.isfinite(slope) and math.isfinite(intercept) else math.inf
    if not (slope != 0 and reach < 1e30):
        raise CorruptImage(
            "The DICOM header's rescale slope or intercept is not a usable number; the pixel values cannot be read."
        )


def inverted(dataset: Any) -> bool:
    """Whether the displayed grey scale runs the other way: MONOCHROME1, or a Presentation LUT Shape of INVERSE
    (an enhanced MR image may say so; it was shown and analysed negative). The two are one inversion: a radiograph
    says both of the same pixels (PS3.3 C.8.11.6), never inverted twice."""
    photometric = str(dataset.get("PhotometricInterpretation", "")).upper()
    return photometric == "MONOCHROME1" or str(dataset.get("PresentationLUTShape", "")).upper() == "INVERSE"


def apply_voi_table(values: np.ndarray, dataset: Any) -> np.ndarray:
    """The first VOI LUT table (PS3.3 C.11.2.1.1), its output range scaled to 0..255.

    A table is indexed by integer values, so the modality output is rounded first (pydicom warns that a float
    input gives wrong results). Values below the first mapped one take the first entry, values past the table the
    last (the lookup is done here because pydicom 3.0.2 computes the index in the table's own 8-bit type, which
    wraps values more than 255 past the first mapped one round to the start of an 8-bit table).
    """
    item = dataset.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    first = _as_stored(first, dataset)
    if not 1 <= bits <= 16:  # a table whose entries have no range is no table: the percentile stretch
        return stretch_to_uint8(np.asarray(values, dtype=np.float64))
    entries = entries or 65536
    data = item.LUTData
    if isinstance(data, bytes):  # OW: 16-bit words, little endian
        table = np.frombuffer(data, dtype="<u2")[:entries].astype(np.float64)
    else:
        table = np.asarray([data] if isinstance(data, int | float) else list(data), dtype=np.float64)[:entries]
    index = np.clip(np.rint(values).astype(np.int64) - first, 0, len(table) - 1)
    shown = table[index] * (255.0 / (2**bits - 1))
    return np.clip(shown + 0.5, 0, 255).astype(np.uint8)


def window_note(dataset: Any) -> str | None:
    """What a reader is told when the file's own display window cannot be used (a width of 0, negative or not a
    number): the image is shown with automatic contrast instead, which looked like the file's own, unsaid."""
    if dataset.get("VOILUTSequence") or "WindowCenter" not in dataset or "WindowWidth" not in dataset:
        return None
    try:
        center, width = first_window(dataset)
    except (TypeError, ValueError):
        return None
    function = window_function(dataset)
    lowest = 1.0 if function == "LINEAR" else 0.0
    if math.isfinite(center) and math.isfinite(width) and (width >= lowest if lowest else width > 0):
        return None
    return (
        f"The file's display window (centre {center:g}, width {width:g}) cannot be used: the image is shown with "
        "automatic contrast (its 0.5th to 99.5th percentile) instead."
    )


def first_window(dataset: Any) -> tuple[float, float]:
    """(centre, width) of the first window the header offers."""
    center_value, width_value = dataset.WindowCenter, dataset.WindowWidth
    center = float(center_value[0]) if dataset["WindowCenter"].VM > 1 else float(center_value)
    width = float(width_value[0]) if dataset["WindowWidth"].VM > 1 else float(width_value)
    return center, width


def window_function(dataset: Any) -> str:
    return str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 window (LINEAR, LINEAR_EXACT or SIGMOID) straight to the 0..255 output range.

    A width the function does not allow (LINEAR below 1, others not above 0) falls back to a percentile stretch;
    a LINEAR width of exactly 1 is the standard's step at ``center - 0.5``.
    """
    values = np.asarray(values, dtype=np.float64)
    if not (np.isfinite(center) and np.isfinite(width)):  # a NaN or infinite window is no window
        return stretch_to_uint8(values)
    if function == "SIGMOID":
        if width <= 0:
            return stretch_to_uint8(values)
        shown = 255.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / width, -700, 700)))
        return np.clip(shown + 0.5, 0, 255).astype(np.uint8)
    if function == "LINEAR_EXACT":
        if width <= 0:
            return stretch_to_uint8(values)
    elif width < 1:
        return stretch_to_uint8(values)
    else:  # LINEAR: the standard's half-pixel shift and width - 1
        center, width = center - 0.5, width - 1.0
    below, above = values <= center - width / 2, values > center + width / 2
    shown = np.empty(values.shape, np.float64)
    shown[below], shown[above] = 0.0, 255.0
    between = ~(below | above)
    if width > 0:  # at width 0 (LINEAR width 1) every value is below or above: a step
        shown[between] = ((values[between] - center) / width + 0.5) * 255.0
    return np.clip(shown + 0.5, 0, 255).astype(np.uint8)
