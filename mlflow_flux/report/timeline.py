"""Verdicts over time: each claim judged again at a series of epochs, per facet value (the study's optimizer), from
what the report already
loaded (each run's loss history and the summaries recomputed from its trace), with no re-training.

At epoch ``e`` a run counts with its training loss at ``e`` (the loss claim: there is no final evaluation mid-run)
and the summaries of its window ending at ``e``; the groups' means and 95% intervals over seeds and the verdicts
are those of the final report (:mod:`.analysis`, :mod:`.claims`), so one rule decides at every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .. import dynamics, fluctuation
from .analysis import group_table
from .claims import ClaimSpec, evaluate
from .loading import Comparison, RunData, group_value

__all__ = ["VERDICT_EVERY", "verdict_epochs", "verdicts_over_time", "where_claims_hold", "early_ranking"]

VERDICT_EVERY = 50  # epochs between two verdicts (and the last epoch all runs reached)
_SUMMARY_COLUMNS = ("participating_frac", "dead_frac", "participating")


def verdict_epochs(runs: Sequence[RunData], every: int = VERDICT_EVERY) -> list[int]:
    """Epochs at which every run has both a loss and a full window: every ``every``-th, and the last common one."""
    common = None
    for run in runs:
        have = set(run.summaries.index) & set(run.loss.index)
        common = have if common is None else common & have
    if not common:
        return []
    last = max(common)
    picked = [e for e in sorted(common) if (e + 1) % every == 0]
    return sorted(set(picked) | {last})


def _runs_at(comparison: Comparison, runs: Sequence[RunData], epoch: int) -> pd.DataFrame:
    rows = []
    for run in runs:
        summary = run.summaries.loc[epoch]
        row = {comparison.group_by: group_value(run.group), "seed": run.seed, "loss_final": float(run.loss.loc[epoch]),
               "diverged_at": -1, "loss_best_at": -1}
        for key in _SUMMARY_COLUMNS:
            row[f"all/{key}"] = float(summary[f"all/{key}"])
        row["all/frozen_frac"] = fluctuation.frozen_fraction(row["all/participating_frac"], row["all/dead_frac"])
        rows.append(row)
    return pd.DataFrame(rows)


def verdicts_over_time(comparison: Comparison, specs: Sequence[ClaimSpec],
                       every: int = VERDICT_EVERY) -> pd.DataFrame:
    """One row per (claim, facet value, epoch): the verdict, the subject's and the rival's group, mean and 95%
    interval, and the runs behind each; the facet's column is named after it (``optimizer`` for the study), else
    ``facet``. Each facet value's runs are read at the epochs they all reached (a run logged by other steps than its
    trace's epochs has no common epoch: its facet value gets no rows)."""
    rows = []
    column = comparison.facet or "facet"
    for facet in comparison.facets if specs else ():  # no claim to judge: no group tables to build
        runs = [run for run in comparison.runs if run.facet == facet and run.measured]
        for epoch in verdict_epochs(runs, every):
            groups = group_table(_runs_at(comparison, runs, epoch), comparison.group_by)
            for spec in specs:
                claim = evaluate(spec, groups, comparison.group_by)
                rows.append({"claim": spec.name, column: facet or "all runs", "epoch": epoch,
                             "verdict": claim.verdict, **claim.numbers})
    return pd.DataFrame(rows)


def _ranges(epochs: list[int]) -> str:
    """``50-150, 300`` from consecutive verdict epochs (consecutive in the table's own grid)."""
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in epochs)


def where_claims_hold(table: pd.DataFrame, texts: dict[str, str]) -> list[str]:
    """Plain sentences: per claim and facet value, the epochs at which it agrees, disagrees or is inconclusive."""
    lines = []
    if table.empty:
        return lines
    facet_column = table.columns[1]  # verdicts_over_time's second column names the facet
    for (claim, optimizer), rows in table.groupby(["claim", facet_column], sort=False):
        runs: dict[str, list[list[int]]] = {}
        previous = None
        for epoch, verdict in zip(rows["epoch"], rows["verdict"]):
            if verdict == previous:
                runs[verdict][-1][1] = epoch
            else:
                runs.setdefault(verdict, []).append([epoch, epoch])
            previous = verdict
        parts = [f"{verdict} at epochs {_ranges(spans)}" for verdict, spans in runs.items()]
        final = rows.iloc[-1]["verdict"]
        lines.append(f"({claim}) {texts.get(claim, '')} under {optimizer}: " + "; ".join(parts)
                     + f"; at the last epoch ({int(rows.iloc[-1]['epoch'])}): {final}")
    return lines


def early_ranking(comparison: Comparison, key: str, fraction: float = 0.1) -> dict | None:
    """How well a per-epoch metric early in training ranks the runs' final losses: Spearman's rho over the runs that
    logged ``key`` (the study's twins: early lambda, the twin's Lyapunov estimate).

    Early is the end of the first ``fraction`` of the epochs. None with fewer than three such runs.
    """
    pairs = []
    for run in comparison.runs:
        series = run.series.get(key)
        if series is None or series.empty:
            continue
        epochs = int(run.params.get("epochs", series.index[-1] + 1))
        early = dynamics.early_index(epochs, fraction)
        if early in series.index and math.isfinite(run.final_loss):
            pairs.append((run.name, float(series.loc[early]), run.final_loss, early))
    if len(pairs) < 3:
        return None
    value = np.array([p[1] for p in pairs])
    loss = np.array([p[2] for p in pairs])
    if not np.isfinite(value).all() or np.ptp(value) == 0 or np.ptp(loss) == 0:
        rho, p_value = math.nan, math.nan  # ties everywhere (e.g. identical twins): no ranking to read
    else:
        result = stats.spearmanr(value, loss)
        rho, p_value = float(result.statistic), float(result.pvalue)
    return {"rho": rho, "p": p_value, "runs": len(pairs), "early_epoch": pairs[0][3],
            "table": pd.DataFrame(pairs, columns=["run", f"early {key}", "final loss", "epoch"])}
