"""Where a report goes: its own MLflow run (tagged ``mlflow_flux.role=report``, a child of its sweep), ended by the one
lifecycle every run has, and the explorer page over every compared run."""

from __future__ import annotations

import os
from pathlib import Path

from ..traces import runs as flux_runs
from ..traces.lifecycle import ending
from ..traces.mlflow_adapter import PARENT_RUN_ID_TAG, RUN_NAME_TAG
from ..traces.names import sanitize_key
from .analysis import Report
from .document import comparison_made, label
from .loading import Comparison
from .render import REPORT_DIR

__all__ = ["log_report_run", "explorer_page"]


def explorer_page(comparison: Comparison) -> str:
    """The explorer page over every compared run, grouped as the tables group them (their traces read again, all
    columns, a chunk of snapshots at a time)."""
    from mlflow.tracking import MlflowClient

    from ..explorer import Budget, pool_run, render_page
    from ..explorer.runs import pair_budget, run_input
    from ..traces.reader import opened_trace

    client = MlflowClient()
    labels = [label(comparison, run.group, run.facet) for run in comparison.runs]
    # Twice one run's budget over all of them and their pairs (4x made a 10-run page 13.5 MB, past the ~10 MB the page
    # may reach), and fewer bins at least, so that many runs stay near that bound too.
    runs = [run.entity for run in comparison.runs]
    budget = Budget(values=2 * Budget().values // max(1, pair_budget(runs)), rows=256, min_bins=8)
    pooled = []
    for run, name in zip(comparison.runs, labels):
        with opened_trace(client, run.entity) as source:
            given = run_input(client, run.entity, source, name)
            given.window, given.tau = run.window, run.thresholds
            pooled.append(pool_run(given, budget))
    groups = [(name, [i for i, other in enumerate(labels) if other == name]) for name in dict.fromkeys(labels)]
    return render_page(pooled, f"mlflow-flux explorer: {comparison.selection}",
                       f"{len(pooled)} runs at {comparison.tracking_uri}, {comparison_made(comparison)}", groups)


def _run_made_for_us(client) -> str | None:
    """The run `mlflow run . -e compare` created for this process, if that is where we are."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    run = client.get_run(run_id)
    # Inside `mlflow run .` (the sweep) MLFLOW_RUN_ID is the sweep's own run: the report gets a run of its own.
    if run.info.status == "RUNNING" and run.data.tags.get(flux_runs.ROLE_TAG) in (None, "report"):
        return run_id
    return None


def _report_name(client, comparison: Comparison) -> str:
    """``report of <sweep name>``, or of the selection when the runs are no sweep's."""
    if comparison.sweep_id:
        name = client.get_run(comparison.sweep_id).data.tags.get(RUN_NAME_TAG) or comparison.sweep_id
    else:
        name = comparison.selection
    return f"report of {name}"[:250]


def log_report_run(comparison: Comparison, report: Report, directory: Path) -> str:
    """Log the report's files into its run (created, or the one ``mlflow run`` made for us), ended through
    :func:`~mlflow_flux.traces.lifecycle.ending` like every run."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment_id = client.get_run(comparison.runs[0].run_id).info.experiment_id
    tags = flux_runs.flux_tags("report", comparison.sweep_id)
    if comparison.sweep_id:
        tags[PARENT_RUN_ID_TAG] = comparison.sweep_id  # the report sits under its sweep in the UI
    tags[RUN_NAME_TAG] = _report_name(client, comparison)
    run_id = _run_made_for_us(client)
    if run_id is None:
        run_id = flux_runs.create_run(client, experiment_id, tags, run_name=tags[RUN_NAME_TAG]).info.run_id
    else:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    with ending(client, run_id):
        verdicts = [RunTag(sanitize_key(c.tag), c.verdict) for c in report.claims]
        client.log_batch(run_id, params=[Param("selection", comparison.selection[:500]),
                                         Param("group_by", comparison.group_by),
                                         Param("runs_compared", str(len(comparison.runs)))],
                         tags=verdicts,
                         metrics=[Metric("report/skipped_runs", len(comparison.skipped), 0, 0)])
        client.log_artifacts(run_id, str(directory), REPORT_DIR)
    return run_id
