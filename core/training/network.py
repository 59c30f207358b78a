"""The network, its loss, the augmented batch stream, and starting from a trained model."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.evaluation.splits import split_file_of
from core.model.decision import UNKNOWN_TYPE
from core.model.preprocess import InputSpec
from core.training.augment import augment
from core.training.config import CLASSES, NEGATIVE, TrainConfig
from core.training.data import label_masks
from core.training.lesions import synthetic_lesion
from core.training.transplants import Donor, transplant


def build_model(config: TrainConfig) -> Any:
    """A small VGG-style CNN (conv-BN-ReLU pairs, max-pooling, global average pooling) ending in 4 logits."""
    import keras
    from keras import layers

    inputs = keras.Input((config.size, config.size, config.input_spec.channels), name="scan")
    x = layers.Conv2D(config.widths[0], 3, strides=2, padding="same", use_bias=False)(inputs)
    x = layers.ReLU()(layers.BatchNormalization(momentum=0.9)(x))
    for stage, width in enumerate(config.widths):
        for _ in range(2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
            x = layers.ReLU()(layers.BatchNormalization(momentum=0.9)(x))
        if stage < len(config.widths) - 1:
            x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(len(CLASSES), name="logits")(x)
    return keras.Model(inputs, outputs, name=config.name)


def allowed_label_nll(masks: Any, logits: Any) -> Any:
    """-log P(true label set): -log p_c for a known class, -log(1 - p_notumor) for a tumour of unknown type."""
    from keras import ops

    log_p = ops.log_softmax(logits, axis=-1)
    return -ops.logsumexp(log_p + (masks - 1.0) * 1e4, axis=-1)


def batches(
    images: Sequence[np.ndarray],
    indices: np.ndarray,
    probabilities: np.ndarray,
    masks: np.ndarray,
    config: TrainConfig,
    references: Sequence[np.ndarray],
    donors: Sequence[Donor] = (),
) -> Any:
    """The epochs' augmented batches: each epoch draws ``samples_per_epoch`` of ``indices`` with ``probabilities``
    (:func:`core.training.data.sampling_weights`), seeded by the run's seed, the epoch and the batch, so a resumed
    run sees the very batches an uninterrupted one would. A normal scan also trains as a counterfactual twin with
    a transplanted (share ``transplants``, when there are donors) or painted (``synthetic_lesions``) lesion,
    labelled tumour of unknown type."""
    import keras

    negative = CLASSES.index(NEGATIVE)
    tumour_mask = label_masks([UNKNOWN_TYPE])[0]
    per_epoch = config.samples_per_epoch or len(indices)
    transplant_share = config.transplants if donors else 0.0

    def lesion_for(j: int, rng: np.random.Generator) -> Callable[[np.ndarray, np.random.Generator], Any] | None:
        if masks[j, negative] != 1.0:
            return None
        draw = rng.random()
        if draw < transplant_share:
            donor = donors[int(rng.integers(len(donors)))]
            return lambda square, r: transplant(square, donor, r)
        if draw < transplant_share + config.synthetic_lesions:
            return synthetic_lesion
        return None

    class AugmentedBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self.order = np.asarray(indices)

        def __len__(self) -> int:
            return math.ceil(per_epoch / config.batch_size)

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            rng = np.random.default_rng((config.seed, self.epoch, i))
            if i == 0:
                draw = np.random.default_rng((config.seed, self.epoch))
                self.order = draw.choice(indices, size=per_epoch, replace=True, p=probabilities)
            chosen = self.order[i * config.batch_size : (i + 1) * config.batch_size]
            spec, inputs, batch_masks = config.input_spec, [], []
            for j in chosen:
                reference = references[int(rng.integers(len(references)))]
                x, with_lesion = augment(images[j], rng, spec, reference, lesion_for(int(j), rng), config.rotation)
                inputs.append(x)
                batch_masks.append(masks[j])
                if with_lesion is not None:  # its twin with a lesion: a tumour scan of this source, type unknown
                    inputs.append(with_lesion)
                    batch_masks.append(tumour_mask)
            return np.stack(inputs), np.stack(batch_masks), np.ones(len(inputs), np.float32)

        def on_epoch_end(self) -> None:
            self.epoch += 1

    return AugmentedBatches()


def initial_weights(model: Any, card_path: Path, spec: InputSpec, split_entries: list[list[str]]) -> dict[str, str]:
    """Copy a trained model's weights into ``model`` (fine-tuning); returns its version and weights' SHA-256.

    Refused unless it takes the same input and was validated on exactly this run's validation split: otherwise the
    new model would be trained on scans it is then judged on.
    """
    from core.model.classifier import Classifier

    start = Classifier.from_card(card_path)  # checks the weights' SHA-256
    if start.card.input != spec:
        raise ValueError(f"{card_path} takes {start.card.input}, this run {spec}")
    split_file = split_file_of(card_path)
    if not split_file.is_file() or json.loads(split_file.read_text())["validation"] != split_entries:
        raise ValueError(f"{card_path} was not validated on this run's split: fine-tuning it would leak")
    model.set_weights(start.model.get_weights())
    return {"version": start.card.version, "sha256": start.card.weights_sha256}
