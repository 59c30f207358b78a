"""Validation loss and calibration on validation logits (plain numpy): a temperature, and a bias on the negative
class's logit that undoes the training draw's class mix (three tumour types and one normal class, equally drawn,
make a tumour three times as likely a priori as in a clinic's mix: "logit adjustment")."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from core.model.classifier import calibrate as calibrate  # the one formula, served and fitted
from core.model.classifier import softmax as softmax
from core.training.config import CLASSES, NEGATIVE


def mean_nll(logits: np.ndarray, masks: np.ndarray, temperature: float = 1.0, bias: np.ndarray | None = None) -> float:
    """Mean allowed-label NLL of rows of logits (the training loss, unweighted): the validation loss."""
    z = np.asarray(logits, np.float64) / temperature + (0.0 if bias is None else np.asarray(bias, np.float64))
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    allowed = np.where(masks > 0, log_p, -np.inf)
    top = allowed.max(axis=1, keepdims=True)
    return float(-(top[:, 0] + np.log(np.exp(allowed - top).sum(axis=1))).mean())


def fit_temperature(logits: np.ndarray, masks: np.ndarray, bias: np.ndarray | None = None) -> float:
    """Temperature minimising the allowed-label NLL on validation logits (golden-section search on log T)."""

    def nll(log_t: float) -> float:
        return mean_nll(logits, masks, math.exp(log_t), bias)

    low, high = math.log(0.25), math.log(8.0)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if nll(a) < nll(b):
            high = b
        else:
            low = a
    return round(math.exp((low + high) / 2), 4)


def fit_calibration(logits: np.ndarray, masks: np.ndarray, negative: int) -> tuple[float, float]:
    """(temperature, bias on the negative class's logit) minimising the allowed-label NLL on validation logits:
    for each bias on a grid (step 0.05 in [-3, 3]) the best temperature, then the best pair."""
    best = (math.inf, 1.0, 0.0)
    for step in np.round(np.arange(-3.0, 3.0001, 0.05), 2):
        bias = np.zeros(np.asarray(logits).shape[1])
        bias[negative] = step
        temperature = fit_temperature(logits, masks, bias)
        nll = mean_nll(logits, masks, temperature, bias)
        if nll < best[0]:
            best = (nll, temperature, float(step))
    return best[1], best[2]


def negative_bias_vector(negative_bias: float) -> np.ndarray:
    """The per-class logit bias of a fitted calibration: ``negative_bias`` on the no-tumour logit, 0 elsewhere."""
    return np.array([negative_bias if c == NEGATIVE else 0.0 for c in CLASSES])


def recalibrate_batchnorm(model: Any, inputs: np.ndarray, batch_size: int = 64) -> None:
    """Set every batch-normalisation layer's moving mean and variance to the statistics of ``inputs`` (clean
    training inputs, as inference sees them), layer after layer so each sees the layers before it as they now are.

    The moving averages training leaves behind follow the last few dozen augmented batches; drawn from
    sources of different looks, they swing from epoch to epoch, and so do the validation figures. Population
    statistics of clean inputs are what inference needs (precise BN statistics, as in Wu and Johnson 2021).
    """
    import keras

    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        probe = keras.Model(model.inputs[0], layer.input)
        total, squares, count = None, None, 0
        for start in range(0, len(inputs), batch_size):
            features = np.asarray(probe(inputs[start : start + batch_size], training=False), np.float64)
            flat = features.reshape(-1, features.shape[-1])
            total = flat.sum(axis=0) if total is None else total + flat.sum(axis=0)
            squares = (flat**2).sum(axis=0) if squares is None else squares + (flat**2).sum(axis=0)
            count += len(flat)
        mean = total / count
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(np.maximum(squares / count - mean**2, 0.0).astype(np.float32))
