"""Training dynamics read from a run's histories: where a loss diverged, and the finite-time Lyapunov exponents of
the learning map (the study's twins, Benettin's method: renormalised every window, several directions kept apart by
QR). Pure functions: numpy in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["DIVERGENCE_FACTOR", "Divergence", "divergence", "orthonormalise", "lyapunov_window", "early_index",
           "early_mean"]


# A run "diverged" when its loss rose above this multiple of its own minimum and ended there.
DIVERGENCE_FACTOR = 2.0


class Divergence(NamedTuple):
    """Where a loss history diverged: its minimum, the first step after it above ``factor`` x the minimum, the last
    value."""

    best_step: int
    best: float
    step: int
    final: float


def divergence(steps: Sequence[int], losses: Sequence[float], factor: float = DIVERGENCE_FACTOR) -> Divergence | None:
    """The divergence of a loss history, or None when its last value is within ``factor`` of its minimum.

    A history that became NaN or infinite diverged at the first such step.

    >>> divergence([0, 1, 2, 3, 4], [0.5, 0.1, 0.12, 0.3, 0.4])
    Divergence(best_step=1, best=0.1, step=3, final=0.4)
    >>> divergence([0, 1, 2], [0.5, 0.1, 0.15]) is None, divergence([], []) is None
    (True, True)
    >>> divergence([0, 1, 2], [0.5, float("nan"), 0.1]).step
    1
    """
    values = np.asarray(losses, dtype=float)
    steps = np.asarray(steps)
    if len(values) == 0:
        return None
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.argmax(bad))
        best = int(np.argmin(values[:first])) if first else 0
        return Divergence(int(steps[best]), float(values[best]) if first else math.nan, int(steps[first]),
                          float(values[-1]))
    best = int(np.argmin(values))
    if not values[-1] > factor * values[best]:
        return None
    after = np.flatnonzero(values[best:] > factor * values[best])
    return Divergence(int(steps[best]), float(values[best]), int(steps[best + after[0]]), float(values[-1]))


def orthonormalise(differences: np.ndarray, d0: float) -> tuple[np.ndarray, np.ndarray]:
    """One renormalisation of Benettin's method: ``k`` difference vectors (the columns of ``differences``, each a
    twin's state minus the reference's) re-orthonormalised by QR and set back to length ``d0``.

    Args:
        differences: ``(P, k)`` float64, ``P >= k``.
        d0: the length each difference is set back to.

    Returns:
        ``(log_growth, coefficients)``: ``log_growth[i] = ln(R_ii / d0)``, how much the i-th direction grew since the
        last renormalisation (its Gram-Schmidt component, the diagonal of R made positive); ``coefficients`` the
        ``(k, k)`` matrix ``C = d0 R^-1`` with ``differences @ C = d0 Q``: applied to the twins' states (weights and
        optimizer state alike, which the same linear map carries) it renormalises them.

    >>> growth, c = orthonormalise(np.array([[2.0, 0.0], [0.0, 0.5]]), 1.0)
    >>> np.round(growth, 6).tolist(), np.round(np.array([[2.0, 0.0], [0.0, 0.5]]) @ c, 6).tolist()
    ([0.693147, -0.693147], [[1.0, 0.0], [0.0, 1.0]])
    """
    differences = np.asarray(differences, dtype=np.float64)
    _q, r = np.linalg.qr(differences)
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    r = r * signs[:, None]  # R with a positive diagonal (Q's columns flipped to match)
    with np.errstate(divide="ignore"):
        growth = np.log(np.abs(np.diag(r)) / d0)
    coefficients = d0 * np.linalg.inv(r) if np.all(np.diag(r) > 0) else np.full((r.shape[0],) * 2, np.nan)
    return growth, coefficients


def lyapunov_window(log_growth: np.ndarray, epochs: int) -> np.ndarray:
    """The finite-time Lyapunov exponents of one window: ``ln(R_ii / d0) / T`` per epoch.

    >>> lyapunov_window(np.array([2.0, -1.0]), 4).tolist()
    [0.5, -0.25]
    """
    if epochs <= 0:
        raise ValueError(f"a window spans at least one epoch, got {epochs}")
    return np.asarray(log_growth, dtype=np.float64) / epochs


def early_index(epochs: int, fraction: float = 0.1) -> int:
    """The epoch (0-based) that ends the first ``fraction`` of ``epochs``: where the report reads "early" lambda.

    >>> early_index(1000), early_index(30), early_index(5)
    (99, 2, 0)
    """
    return max(0, math.ceil(fraction * epochs) - 1)


def early_mean(epochs: np.ndarray, values: np.ndarray, total_epochs: int, fraction: float = 0.1) -> float:
    """The mean of a per-window series over the windows that end within the first ``fraction`` of the epochs (the
    report's "early" finite-time exponent: the exponent of that span, by Benettin's method); NaN when none does.

    >>> early_mean(np.array([9, 19, 29]), np.array([1.0, 3.0, 10.0]), 200)
    2.0
    """
    epochs, values = np.asarray(epochs), np.asarray(values, dtype=np.float64)
    chosen = values[(epochs <= early_index(total_epochs, fraction)) & np.isfinite(values)]
    return float(chosen.mean()) if len(chosen) else math.nan
