"""Which neurons a recycling policy resets: pure functions from the recorder's per-neuron statistics to choices, each
written from its reference and tested against it (docs/recycling.md lists every deviation).

- **ReDo** (Sokar et al. 2023; google/dopamine ``labs/redo/weight_recyclers.py``, ``estimate_neuron_score`` and
  ``NeuronRecycler._score2mask``): a neuron's score is its mean ``|h|`` over its layer's mean score (+ 1e-9); a
  neuron whose score is at most tau is reset. Ours reads ``E relu(output)`` over the samples since the previous
  snapshot (``act_relu_mean``), the reference one batch's activations.
- **Continual backprop** (Dohare et al. 2024; shibhansh/loss-of-plasticity ``lop/algos/gnt.py``, ``GnT`` with
  ``util_type="contribution"``, ``accumulate=True`` as ``cbp_linear.py`` does): a running utility
  ``u <- eta u + (1 - eta) |h| mean_k |w_out,k|``, bias-corrected by ``1 - eta^age``; units older than a maturity
  threshold are eligible, and ``rho`` of them per step (fractions accumulated) with the lowest utility are replaced.
  Ours updates the utility once per snapshot with ``eta^steps`` for the steps since the previous one
  (:class:`ContributionUtility`).
- **Shrink and perturb** (Ash & Adams 2020): every weight and bias of the watched layers ``<- shrink * it + noise *
  a fresh draw of the layer's initialisation`` every period.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .fluctuation import DORMANT_EPSILON

__all__ = ["redo_scores", "redo_choice", "ContributionUtility"]


def redo_scores(act_relu_mean: np.ndarray) -> np.ndarray:
    """ReDo's score of each neuron of a layer: ``E|h_i| / (mean_k E|h_k| + 1e-9)``; NaN where a neuron saw no sample.

    >>> redo_scores(np.array([0.0, 1.0, 2.0, 5.0])).round(6).tolist()
    [0.0, 0.5, 1.0, 2.5]
    """
    values = np.asarray(act_relu_mean, dtype=np.float64)
    finite = np.isfinite(values)
    mean = values[finite].mean() if finite.any() else np.nan
    return values / (mean + DORMANT_EPSILON)


def redo_choice(act_relu_mean: np.ndarray, tau: float) -> np.ndarray:
    """The neurons ReDo resets: score at most ``tau`` (``tau = 0``: no activity at all); none without a score.

    >>> redo_choice(np.array([0.0, 0.1, 1.0, 2.9]), 0.1).tolist(), redo_choice(np.array([0.0, 1.0]), 0.0).tolist()
    ([True, True, False, False], [True, False])
    """
    scores = redo_scores(act_relu_mean)
    return np.isfinite(scores) & (scores <= tau)


@dataclass
class ContributionUtility:
    """Continual backprop's state for one layer's units: running utility, running mean activation, ages in optimizer
    steps, and the fraction of a replacement carried over.

    >>> u = ContributionUtility.of(3)
    >>> u.update(np.array([1.0, 2.0, 0.5]), np.array([0.5, 1.0, 0.25]), steps=1, decay=0.5)
    >>> u.util.tolist(), u.corrected(0.5).tolist(), u.ages.tolist()
    ([0.5, 1.0, 0.25], [1.0, 2.0, 0.5], [1, 1, 1])
    """

    util: np.ndarray
    mean_act: np.ndarray
    ages: np.ndarray
    carried: float = 0.0
    restarted: list = field(default_factory=list)

    @classmethod
    def of(cls, units: int) -> ContributionUtility:
        return cls(np.zeros(units), np.zeros(units), np.zeros(units, dtype=np.int64))

    def update(self, contribution: np.ndarray, mean_act: np.ndarray, steps: int, decay: float) -> None:
        """``steps`` optimizer steps since the last update, each contributing ``contribution`` (``|h| mean|w_out|``)
        and the mean activation ``mean_act``: the reference's per-step recursion taken ``steps`` times at once."""
        if steps <= 0:
            return
        kept = decay**steps
        contribution = np.where(np.isfinite(contribution), contribution, 0.0)
        mean_act = np.where(np.isfinite(mean_act), mean_act, 0.0)
        self.util = kept * self.util + (1 - kept) * contribution
        self.mean_act = kept * self.mean_act + (1 - kept) * mean_act
        self.ages = self.ages + steps

    def corrected(self, decay: float) -> np.ndarray:
        """The utility with Adam-style bias correction, ``u / (1 - decay^age)`` (units of age 0: 0)."""
        correction = 1 - decay ** self.ages.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(correction > 0, self.util / correction, 0.0)

    def corrected_mean_act(self, decay: float) -> np.ndarray:
        correction = 1 - decay ** self.ages.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(correction > 0, self.mean_act / correction, 0.0)

    def select(self, rate: float, maturity: int, steps: int, decay: float) -> np.ndarray:
        """The units to replace now: of those older than ``maturity`` steps, ``rate`` per unit and step (over
        ``steps`` steps, fractions carried to the next call), those with the lowest corrected utility (ties: the
        lower index).

        >>> u = ContributionUtility(np.array([3.0, 1.0, 2.0, 0.5]), np.zeros(4), np.array([10, 10, 10, 1]))
        >>> u.select(rate=0.25, maturity=5, steps=1, decay=0.0).tolist(), u.carried
        ([], 0.75)
        >>> u.select(rate=0.25, maturity=5, steps=1, decay=0.0).tolist(), u.carried
        ([1], 0.5)
        """
        eligible = np.flatnonzero(self.ages > maturity)
        if len(eligible) == 0 or steps <= 0:
            return np.array([], dtype=np.int64)
        self.carried += rate * len(eligible) * steps
        count = int(self.carried)
        if count == 0:
            return np.array([], dtype=np.int64)
        self.carried -= count
        order = np.argsort(self.corrected(decay)[eligible], kind="stable")
        return np.sort(eligible[order[:count]])

    def restart(self, units: np.ndarray) -> None:
        """Replaced units start again: no utility, no mean activation, age 0."""
        self.util[units] = 0.0
        self.mean_act[units] = 0.0
        self.ages[units] = 0
