"""The report's statistics, chosen for what a study has: three seeds or so per group, fractions of a few hundred units,
runs that share their start across groups (paired by seed), and runs that diverge. Pure functions: numbers in,
numbers out. docs/metrics.md ("Intervals and verdicts") says why each is what it is.

- **Displayed intervals of a fraction** (:func:`fraction_interval`): a Student-t interval over the runs on the logit
  of ``(p N + 0.5) / (N + 1)`` (N: the units counted), mapped back: always inside [0, 1], defined at 0% and 100%.
- **Displayed intervals of a positive measure** (a loss, :func:`positive_interval`): the t-interval on its log,
  mapped back: never below 0.
- **Verdicts** (:func:`difference`): a paired t-interval on the per-replicate differences (df = n - 1) where the two
  groups share replicates (same seed: same initial weights), else Welch's interval on the difference of means; the
  claim agrees when the interval excludes 0 on the claimed side, disagrees on the other, is inconclusive otherwise,
  and reads "inconclusive (n = 1)" with fewer than two pairs (or runs a side).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CONFIDENCE", "t_quantile", "mean_interval", "fraction_interval", "positive_interval", "Difference",
           "difference", "verdict_of", "is_fraction", "column_interval", "counted", "REPLICATE_COLUMN"]

CONFIDENCE = 0.95
REPLICATE_COLUMN = "replicate"  # the run table's column of the spec's replicate key's value (a seed)


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """Student's t quantile for a two-sided interval (scipy, imported only when an interval is drawn).

    >>> round(t_quantile(2), 4), round(t_quantile(1), 3)
    (4.3027, 12.706)
    """
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, df=df))


def _finite(values: Sequence[float]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval over the finite values; NaN bounds with fewer than two.

    >>> mean, low, high = mean_interval([1.0, 3.0])
    >>> mean, round(high - mean, 3)
    (2.0, 12.706)
    """
    values = _finite(values)
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = t_quantile(len(values) - 1, confidence) * float(values.std(ddof=1)) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def fraction_interval(values: Sequence[float], units: int, confidence: float = CONFIDENCE
                      ) -> tuple[float, float, float]:
    """Mean of fractions (each of ``units`` units) and an interval inside [0, 1]: the t-interval of the logits of
    ``(p units + 0.5) / (units + 1)``, mapped back through the same correction.

    >>> mean, low, high = fraction_interval([0.0, 0.0, 0.0], 100)
    >>> mean, low, high
    (0.0, 0.0, 0.0)
    >>> mean, low, high = fraction_interval([0.2, 0.3, 0.9], 100)
    >>> 0.0 <= low < mean < high <= 1.0
    True
    """
    values = _finite(values)
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2 or units < 1:
        return mean, math.nan, math.nan
    corrected = (values * units + 0.5) / (units + 1)
    logits = np.log(corrected / (1 - corrected))
    _, low, high = mean_interval(logits, confidence)

    def back(logit: float) -> float:
        p = 1 / (1 + math.exp(-logit))
        return min(1.0, max(0.0, (p * (units + 1) - 0.5) / units))

    return mean, back(low), back(high)


