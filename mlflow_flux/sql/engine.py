"""``mlflow_flux.query(sql, ...)``: SQL over every trace row of the selected runs, in DuckDB.

Two views: ``traces`` (one row per run x snapshot x layer x neuron: the trace's columns, then the run's id, name,
status and parameters, typed) and ``runs`` (one row per run: its id, name, status, parameters and the last value of
every metric). The engine reads only what the query needs: DuckDB pushes the projection and the filters into the
Arrow dataset (:mod:`.sources`), which prunes runs by their parameters and row groups by their epochs, and fetches
remote column chunks with HTTP ranges, cached on local disk.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from ..errors import FluxError, InvalidParameter, NoRunsMatch, QueryError
from ..traces import mlflow_adapter
from ..traces.reader import run_resets
from ..traces.resets import empty_resets
from ..traces.runs import FINGERPRINT_TAG, LAYERS_PARAM
from ..traces.server import check_reachable
from .sources import DEFAULT_CACHE, RunTrace, column_name, run_trace, trace_dataset, typed_params

__all__ = ["query", "QueryResult", "select_traces"]


@dataclass
class QueryResult:
    """What :func:`query` read: the runs it answered over and those it skipped, with the reason; for remote traces,
    the bytes and requests that crossed the network against the traces' total size."""

    runs: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run id, reason)
    fetched: int = 0  # bytes received from the artifact store (0 for a local store: read in place)
    requests: int = 0  # HTTP requests to it
    trace_bytes: int = 0  # the selected runs' trace files, together


def select_traces(client, experiment: str | None, filter_string: str | None, runs: Sequence[str] | None,
                  tracking_uri: str, cache: str | os.PathLike | None = None
                  ) -> tuple[list, list[RunTrace], list[tuple[str, str]]]:
    """The runs asked for (by id, or every run of the experiment holding a trace that meets the filter), their
    traces (remote ones probed, through ``cache`` where given), and those skipped with a reason (no trace, results
    kept locally)."""
    if runs is not None:
        found = []
        for run_id in runs:
            try:
                found.append(client.get_run(run_id))
            except Exception as exc:  # noqa: BLE001 -- MLflow raises its own kinds: unknown run, 401, 403
                raise mlflow_adapter.flux_error(exc, tracking_uri, f"no run with id {run_id!r} at {tracking_uri}",
                                                f"run {run_id}") from None
    else:
        ids = mlflow_adapter.experiment_ids(client, experiment, tracking_uri)
        condition = f"params.`{LAYERS_PARAM}` LIKE '%'" + (f" and {filter_string}" if filter_string else "")
        try:
            found = list(client.search_runs(ids, condition, max_results=50_000))
        except Exception as exc:  # noqa: BLE001 -- a malformed filter is the usual cause
            if mlflow_adapter.is_auth_error(exc):
                raise mlflow_adapter.flux_error(exc, tracking_uri, "", f"experiment {experiment!r}") from None
            raise InvalidParameter("filter", filter_string, getattr(exc, "message", str(exc)).splitlines()[0]) \
                from None
    if not found:
        raise NoRunsMatch(f"no runs holding a trace match {_described(experiment, filter_string, runs)}")
    def described(run) -> RunTrace | FluxError:
        try:
            return run_trace(client, run, cache)
        except FluxError as exc:
            return exc

    # A round trip to the server per run (the probe of its footer): side by side, in the runs' order (serially an
    # artifact listing each was ~0.4 s of the atlas's 1.2 s query).
    with ThreadPoolExecutor(max_workers=min(8, len(found))) as pool:
        answers = list(pool.map(described, found))
    traces = [answer for answer in answers if isinstance(answer, RunTrace)]
    skipped = [(run.info.run_id, str(answer)) for run, answer in zip(found, answers) if isinstance(answer, FluxError)]
    return found, traces, skipped


def _described(experiment, filter_string, runs) -> str:
    if runs is not None:
        return f"runs {', '.join(runs)}"
    return (f"experiment {experiment!r}" if experiment else "the current experiment") + \
        (f" and filter {filter_string!r}" if filter_string else "")


