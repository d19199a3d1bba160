"""``mlflow_flux.explore(run_ids)``: the explorer page of any runs that hold a trace, on any tracking server, including
runs recorded before the explorer existed. Traces are read like the report reads them (in place, or through ranged
reads); losses are the runs' own loss metrics.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InvalidParameter, NoRunsMatch
from ..settings import RecorderSettings, recorder_setting_of, run_thresholds
from ..traces import mlflow_adapter
from ..traces.reader import opened_trace, run_resets
from ..traces.runs import FINGERPRINT_TAG
from ..traces.server import check_reachable
from .build import Budget, PooledRun, RunInput, pool_run
from .page import render_page

__all__ = ["explore", "run_input", "loss_histories", "pair_budget", "page_budget", "pool_runs", "MAX_LOSS_KEYS"]

MAX_LOSS_KEYS = 2  # loss curves drawn per run: a history key first, then any other


def loss_histories(client, run) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The run's loss metrics (keys with ``loss`` in them) that have a history, longest first."""
    keys = [key for key in run.data.metrics if re.search(r"loss", key, re.I)]
    histories = {}
    for key in keys:
        points = sorted((m.step, mlflow_adapter.metric_value(m.value)) for m in client.get_metric_history(
            run.info.run_id, key))
        if len(points) > 1:
            histories[key] = (np.array([p[0] for p in points]), np.array([p[1] for p in points], dtype=np.float32))
    ordered = sorted(histories.items(), key=lambda item: -len(item[1][0]))
    return dict(ordered[:MAX_LOSS_KEYS])


def run_input(client, run, trace, group: str = "") -> RunInput:
    """A run as the explorer reads it: its name, settings (as it logged them), losses, the fingerprint of its
    initial weights and the neurons it reset."""
    params = run.data.params
    window = int(recorder_setting_of(params, "window") or RecorderSettings.spec("window").default)
    thresholds = run_thresholds(params)
    name = run.data.tags.get(mlflow_adapter.RUN_NAME_TAG, run.info.run_id[:8])
    return RunInput(run.info.run_id, name, trace, window, thresholds, group, loss_histories(client, run),
                    run.data.tags.get(FINGERPRINT_TAG, ""), run_resets(client, run))


def page_budget(runs: Sequence) -> Budget:
    """What ``explore()`` pools ``runs`` (MLflow runs) within: one run's whole budget, or four runs' over all of them
    (their pairs' differences included: runs that share their start count twice)."""
    if len(runs) == 1:
        return Budget()
    return Budget(values=4 * Budget().values // pair_budget(runs), rows=256)


def pair_budget(runs: Sequence) -> int:
    """How many runs' worth of values a page holds: each run, and each run paired with an earlier one that shares
    its start (its differences are as many values)."""
    starts = [run.data.tags.get(FINGERPRINT_TAG) for run in runs]
    paired = sum(1 for i, start in enumerate(starts) if start and start in starts[:i])
    return len(runs) + paired


def pool_runs(client, runs: Sequence, groups: Sequence[str], budget: Budget) -> list[PooledRun]:
    """Every run's trace opened (in place, ranged, or downloaded) and pooled, one after the other."""
    pooled = []
    for run, group in zip(runs, groups):
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(opened_trace(client, run))
            pooled.append(pool_run(run_input(client, run, source, group), budget))
    return pooled


def explore(run_ids: str | Sequence[str], *, output: str | Path | None = None, group_by: str | None = None,
            tracking_uri: str | None = None) -> Path:
    """Write the explorer page of one or more runs that hold a trace. Runs that started from the same weights (equal
    fingerprints, as a sweep's variants of one seed) are paired neuron by neuron: one neuron's history in each, and
    the difference of the two, per neuron and bin; runs that did not are never paired, and the page says why.

    Args:
        run_ids: one run id, or several (their page shows them side by side).
        output: the page's path; default ``flux-explorer-<first run id>.html`` here.
        group_by: a parameter whose values group the runs (several runs); default: each run on its own.
        tracking_uri: the tracking server; default: MLflow's current one.

    Returns:
        The page's path.

    Raises:
        FluxError: an unreachable server, an unknown run, a run without a readable trace.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
    if not ids or not all(isinstance(i, str) and i for i in ids):
        raise InvalidParameter("run_ids", run_ids, "expected a run id or a list of run ids")
    uri = tracking_uri or mlflow.get_tracking_uri()
    check_reachable(uri)
    client = MlflowClient(tracking_uri)
    runs = []
    for run_id in ids:
        try:
            runs.append(client.get_run(run_id))
        except Exception as exc:  # noqa: BLE001 -- MLflow raises its own kinds for an unknown run
            raise mlflow_adapter.flux_error(exc, uri, f"no run with id {run_id!r} at {uri}", f"run {run_id}") from None
    if group_by is not None and any(group_by not in run.data.params for run in runs):
        missing = [run.info.run_id for run in runs if group_by not in run.data.params]
        raise NoRunsMatch(f"runs {', '.join(missing)} have no parameter {group_by!r} to group by")
    groups = [run.data.params[group_by] if group_by else run.info.run_id for run in runs]  # default: a run each
    pooled = pool_runs(client, runs, groups, page_budget(runs))
    order = list(dict.fromkeys(groups))
    names = {run.info.run_id: run.data.tags.get(mlflow_adapter.RUN_NAME_TAG, run.info.run_id[:8]) for run in runs}
    labels = [(f"{group_by} {value}" if group_by else f"{names[value]} ({value[:8]})",
               [i for i, g in enumerate(groups) if g == value]) for value in order]
    title = pooled[0].run.name if len(pooled) == 1 else f"{len(pooled)} runs"
    page = render_page(pooled, f"mlflow-flux explorer: {title}", f"tracking server {uri}",
                       groups=labels if len(pooled) > 1 else None)
    path = Path(output) if output is not None else Path(f"flux-explorer-{ids[0][:8]}.html")
    path.write_text(page, encoding="utf-8")
    return path
