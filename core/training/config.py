"""What determines a training run (recorded in the card) and the labels it learns."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.evaluation.neighbours import TWIN_THRESHOLD
from core.model.decision import CLASSES as CLASSES  # the classes trained: the ones every board lists
from core.model.decision import NEGATIVE_LABEL
from core.model.preprocess import InputSpec

NEGATIVE = NEGATIVE_LABEL  # the negative class, named once
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (recorded in the card).

    Sampling: every epoch draws ``samples_per_epoch`` training images (0: as many as there are) with
    probabilities that give every known class the same share, every source of a class the same share of it
    (:func:`core.training.data.sampling_weights`), and every patient, subject or twin group one vote within its
    source; tumour scans of unknown type get ``unknown_weight`` times a known scan's share.
    """

    size: int = 128
    widths: tuple[int, ...] = (16, 32, 64, 128)  # 298k parameters: about 14 ms a training image on 2 cores
    epochs: int = 20
    batch_size: int = 32
    samples_per_epoch: int = 6000
    learning_rate: float = 1e-3
    warmup_epochs: int = 2
    patience: int = 10
    max_minutes: float = 180.0
    val_fraction: float = 0.2
    unknown_val_fraction: float = 0.35
    unit_val_fraction: float = 0.2  # patients or subjects held out for validation, per institution
    unknown_weight: float = 3.0
    mirror: bool = True
    transplants: float = 0.3  # share of normal training scans that also train with a real tumour transplanted in
    min_tumour_pixels: int = 100  # tumour slices with a smaller mask are too ambiguous to train on
    synthetic_lesions: float = 0.0  # share of normal training scans that also train with a painted lesion
    rotation: float = 20.0  # augmentation turns scans by up to this many degrees either way
    hold_out: tuple[str, ...] = field(default_factory=tuple)  # institutions left out entirely (scored apart)
    init: str | None = None  # a model card to start from (fine-tuning); it must have been validated on this split
    twin_threshold: float = TWIN_THRESHOLD
    seed: int = 20261125
    name: str = "btd-cnn"
    version: str = "2.0.0"

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.size, channels=2 if self.mirror else 1, mirror=self.mirror)
