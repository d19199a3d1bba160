"""Pure comparisons over the loaded runs: one row per run, one row per group with its intervals, and the report's
claims and verdicts over epochs, computed once into a :class:`Report` that the document and the files are made from.

A diverged run (:func:`mlflow_flux.dynamics.divergence`) is left out of every group's means, intervals and verdicts,
and counted ("1 of 3 diverged, left out"); over epochs it counts until the epoch it diverged at.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import dynamics, fluctuation
from .claims import Claim, evaluate, matches_group
from .diagnosis import claim_notes
from .intervals import REPLICATE_COLUMN, column_interval, counted, mean_interval
from .loading import READINGS, RUN_GROUPS, Comparison, group_value

__all__ = ["Report", "interval", "run_table", "group_table", "counted", "analyse", "REPLICATE_COLUMN",
           "applicable_claims"]

# Per-run facts that are not averaged over a group: where a run diverged is a diagnosis, not a measure.
_NOT_AVERAGED = ("run_id", "name", REPLICATE_COLUMN, "final_epoch", "diverged_at", "loss_best_at", "units",
                 "relu_readings")
_SUMMARY_KEYS = ("participating", "participating_frac", "dead_frac", "sos_median", "bias_fluct_median",
                 "redo_dormant_frac", "redo_dormant0_frac", "grama_dormant_frac", "grama_ref_dormant_frac",
                 "reduced_width_0", "reduced_width_1e-3", "reduced_width_1e-2")
_OUTPUT_KEYS = ("participating_frac", "dead_frac", "redo_dormant_frac", "grama_dormant_frac")
interval = mean_interval  # the plain Student-t interval, under the name the report's users know


@dataclass
class Report:
    """What a report holds, where it went."""

    runs: pd.DataFrame
    groups: pd.DataFrame
    claims: list[Claim]
    skipped: list[tuple[str, str, str]]
    facet: str | None = None  # the parameters the groups and claims are split by (their column comes first)
    timeline: pd.DataFrame = field(default_factory=pd.DataFrame)  # verdicts over epochs (see .timeline)
    rankings: dict[str, dict] = field(default_factory=dict)  # per section's key: how its early value ranks losses
    run_id: str | None = None
    directory: Path | None = None
    files: list[str] = field(default_factory=list)


def run_table(comparison: Comparison) -> pd.DataFrame:
    """One row per run: the values of its final window, exactly as the recorder's metrics would give them, with the
    units its network-level fractions count, its output layer's own line, and where it diverged."""
    rows = []
    for run in comparison.runs:
        # A run shorter than one window has no summaries: its participation columns are NaN, its loss counts.
        last = run.summaries.iloc[-1] if run.measured else pd.Series(dtype=float)
        history = run.summaries.index if run.measured else run.loss.index
        last_epoch = int(history[-1]) if len(history) else -1
        row = {"run_id": run.run_id, "name": run.name, **({comparison.facet: run.facet} if comparison.facet else {}),
               comparison.group_by: group_value(run.group), REPLICATE_COLUMN: run.replicate,
               "epochs": int(run.params.get("epochs", last_epoch + 1)), "final_epoch": last_epoch,
               "loss_final": run.final_loss, "units": run.units, "relu_readings": run.layout.network_relu_readings}
        for key in _SUMMARY_KEYS:
            row[f"all/{key}"] = float(last.get(f"all/{key}", math.nan))
        row["all/frozen_frac"] = fluctuation.frozen_fraction(row["all/participating_frac"], row["all/dead_frac"])
        for _, column, _ in READINGS:  # participation under both thresholds, whatever the runs' tau_mode
            row.setdefault(column, float(last.get(column, run.readings.get(column, math.nan))))
        if run.output_layer is not None:
            for key in _OUTPUT_KEYS:
                row[f"output/{key}"] = float(last.get(f"{run.output_layer}/{key}", math.nan))
        diverged = dynamics.divergence(run.loss.index.to_numpy(), run.loss.to_numpy())
        row["loss_best"] = float(run.loss.min()) if len(run.loss) else math.nan
        row["loss_best_at"] = diverged.best_step if diverged else (int(run.loss.idxmin()) if len(run.loss) else -1)
        row["diverged_at"] = diverged.step if diverged else -1  # -1: did not diverge
        for layer in run.layers:
            row[f"{layer}/participating"] = float(last.get(f"{layer}/participating", math.nan))
            row[f"{layer}/reduced_width_1e-3"] = float(last.get(f"{layer}/reduced_width_1e-3", math.nan))
        rows.append(row)
    return pd.DataFrame(rows)


def group_table(runs: pd.DataFrame, group_by: str = RUN_GROUPS, facet: str | None = None) -> pd.DataFrame:
    """One row per value of ``group_by`` (in the order of ``runs``), per value of ``facet`` when given: ``n`` runs
    counted (``diverged`` left out of ``runs_total``), and for every measure its mean and 95% interval over them
    (``<column> ci_low`` / ``ci_high``: fractions inside [0, 1], losses above 0; :mod:`.intervals`)."""
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
        kept = counted(group)
        replicates = ",".join(str(r) for r in kept[REPLICATE_COLUMN] if str(r)) if REPLICATE_COLUMN in kept else ""
        row = {group_by: value, "replicates": replicates, "n": len(kept), "runs_total": len(group),
               "diverged": len(group) - len(kept)}
        units = float(kept["units"].median()) if "units" in kept and len(kept) else math.nan
        for column in numeric:
            mean, low, high = column_interval(column, kept[column].to_numpy(dtype=float), units)
            row[column] = mean
            row[f"{column} ci_low"], row[f"{column} ci_high"] = low, high
        rows.append(row)
    return pd.DataFrame(rows)


def applicable_claims(comparison: Comparison, groups: pd.DataFrame) -> list:
    """The declared claims these groups can test: a claim appears when its grouping and its groups do."""
    specs = []
    for spec in comparison.claims:
        key = spec.group_by or comparison.group_by
        if key != comparison.group_by or key not in groups.columns:
            continue
        named = [spec.subject] if spec.against is None else [spec.subject, spec.against]
        if all(matches_group(groups[key], value).any() for value in named):
            specs.append(spec)
    return specs


def analyse(comparison: Comparison) -> Report:
    """Every table, claim, verdict over epochs and ranking the report shows, computed once."""
    from .timeline import early_ranking, verdicts_over_time

    runs = run_table(comparison)
    groups = group_table(runs, comparison.group_by, comparison.facet)
    specs = applicable_claims(comparison, groups)
    claims = []
    for facet in comparison.facets:  # one verdict per facet value: a claim may hold under one and not another
        facet_runs = runs[runs[comparison.facet] == facet] if comparison.facet else runs
        for spec in specs:
            claim = evaluate(spec, facet_runs, comparison.group_by)
            claims.append(dataclasses.replace(claim, facet=facet if len(comparison.facets) > 1 else "",
                                              notes=tuple(claim_notes(spec, facet_runs, comparison.group_by))))
    rankings = {section.key: early_ranking(comparison, section.key, section.early)
                for section in comparison.spec.sections if section.early is not None}
    return Report(runs=runs, groups=groups, claims=claims, skipped=comparison.skipped, facet=comparison.facet,
                  timeline=verdicts_over_time(comparison, specs),
                  rankings={key: value for key, value in rankings.items() if value is not None})
