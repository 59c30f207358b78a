"""Keras layers of the project's own networks, registered so that a saved network loads in safe mode.

:class:`PercentileMirror` computes, inside a network, the input of the round-2 models (percentile scaling and the
mirror channel of :func:`core.model.preprocess.square_to_input`) from model 3's input (the crop scaled to [0, 1]),
so that an ensemble of both (:mod:`core.training.ensemble`) is one network with one input, and every caller (scan,
study, gate, heat map, report) runs it as it runs any model. Importing this module registers the layers;
:func:`core.model.classifier.load_checked_model` does so before loading.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

LOW, HIGH = 1.0, 99.0  # the percentiles of core.model.preprocess.scale_intensities
BLUR = 0.02  # the mirror channel's Gaussian sigma as a share of the side (core.model.preprocess.asymmetry)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """OpenCV's Gaussian kernel for a float image and ``sigma`` (``GaussianBlur(image, (0, 0), sigma)``): size
    ``round(8 sigma + 1) | 1``, normalised to sum 1."""
    size = round(sigma * 8 + 1) | 1
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


@keras.saving.register_keras_serializable(package="btd")
class PercentileMirror(keras.layers.Layer):
    """(N, S, S, 1) crops in [0, 1] -> (N, S, S, 2): the crop with its 1st percentile at 0 and its 99th at 1
    (clipped; all zero when they are closer than 1e-3 grey level), and |blur - mirrored blur| of that (Gaussian,
    sigma 2 % of the side, borders reflected as OpenCV does). Equal to the NumPy path within float rounding."""

    preprocessing = True  # computed from the input, nothing learned: no stage for a heat map

    def call(self, crops: Any) -> Any:
        size = int(crops.shape[1])
        values = ops.reshape(crops * 255.0, (-1, size * size))
        ordered = ops.sort(values, axis=-1)

        def percentile(q: float) -> Any:  # NumPy's default (linear) interpolation between order statistics
            position = q / 100.0 * (size * size - 1)
            below, fraction = int(np.floor(position)), position - np.floor(position)
            above = min(below + 1, size * size - 1)
            return ordered[:, below : below + 1] * (1.0 - fraction) + ordered[:, above : above + 1] * fraction

        low, high = percentile(LOW), percentile(HIGH)
        span = high - low
        scaled = ops.clip((values - low) / ops.maximum(span, 1e-3), 0.0, 1.0) * ops.cast(span >= 1e-3, values.dtype)
        scaled = ops.reshape(scaled, (-1, size, size, 1))
        kernel = gaussian_kernel(BLUR * size)
        radius = len(kernel) // 2
        padded = ops.pad(scaled, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="reflect")
        rows = ops.depthwise_conv(padded, ops.convert_to_tensor(kernel.reshape(1, -1, 1, 1)), padding="valid")
        blurred = ops.depthwise_conv(rows, ops.convert_to_tensor(kernel.reshape(-1, 1, 1, 1)), padding="valid")
        return ops.concatenate([scaled, ops.abs(blurred - ops.flip(blurred, axis=2))], axis=-1)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (*input_shape[:-1], 2)
