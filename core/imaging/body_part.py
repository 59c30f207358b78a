"""What a DICOM file says of the body part it shows (BodyPartExamined, its descriptions), checked before its
pixels are read, and how a message quotes a file's own words."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from core.errors import WrongBodyPart

# Body parts a brain slice may be filed under (BodyPartExamined defined terms and common local values).
_HEAD_PARTS = {
    "HEAD", "BRAIN", "SKULL", "HEADNECK", "NEURO", "CEREBRUM", "CRANIUM", "IAC", "ORBIT",
    # parts of the brain a protocol is named after (a pituitary study is one of the model's four classes)
    "PITUITARY", "SELLA", "BRAINSTEM", "CEREBELLUM", "POSTERIORFOSSA", "HYPOPHYSIS",
    # scanners set up in other languages (German, French, Spanish, Italian, Portuguese)
    "KOPF", "SCHADEL", "SCHAEDEL", "GEHIRN", "HIRN", "TETE", "CERVEAU", "CRANE", "CABEZA", "CEREBRO", "CRANEO",
    "TESTA", "CERVELLO", "CRANIO", "CABECA",
}  # fmt: skip
# Words in a study or series description that name another part of the body.
_OTHER_PARTS = (
    "ABDOMEN",
    "ABDOMINAL",
    "PELVIS",
    "PELVIC",
    "CHEST",
    "THORAX",
    "THORACIC",
    "LUNG",
    "CARDIAC",
    "HEART",
    "BREAST",
    "MAMMO",
    "KNEE",
    "SHOULDER",
    "HIP",
    "SPINE",
    "LUMBAR",
    "SACRUM",
    "LIVER",
    "KIDNEY",
    "RENAL",
    "PROSTATE",
    "UTERUS",
    "ANKLE",
    "WRIST",
    "ELBOW",
    "FOOT",
    "HAND",
    "FEMUR",
    "RECTUM",
    "PANCREAS",
    "BOWEL",
)


def quoted(text: str) -> str:
    """A file's own words as a message quotes them: letters, digits, spaces and ``_.-`` only, at most 64 characters
    (messages reach the page, where markup in a crafted header would render)."""
    return re.sub(r"[^A-Za-z0-9 _.-]", "", text)[:64]


def check_body_part(header: Any) -> None:
    """Refuse a file that says it shows another part of the body: BodyPartExamined, or a study or series
    description naming one (and no head). The descriptions are only searched for those words, never kept."""
    part = str(header.get("BodyPartExamined", "") or "").strip().upper()
    plain = unicodedata.normalize("NFKD", part).encode("ascii", "ignore").decode()  # "TÊTE" as "TETE"
    if part and re.sub(r"[^A-Z]", "", plain) not in _HEAD_PARTS:  # "HEAD NECK", "HEAD^NECK" as "HEADNECK"
        if set(re.findall(r"[A-Z]+", plain)) & set(_OTHER_PARTS):
            raise WrongBodyPart(
                f"This DICOM file is of the {quoted(part).lower()} (BodyPartExamined); the model reads brain MRI."
            )
        raise WrongBodyPart(  # never said to be "of the kopf": a value this app does not know, said as such
            f"This DICOM file's body part ({quoted(part).lower()}, BodyPartExamined) is not one this app knows for "
            "the head; the model reads brain MRI only (a head scan filed so: export it as HEAD or BRAIN)."
        )
    for name in ("StudyDescription", "SeriesDescription", "ProtocolName"):
        words = set(re.findall(r"[A-Z]+", str(header.get(name, "") or "").upper()))
        named = sorted(words & set(_OTHER_PARTS))
        if named and not words & (_HEAD_PARTS | {"HEAD", "BRAIN"}):
            raise WrongBodyPart(
                f"This DICOM file's {_spaced(name)} names the {named[0].lower()}; the model reads brain MRI only."
            )


def _spaced(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r" \1", name).lower()
