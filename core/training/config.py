"""What determines a training run (recorded in the card) and the labels it learns."""

from __future__ import annotations

from dataclasses import dataclass

from core.model.preprocess import InputSpec

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
NEGATIVE = "notumor"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (recorded in the card)."""

    size: int = 160
    widths: tuple[int, ...] = (24, 48, 96, 192)
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_epochs: int = 2
    patience: int = 10
    max_minutes: float = 75.0
    val_fraction: float = 0.2
    unknown_val_fraction: float = 0.35
    unknown_weight: float = 3.0
    mirror: bool = True
    synthetic_lesions: float = 0.0  # share of normal training scans that also train with a painted lesion
    rotation: float = 15.0  # augmentation turns scans by up to this many degrees either way
    init: str | None = None  # a model card to start from (fine-tuning); it must have been validated on this split
    twin_threshold: float = 0.97
    seed: int = 20261125
    name: str = "btd-cnn"
    version: str = "1.4.0"

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.size, channels=2 if self.mirror else 1, mirror=self.mirror)
