"""Verdicts over time: each claim judged again at a series of epochs, per facet value (the study's optimizer), from
what the report already
loaded (each run's loss history and the summaries recomputed from its trace), with no re-training.

At epoch ``e`` a run counts with its training loss at ``e`` (the loss claim: there is no final evaluation mid-run)
and the summaries of its window ending at ``e``; the groups' means and 95% intervals over replicates and the verdicts
are those of the final report (:mod:`.analysis`, :mod:`.claims`), so one rule decides at every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
from scipy import stats

from .. import dynamics, fluctuation
from .claims import ClaimSpec, evaluate
from .intervals import REPLICATE_COLUMN
from .loading import Comparison, RunData, group_value

__all__ = ["VERDICT_EVERY", "MAIN_READING", "verdict_epochs", "verdicts_over_time", "where_claims_hold",
           "early_ranking"]

VERDICT_EVERY = 50  # epochs between two verdicts (and the last epoch all runs reached)
MAIN_READING = ""  # the reading column's value for a claim's own measure


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


def _columns(specs: Sequence[ClaimSpec]) -> list[str]:
    """Every summary column the claims read, their other readings' included."""
    columns = []
    for spec in specs:
        columns += [spec.metric, *(column for _, column, _ in spec.readings), *(column for column, _ in spec.also)]
    return [c for c in dict.fromkeys(columns) if c.startswith("all/")]


def _runs_at(comparison: Comparison, runs: Sequence[RunData], epoch: int, columns: list[str],
             diverged: dict[str, int]) -> pd.DataFrame:
    rows = []
    for run in runs:
        summary = run.summaries.loc[epoch]
        # A run counts until the epoch it diverged at; from then on it is left out, as in the final verdict.
        row = {comparison.group_by: group_value(run.group), REPLICATE_COLUMN: run.replicate,
               "loss_final": float(run.loss.loc[epoch]), "units": run.units,
               "relu_readings": run.layout.network_relu_readings,
               "diverged_at": diverged[run.run_id] if 0 <= diverged[run.run_id] <= epoch else -1}
        for key in columns:
            if key in summary:
                row[key] = float(summary[key])
        if "all/participating_frac" in row and "all/dead_frac" in row:
            row["all/frozen_frac"] = fluctuation.frozen_fraction(row["all/participating_frac"], row["all/dead_frac"])
        rows.append(row)
    return pd.DataFrame(rows)


def verdicts_over_time(comparison: Comparison, specs: Sequence[ClaimSpec],
                       every: int = VERDICT_EVERY) -> pd.DataFrame:
    """One row per (claim, reading, facet value, epoch): the verdict, both sides' group, display mean, interval and
    runs, and the paired difference's; the reading is ``""`` for the claim's own measure, else its label; the facet's
    column is named after it (``optimizer`` for the study), else ``facet``. Each facet value's runs are read at the
    epochs they all reached (a run logged by other steps than its trace's epochs has no common epoch: its facet value
    gets no rows)."""
    rows = []
    column = comparison.facet or "facet"
    columns = _columns(specs)
    diverged = {}
    for run in comparison.runs:
        found = dynamics.divergence(run.loss.index.to_numpy(), run.loss.to_numpy())
        diverged[run.run_id] = found.step if found else -1
    for facet in comparison.facets if specs else ():  # no claim to judge: no tables to build
        runs = [run for run in comparison.runs if run.facet == facet and run.measured]
        for epoch in verdict_epochs(runs, every):
            table = _runs_at(comparison, runs, epoch, columns, diverged)
            for spec in specs:
                judged = [(MAIN_READING, replace(spec, readings=()))]
                judged += [(label, replace(spec, metric=reading_column, better=better, label=label, also=(),
                                           readings=())) for label, reading_column, better in spec.readings]
                for label, reading in judged:
                    claim = evaluate(reading, table, comparison.group_by)
                    rows.append({"claim": spec.name, "reading": label, column: facet or "all runs", "epoch": epoch,
                                 "verdict": claim.verdict, **claim.numbers})
    return pd.DataFrame(rows)


def _ranges(epochs: list[int]) -> str:
    """``50-150, 300`` from consecutive verdict epochs (consecutive in the table's own grid)."""
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in epochs)


def where_claims_hold(table: pd.DataFrame, texts: dict[str, str], reading: str | None = MAIN_READING) -> list[str]:
    """Plain sentences: per claim and facet value, the epochs at which it agrees, disagrees or is inconclusive, under
    ``reading`` (``""``: the claim's own measure; None: every reading, each named)."""
    lines = []
    if table.empty:
        return lines
    facet_column = table.columns[2]  # verdicts_over_time's third column names the facet
    chosen = table if reading is None else table[table["reading"] == reading]
    for (claim, label, facet), rows in chosen.groupby(["claim", "reading", facet_column], sort=False):
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
        under = f" ({label})" if label else ""
        lines.append(f"({claim}) {texts.get(claim, '')}{under} under {facet}: " + "; ".join(parts)
                     + f"; at the last epoch ({int(rows.iloc[-1]['epoch'])}): {final}")
    return lines


def early_ranking(comparison: Comparison, key: str, fraction: float = 0.1) -> dict | None:
    """How well a per-window metric early in training ranks the runs' final losses: Spearman's rho over the runs that
    logged ``key`` (the study's twins: the largest finite-time Lyapunov exponent).

    Early is fixed in advance, not chosen after seeing the runs: the mean of the values logged at windows ending
    within the first ``fraction`` of the epochs (:func:`~mlflow_flux.dynamics.early_mean`; by Benettin's method the
    exponent over that span). None with fewer than three such runs.
    """
    pairs = []
    for run in comparison.runs:
        series = run.series.get(key)
        if series is None or series.empty:
            continue
        epochs = int(run.params.get("epochs", series.index[-1] + 1))
        early = dynamics.early_mean(series.index.to_numpy(), series.to_numpy(), epochs, fraction)
        if math.isfinite(early) and math.isfinite(run.final_loss):
            pairs.append((run.name, early, run.final_loss, dynamics.early_index(epochs, fraction)))
    if len(pairs) < 3:
        return None
    value = np.array([p[1] for p in pairs])
    loss = np.array([p[2] for p in pairs])
    if np.ptp(value) == 0 or np.ptp(loss) == 0:
        rho, p_value = math.nan, math.nan  # ties everywhere (e.g. identical twins): no ranking to read
    else:
        result = stats.spearmanr(value, loss)
        rho, p_value = float(result.statistic), float(result.pvalue)
    return {"rho": rho, "p": p_value, "runs": len(pairs),
            "early": f"its mean over the windows ending by epoch {pairs[0][3]}, the first {fraction:.0%} of training",
            "table": pd.DataFrame(pairs, columns=["run", f"early {key}", "final loss", "epoch"])}