def positive_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean of positive values (a loss) and the t-interval of their logs, mapped back (never below 0); a value that
    is not positive falls back to the plain interval.

    >>> mean, low, high = positive_interval([1.0, 10.0, 100.0])
    >>> mean, 0 < low < 10 < high
    (37.0, True)
    """
    values = _finite(values)
    if len(values) and (values <= 0).any():
        return mean_interval(values, confidence)
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    _, low, high = mean_interval(np.log(values), confidence)
    return mean, (math.exp(low) if np.isfinite(low) else math.nan), (math.exp(high) if np.isfinite(high) else math.nan)


@dataclass(frozen=True)
class Difference:
    """``subject - rival``: its mean, its interval, how many pairs (or runs a side) and whether paired."""

    mean: float
    low: float
    high: float
    n: int
    paired: bool

    def describe(self, percent: bool = False) -> str:
        def fmt(v: float) -> str:
            return f"{v:+.1%}" if percent else f"{v:+.4g}"

        how = f"paired, n = {self.n}" if self.paired else f"unpaired, n = {self.n}"
        if not np.isfinite(self.low):
            return f"difference {fmt(self.mean)} ({how}: no interval)"
        return f"difference {fmt(self.mean)} [{fmt(self.low)}, {fmt(self.high)}] ({how})"


def difference(subject: Mapping[str, float], rival: Mapping[str, float], confidence: float = CONFIDENCE,
               paired: bool = True) -> Difference:
    """The difference ``subject - rival`` of two groups' values, keyed by replicate (a seed).

    Paired (the default, where the groups share replicates): the mean of the per-replicate differences over the
    replicates both hold and its t-interval, df = n - 1. Otherwise (``paired=False``, or fewer than two shared
    replicates while each side has two runs) Welch's interval on the difference of the means.

    >>> d = difference({"0": 0.8, "1": 0.7, "2": 0.9}, {"0": 0.3, "1": 0.4, "2": 0.2})
    >>> round(d.mean, 4), round(d.low, 4), round(d.high, 4), d.n, d.paired
    (0.5, 0.0032, 0.9968, 3, True)
    """
    a = {k: float(v) for k, v in subject.items() if v is not None and np.isfinite(v)}
    b = {k: float(v) for k, v in rival.items() if v is not None and np.isfinite(v)}
    shared = [k for k in a if k in b]
    if paired and (len(shared) >= 2 or min(len(a), len(b)) < 2):
        diffs = np.array([a[k] - b[k] for k in shared])
        if len(diffs) == 0:
            return Difference(math.nan, math.nan, math.nan, 0, True)
        mean, low, high = mean_interval(diffs, confidence)
        return Difference(mean, low, high, len(diffs), True)
    x, y = np.array(list(a.values())), np.array(list(b.values()))
    n = min(len(x), len(y))
    if n == 0:
        return Difference(math.nan, math.nan, math.nan, 0, False)
    mean = float(x.mean() - y.mean())
    if n < 2:
        return Difference(mean, math.nan, math.nan, n, False)
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return Difference(mean, mean, mean, n, False)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    half = t_quantile(df, confidence) * se
    return Difference(mean, mean - half, mean + half, n, False)


def verdict_of(diff: Difference, better: str) -> str:
    """agrees when the interval of ``subject - rival`` lies on the claimed side of 0 (``better`` ``"lower"``: below),
    disagrees when it lies on the other, inconclusive when it holds 0; with fewer than two pairs, ``inconclusive (n =
    1)``.

    >>> wide, one = Difference(0.5, -0.1, 1.1, 3, True), Difference(0.5, math.nan, math.nan, 1, True)
    >>> clear = Difference(0.5, 0.1, 0.9, 3, True)
    >>> verdict_of(clear, "higher"), verdict_of(clear, "lower")
    ('agrees', 'disagrees')
    >>> verdict_of(wide, "higher"), verdict_of(one, "higher")
    ('inconclusive', 'inconclusive (n = 1)')
    """
    if diff.n < 2 or not np.isfinite(diff.low):
        return f"inconclusive (n = {diff.n})"
    if diff.low == diff.high == 0:
        return "inconclusive"
    if diff.low > 0 or diff.high < 0:
        wins = diff.low > 0 if better == "higher" else diff.high < 0
        return "agrees" if wins else "disagrees"
    return "inconclusive"


def is_fraction(column: str) -> bool:
    """Whether a run-table column holds fractions of units (``..._frac``).

    >>> is_fraction("all/dead_frac"), is_fraction("all/participating_frac_relative"), is_fraction("loss_final")
    (True, True, False)
    """
    return column.endswith("_frac") or "_frac_" in column


def column_interval(column: str, values: Sequence[float], units: float) -> tuple[float, float, float]:
    """The displayed mean and interval of a run-table column: a fraction of ``units`` units inside [0, 1], a loss
    above 0, anything else the plain t-interval."""
    if is_fraction(column):
        return fraction_interval(values, int(units) if np.isfinite(units) else 0)
    if column.startswith("loss"):
        return positive_interval(values)
    return mean_interval(values)


def counted(runs):
    """The runs of a run table that count in means and verdicts: those that did not diverge."""
    return runs[runs["diverged_at"] < 0] if "diverged_at" in runs else runs