def _runs_table(found: Sequence) -> pa.Table:
    """One row per run: id, name, status, start time, typed parameters, the last value of every metric."""
    names, types = typed_params([run.data.params for run in found])
    rows = []
    for run in found:
        row = {"run_id": run.info.run_id, "run_name": run.data.tags.get(mlflow_adapter.RUN_NAME_TAG, ""),
               "status": run.info.status, "experiment_id": run.info.experiment_id,
               "start_time": pd.Timestamp(run.info.start_time, unit="ms"),
               # runs with equal fingerprints started from the same weights: join on it to pair their neurons
               "fingerprint": run.data.tags.get(FINGERPRINT_TAG)}
        for name in names:
            value = run.data.params.get(name)
            if value is None:
                row[column_name(name)] = None
            elif pa.types.is_boolean(types[name]):
                row[column_name(name)] = value.strip().lower() == "true"
            elif pa.types.is_integer(types[name]):
                row[column_name(name)] = int(value)
            elif pa.types.is_floating(types[name]):
                row[column_name(name)] = float(value)
            else:
                row[column_name(name)] = value
        for key, value in run.data.metrics.items():
            row[key] = mlflow_adapter.metric_value(value)
        rows.append(row)
    return pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)


def _resets_table(client, found: Sequence) -> pa.Table:
    """Every neuron the runs' recycling policies reset: the reset tables of the runs that recycled (docs/recycling.md),
    with their run's id."""
    frames = []
    for run in found:
        table = run_resets(client, run)
        if len(table):
            frames.append(table.assign(run_id=run.info.run_id))
    frame = pd.concat(frames, ignore_index=True) if frames else empty_resets().assign(run_id=pd.Series(dtype=str))
    return pa.Table.from_pandas(frame, preserve_index=False)


def _sql_error(exc: Exception) -> str:
    """DuckDB's message, in one line: the kind and what it says first (a binder error names the column)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"\s+", " ", text)[:400]


def query(sql: str, *, experiment: str | None = None, filter_string: str | None = None,
          runs: Sequence[str] | None = None, as_arrow: bool = False, tracking_uri: str | None = None,
          cache: str | os.PathLike | None = DEFAULT_CACHE, result: QueryResult | None = None):
    """Run ``sql`` over the traces of many runs, on one machine.

    Args:
        sql: a DuckDB query over the views ``traces`` (every trace row, with the run's ``run_id``, ``run_name``,
            ``status`` and parameters as typed columns; a parameter named like a trace column is ``param_<name>``),
            ``runs`` (one row per run: its parameters, the last value of each metric, and the ``fingerprint`` of its
            initial weights) and ``resets`` (every neuron a recycling policy reset, with its ``run_id``).
        experiment: the runs of this experiment (name or id) that hold a trace; default: the current experiment.
        filter_string: an MLflow filter over those runs, e.g. ``"params.optimizer = 'sgd'"``.
        runs: these run ids instead.
        as_arrow: return a ``pyarrow.Table`` instead of a pandas DataFrame.
        tracking_uri: the tracking server; default: MLflow's current one.
        cache: where remote traces' byte ranges are kept between queries (None: not kept).
        result: filled with the runs answered and those skipped (no trace, kept locally), with the reason.

    Returns:
        The query's rows.

    Raises:
        FluxError: an unreachable server, no matching runs, a SQL error or an unknown column (one line each); not
            authenticated or not permitted (their own exit codes on the command line).
    """
    import duckdb
    import mlflow
    from mlflow.tracking import MlflowClient

    if not isinstance(sql, str) or not sql.strip():
        raise InvalidParameter("sql", sql, "expected a SQL query over the views traces and runs")
    uri = tracking_uri or mlflow.get_tracking_uri()
    check_reachable(uri)
    client = MlflowClient(tracking_uri)
    if cache is not None:
        Path(cache).mkdir(parents=True, exist_ok=True)
    found, traces, skipped = select_traces(client, experiment, filter_string, runs, uri, cache)
    if result is not None:
        result.runs[:] = [t.run_id for t in traces]
        result.skipped[:] = skipped
    if not traces:
        reasons = "; ".join(f"{run_id}: {why}" for run_id, why in skipped)
        raise NoRunsMatch(f"none of the {len(found)} runs holds a readable trace ({reasons})")
    connection = duckdb.connect()
    dataset = trace_dataset(traces, cache)
    try:
        connection.register("traces", dataset)
        answered = {t.run_id for t in traces}
        chosen = [run for run in found if run.info.run_id in answered]
        connection.register("runs", _runs_table(chosen))
        connection.register("resets", _resets_table(client, chosen))
        try:
            answer = connection.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            raise QueryError(f"the query failed: {_sql_error(exc)}") from None
    finally:
        connection.close()
        if result is not None:
            opened = dataset.filesystem.handler.opened
            result.fetched = sum(f.fetched for f in opened) + sum(t.probed[1] for t in traces)
            result.requests = sum(f.requests for f in opened) + sum(t.probed[0] for t in traces)
            result.trace_bytes = sum(t.size or 0 for t in traces)
    if isinstance(answer, pa.RecordBatchReader):
        answer = answer.read_all()
    return answer if as_arrow else answer.to_pandas()
