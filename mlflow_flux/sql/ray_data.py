"""``mlflow_flux.traces_dataset(...)``: the rows :func:`~mlflow_flux.query` answers over, as a Ray Data dataset read
in parallel by a cluster's workers (the optional ``ray`` extra), for queries over more traces than one machine holds.

Each worker opens its files through the same filesystem as the local engine (:mod:`.sources`): a local store's file
in place, a remote one through HTTP ranges, asking the tracking server for the URL itself (the workers need its
address and credentials: ``MLFLOW_*`` in their environment, as the sweep's Ray backend passes them).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from ..errors import FluxError, NoRunsMatch
from ..traces.server import check_reachable
from .engine import QueryResult, select_traces
from .sources import TraceFileSystem, column_name, typed_params

__all__ = ["traces_dataset"]


def _with_runs(batch: pa.Table, columns: dict[str, dict[str, object]], types: dict[str, pa.DataType]) -> pa.Table:
    """The batch with its run's identity and parameters as columns (the path names the run)."""
    run_ids = [path.split("/", 1)[0].split("=", 1)[1].lstrip("/") for path in batch.column("path").to_pylist()]
    out = batch.drop_columns(["path"])
    for name, per_run in columns.items():
        out = out.append_column(pa.field(name, types[name]), pa.array([per_run[r] for r in run_ids], types[name]))
    return out


def traces_dataset(*, experiment: str | None = None, filter_string: str | None = None,
                   runs: Sequence[str] | None = None, tracking_uri: str | None = None,
                   result: QueryResult | None = None):
    """The traces of the selected runs as a ``ray.data.Dataset``: the same rows and columns as :func:`query`'s
    ``traces`` view (the trace's columns, then ``run_id``, ``run_name``, ``status`` and the typed parameters).

    Ray must be initialised (``ray.init()``, or ``RAY_ADDRESS``); the arguments select runs as :func:`query` does.

    Raises:
        FluxError: Ray is not installed, the server is unreachable, no run matches or none holds a readable trace.
    """
    try:
        import ray
    except ImportError:
        raise FluxError("traces_dataset needs Ray: pip install 'mlflow-flux[ray]'") from None
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or mlflow.get_tracking_uri()
    check_reachable(uri)
    found, traces, skipped = select_traces(MlflowClient(tracking_uri), experiment, filter_string, runs, uri)
    if result is not None:
        result.runs[:] = [t.run_id for t in traces]
        result.skipped[:] = skipped
    if not traces:
        raise NoRunsMatch(f"none of the {len(found)} runs holds a readable trace")
    names, types = typed_params([{k: str(v) for k, v in t.params.items()} for t in traces])
    columns: dict[str, dict[str, object]] = {"run_id": {t.run_id: t.run_id for t in traces},
                                             "run_name": {t.run_id: t.run_name for t in traces},
                                             "status": {t.run_id: t.status for t in traces}}
    all_types = {"run_id": pa.string(), "run_name": pa.string(), "status": pa.string()}
    for name in names:
        kind = types[name]
        values = {}
        for trace in traces:
            raw = trace.params.get(name)
            if raw is None:
                values[trace.run_id] = None
            elif pa.types.is_boolean(kind):
                values[trace.run_id] = str(raw).strip().lower() == "true"
            elif pa.types.is_integer(kind):
                values[trace.run_id] = int(raw)
            elif pa.types.is_floating(kind):
                values[trace.run_id] = float(raw)
            else:
                values[trace.run_id] = str(raw)
        columns[column_name(name)] = values
        all_types[column_name(name)] = kind
    # Short paths (the run's id, then the file): the workers' filesystem serves them, the map adds the columns.
    paths = [f"run_id={t.run_id}/traces.parquet" for t in traces]
    filesystem = TraceFileSystem({t.run_id: t for t in traces}, cache=None)
    dataset = ray.data.read_parquet(paths, filesystem=filesystem, include_paths=True, partitioning=None)
    return dataset.map_batches(_with_runs, batch_format="pyarrow", fn_kwargs={"columns": columns, "types": all_types})

