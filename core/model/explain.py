"""Where the model looked: Grad-CAM (Selvaraju et al., 2017) for any class, aligned to the crop and the scan.

The target is the layer the card names (``explain.layer``: chosen when the card is finished, as the resolution whose
heat map peaks inside validation tumours most often) or else the last layer with a spatial (4-D) output, found by
inspecting the model (for a model nested inside another, the nested model itself when it outputs a feature map).
The class score is the model's output for that class before the card's calibration (for the shipped ensemble,
the mean of its members' calibrated log-probabilities). The heat
map is ReLU(sum_k w_k A_k) with w_k the spatially averaged gradients, scaled to [0, 1], resized to the model input
(the padded square crop), and mapped back to the scan's pixels through the same box and padding as
:func:`core.preprocess.crop_square`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from core.errors import ModelError
from core.model.analysis import Analysis, Prediction
from core.model.classifier import Classifier
from core.model.preprocess import input_to_image

# what a heat map is and is not, said wherever one is shown (screen and PDF): measured on 120 LGG validation tumour
# slices (docs/model-report.md), no layer of the shipped ensemble put the peak inside the tumour on more than 18 %
# of them, nor on the tumour's side of the midline as often as on the other (the card's layer: 41 %)
HEAT_MEANING = (
    "The heat map shows regions that weighed on the score (Grad-CAM), not where a tumour is: on validation tumour "
    "slices its peak rarely falls inside the tumour, and falls on the opposite side more often than on the tumour's."
)


def heat_title(label: str) -> str:
    return f"Regions that weighed on the score for {label} (Grad-CAM; not a localisation)"


def _is_feature_map(layer: Any) -> bool:
    shape = getattr(getattr(layer, "output", None), "shape", None)
    return shape is not None and len(shape) == 4 and min(int(s or 0) for s in shape[1:3]) > 1


def last_spatial_layer(model: Any) -> Any:
    """The last layer (searched from the output back) whose output is a 4-D feature map, not a preprocessing
    layer's (such as an ensemble's :class:`core.model.layers.PercentileMirror`)."""
    for layer in reversed(model.layers):
        if _is_feature_map(layer) and not getattr(layer, "preprocessing", False):
            return layer
    raise ValueError("the model has no convolutional feature map to explain")


def stage_layers(model: Any) -> list[Any]:
    """The last layer of each feature-map resolution, finest first: the stages a heat map can be taken from (a
    map with no more channels than the input, such as the input itself or its standardisation, is no feature, nor
    is the output of a preprocessing layer such as :class:`core.model.layers.PercentileMirror`)."""
    channels = int(model.inputs[0].shape[-1] or 1)
    last: dict[int, Any] = {}
    for layer in model.layers:
        if not _is_feature_map(layer) or getattr(layer, "preprocessing", False):
            continue
        if int(layer.output.shape[-1] or 0) > channels:
            last[int(layer.output.shape[1])] = layer
    return [last[size] for size in sorted(last, reverse=True)]


@dataclass(frozen=True, eq=False)
class Heatmap:
    """``on_input``: (size, size) in [0, 1] over the model input; ``on_scan``: the same over the scan's pixels."""

    label: str
    on_input: np.ndarray
    on_scan: np.ndarray


class Explainer:
    """Grad-CAM for one classifier, from ``layer`` (default: the card's, else the last feature map); build once and
    share (calls take the classifier's lock)."""

    def __init__(self, classifier: Classifier, layer: str | None = None) -> None:
        import keras
        import tensorflow as tf

        self.classifier = classifier
        model = classifier.model
        name = layer or classifier.card.explain_layer
        try:
            target = model.get_layer(name) if name else last_spatial_layer(model)
        except ValueError as error:
            raise ModelError(f"Model card {classifier.card.name}: no layer {name!r} to explain from.") from error
        if not _is_feature_map(target):
            raise ModelError(f"Model card {classifier.card.name}: layer {name!r} is no feature map to explain from.")
        self.layer = target.name
        self._probe = keras.Model(model.inputs, [target.output, model.output])
        spec = classifier.card.input

        @tf.function(
            input_signature=[
                tf.TensorSpec((1, spec.size, spec.size, spec.channels), tf.float32),
                tf.TensorSpec((), tf.int32),
            ],
            reduce_retracing=True,
        )
        @tf.autograph.experimental.do_not_convert
        def grad_cam(batch: Any, class_index: Any) -> Any:
            with tf.GradientTape() as tape:
                features, outputs = self._probe(batch, training=False)
                if outputs.shape[-1] > 1:
                    score = outputs[:, class_index]
                else:  # one sigmoid unit: its output for labels[1], its negation for labels[0]
                    score = outputs[:, 0] * (2.0 * tf.cast(class_index, tf.float32) - 1.0)
            gradients = tape.gradient(score, features)
            weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
            return tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[0]

        self._grad_cam = grad_cam

    def heat_on_input(self, model_input: np.ndarray, label: str) -> np.ndarray:
        """Grad-CAM of ``label`` over one model input: (size, size) float32 in [0, 1]."""
        labels = self.classifier.card.labels
        if label not in labels:
            raise ValueError(f"unknown label {label!r}")
        batch = model_input[None].astype(np.float32)
        with self.classifier.lock:  # the model runs one pass at a time, classification and explanation alike
            cam = np.asarray(self._grad_cam(batch, np.int32(labels.index(label))))
        size = model_input.shape[0]
        peak = float(cam.max())
        on_input = cv2.resize(cam / peak if peak > 0 else cam, (size, size), interpolation=cv2.INTER_LINEAR)
        return np.clip(on_input, 0.0, 1.0).astype(np.float32)

    def explain(self, analysis: Analysis, label: str | None = None) -> Heatmap:
        """Heat map for ``label`` (default: the predicted label; the most probable type for "tumour, type
        uncertain"), over the model input and over the scan."""
        label = label or self.default_label(analysis.prediction)
        on_input = self.heat_on_input(analysis.model_input, label)
        return Heatmap(
            label=label, on_input=on_input, on_scan=to_scan(on_input, analysis, self.classifier.card.input.crop)
        )

    def default_label(self, prediction: Prediction) -> str:
        """The label to explain by default: the verdict's, or for "tumour, type uncertain" the most probable type."""
        if prediction.label in self.classifier.card.labels:
            return prediction.label
        return max(
            (label for label in self.classifier.card.labels if label != self.classifier.card.negative_label),
            key=lambda label: prediction.probabilities[label],
        )


def to_scan(on_input: np.ndarray, analysis: Analysis, cropped: bool = True) -> np.ndarray:
    """Map a map over the model input back onto the scan: undo the resize, the square padding and the crop (the
    lesion map's inverse: a second copy stretched an uncropped input's map where the input had been padded)."""
    return input_to_image(on_input, analysis.region.box if cropped else None, analysis.scan.pixels.shape)


def overlay(pixels: np.ndarray, heat: np.ndarray, opacity: float = 0.45) -> np.ndarray:
    """RGB image: the gray slice with the heat map blended in (JET colour map) at ``opacity``."""
    gray = cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    colour = cv2.cvtColor(cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    weight = (opacity * heat)[:, :, None]  # cold areas stay gray
    return (gray * (1 - weight) + colour * weight).astype(np.uint8)


def concentration(heat: np.ndarray, mask: np.ndarray) -> float:
    """Mean heat inside ``mask`` over mean heat outside it (inf when nothing outside is warm)."""
    inside, outside = float(heat[mask].mean()), float(heat[~mask].mean()) if (~mask).any() else 0.0
    return inside / outside if outside > 0 else float("inf")
