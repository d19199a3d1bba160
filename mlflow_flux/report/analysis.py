"""Pure comparisons over the loaded runs: one row per run, one row per group with 95% intervals over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .. import dynamics, fluctuation
from .loading import READINGS, RUN_GROUPS, Comparison, group_value

__all__ = ["interval", "run_table", "group_table"]

# Columns whose interval bounds the claims quote.
_INTERVAL_COLUMNS = ("loss_final", "all/participating_frac", "all/dead_frac", "all/frozen_frac", "all/participating",
                     *(column for _, column, _ in READINGS))
# Per-run facts that are not averaged over a group: where a run diverged is a diagnosis, not a measure.
_NOT_AVERAGED = ("run_id", "name", "seed", "final_epoch", "diverged_at", "loss_best_at")


def interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval over the finite values; NaN bounds with fewer than two.

    >>> mean, low, high = interval([1.0, 3.0])
    >>> mean, round(high - mean, 3)
    (2.0, 12.706)
    """
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    t = float(stats.t.ppf(0.5 + confidence / 2, df=len(values) - 1))
    half = t * float(values.std(ddof=1)) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def run_table(comparison: Comparison) -> pd.DataFrame:
    """One row per run: the values of its final window, exactly as the recorder's metrics would give them."""
    rows = []
    for run in comparison.runs:
        # A run shorter than one window has no summaries: its participation columns are NaN, its loss counts.
        last = run.summaries.iloc[-1] if run.measured else pd.Series(dtype=float)
        history = run.summaries.index if run.measured else run.loss.index
        last_epoch = int(history[-1]) if len(history) else -1
        row = {"run_id": run.run_id, "name": run.name, **({comparison.facet: run.facet} if comparison.facet else {}),
               comparison.group_by: group_value(run.group), "seed": run.seed,
               "epochs": int(run.params.get("epochs", last_epoch + 1)),
               "final_epoch": last_epoch, "loss_final": run.final_loss}
        for key in ("participating", "participating_frac", "dead_frac", "sos_median", "bias_fluct_median",
                    "dormant_frac", "dormant0_frac", "grama_frac"):
            row[f"all/{key}"] = float(last.get(f"all/{key}", math.nan))
        row["all/frozen_frac"] = fluctuation.frozen_fraction(row["all/participating_frac"], row["all/dead_frac"])
        for _, column, _ in READINGS:  # participation under both thresholds, whatever the runs' tau_mode
            row.setdefault(column, run.readings.get(column, math.nan))
        diverged = dynamics.divergence(run.loss.index.to_numpy(), run.loss.to_numpy())
        row["loss_best"] = float(run.loss.min()) if len(run.loss) else math.nan
        row["loss_best_at"] = diverged.best_step if diverged else (int(run.loss.idxmin()) if len(run.loss) else -1)
        row["diverged_at"] = diverged.step if diverged else -1  # -1: did not diverge
        for layer in run.layers:
            row[f"{layer}/participating"] = float(last.get(f"{layer}/participating", math.nan))
        rows.append(row)
    return pd.DataFrame(rows)


def group_table(runs: pd.DataFrame, group_by: str = RUN_GROUPS, facet: str | None = None) -> pd.DataFrame:
    """One row per value of ``group_by`` (in the order of ``runs``), per value of ``facet`` when given (the study's
    optimizer): means and 95% intervals over its runs."""
    if facet is not None and facet in runs.columns:
        parts = []
        for value, subset in runs.groupby(facet, sort=False):
            part = group_table(subset.drop(columns=[facet]), group_by)
            part.insert(0, facet, value)
            parts.append(part)
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    rows = []
    numeric = [c for c in runs.columns
               if c not in (*_NOT_AVERAGED, group_by) and pd.api.types.is_numeric_dtype(runs[c])]
    for value, group in runs.groupby(group_by, sort=False):
        row = {group_by: value, "seeds": ",".join(map(str, group["seed"])), "n": len(group),
               "diverged": int((group["diverged_at"] >= 0).sum()) if "diverged_at" in group else 0}
        for column in numeric:
            mean, low, high = interval(group[column].to_numpy(dtype=float))
            row[column] = mean
            if column in _INTERVAL_COLUMNS:
                row[f"{column} ci_low"], row[f"{column} ci_high"] = low, high
        rows.append(row)
    return pd.DataFrame(rows)
