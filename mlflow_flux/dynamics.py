"""Training dynamics read from a run's histories: where a loss diverged, and the finite-time Lyapunov estimate of
two trajectories (the study's twins). Pure functions: numpy in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["DIVERGENCE_FACTOR", "Divergence", "divergence", "lyapunov", "early_index"]


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


def lyapunov(distance, initial, t):
    """The finite-time Lyapunov estimate ``ln(d(t) / d(0)) / t`` of two trajectories ``distance`` apart after ``t``
    epochs that started ``initial`` apart (arrays broadcast).

    Where the twins coincide (``d(t) = 0``, e.g. from identical weights) it is ``-inf``, never NaN; where they
    started identical but differ now it is ``+inf``. ``t`` must be positive.

    >>> float(lyapunov(np.e ** 2, 1.0, 2)), bool(lyapunov(0.5, 1.0, 1) == -np.log(2))
    (1.0, True)
    >>> lyapunov(np.array([0.0, 0.0, 1e-3]), np.array([0.0, 1e-6, 0.0]), 5).tolist()
    [-inf, -inf, inf]
    """
    distance = np.asarray(distance, dtype=np.float64)
    initial = np.asarray(initial, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if (t <= 0).any():
        raise ValueError(f"t must be positive, got {t!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.log(distance / initial) / t
    coincide = distance == 0
    return np.where(coincide, -np.inf, np.where((initial == 0) & (distance > 0), np.inf, rate))


def early_index(epochs: int, fraction: float = 0.1) -> int:
    """The epoch (0-based) that ends the first ``fraction`` of ``epochs``: where the report reads "early" lambda.

    >>> early_index(1000), early_index(30), early_index(5)
    (99, 2, 0)
    """
    return max(0, math.ceil(fraction * epochs) - 1)
