"""Validation loss and calibration on validation logits (plain numpy): a temperature, and a bias on the negative
class's logit that undoes the training draw's class mix (three tumour types and one normal class, equally drawn,
make a tumour three times as likely a priori as in a clinic's mix: "logit adjustment")."""

from __future__ import annotations

import math

import numpy as np


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


def calibrate(logits: np.ndarray, temperature: float, bias: np.ndarray | None = None) -> np.ndarray:
    """Calibrated probabilities: softmax(logits / T + bias)."""
    return softmax(np.asarray(logits, np.float64) / temperature + (0.0 if bias is None else bias))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
