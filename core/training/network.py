"""The network, its loss, the augmented batch stream, and starting from a trained model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from core.evaluation.splits import split_file_of
from core.model.decision import UNKNOWN_TYPE
from core.model.preprocess import InputSpec
from core.training.augment import augment
from core.training.config import CLASSES, NEGATIVE, TrainConfig
from core.training.data import label_masks


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


def _batches(images, indices, masks, weights, config, references, epoch_seed):
    import keras

    negative, share = CLASSES.index(NEGATIVE), config.synthetic_lesions  # share 0 draws nothing: 1.4.0's stream
    tumour_mask = label_masks([UNKNOWN_TYPE])[0]

    class AugmentedBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self.order = np.array(indices)

        def __len__(self) -> int:
            return math.ceil(len(indices) / config.batch_size)

        def __getitem__(self, i: int):
            rng = np.random.default_rng((epoch_seed, self.epoch, i))
            if i == 0:
                self.order = np.random.default_rng((epoch_seed, self.epoch)).permutation(indices)
            chosen = self.order[i * config.batch_size : (i + 1) * config.batch_size]
            spec, inputs, batch_masks, batch_weights = config.input_spec, [], [], []
            for j in chosen:
                reference = references[int(rng.integers(len(references)))]
                lesion = bool(masks[j, negative] == 1.0) and share > 0 and rng.random() < share
                x, with_lesion = augment(images[j], rng, spec, reference, lesion, config.rotation)
                rows = [(x, masks[j])]
                if with_lesion is not None:  # its twin with a lesion: a tumour scan of this source, subtype unknown
                    rows.append((with_lesion, tumour_mask))
                for model_input, mask in rows:
                    inputs.append(model_input)
                    batch_masks.append(mask)
                    batch_weights.append(weights[j])
            return np.stack(inputs), np.stack(batch_masks), np.asarray(batch_weights, np.float32)

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
