"""Validation loss and temperature calibration on validation logits (plain numpy)."""

from __future__ import annotations

import math

import numpy as np


def mean_nll(logits: np.ndarray, masks: np.ndarray, temperature: float = 1.0) -> float:
    """Mean allowed-label NLL of rows of logits (the training loss, unweighted): the validation loss."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    allowed = np.where(masks > 0, log_p, -np.inf)
    top = allowed.max(axis=1, keepdims=True)
    return float(-(top[:, 0] + np.log(np.exp(allowed - top).sum(axis=1))).mean())


def fit_temperature(logits: np.ndarray, masks: np.ndarray) -> float:
    """Temperature minimising the allowed-label NLL on validation logits (golden-section search on log T)."""

    def nll(log_t: float) -> float:
        return mean_nll(logits, masks, math.exp(log_t))

    low, high = math.log(0.25), math.log(8.0)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if nll(a) < nll(b):
            high = b
        else:
            low = a
    return round(math.exp((low + high) / 2), 4)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
