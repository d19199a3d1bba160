"""The trace table: its schema, snapshots to Arrow, and reading traces back from a run.

One row per snapshot epoch x layer x neuron. docs/traces.md documents every column.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .errors import FluxError
from .recorder import STAT_COLUMNS, Snapshot

__all__ = [
    "TRACE_SCHEMA",
    "TRACE_ARTIFACT_DIR",
    "TRACE_FILE",
    "PARTS_DIR",
    "snapshot_to_batch",
    "read_trace_files",
    "load_traces",
]

TRACE_ARTIFACT_DIR = "traces"
TRACE_FILE = "traces.parquet"  # the compacted trace of a run that closed
PARTS_DIR = "parts"  # closed segments, uploaded while training; what a killed run leaves

TRACE_SCHEMA = pa.schema(
    [
        pa.field("epoch", pa.int32()),
        pa.field("layer", pa.dictionary(pa.int32(), pa.string())),
        pa.field("neuron", pa.int32()),
        *[pa.field(name, pa.float32()) for name in STAT_COLUMNS],
    ]
)


def snapshot_to_batch(snapshot: Snapshot) -> pa.RecordBatch:
    """One Arrow record batch with the rows of a snapshot."""
    rows = len(snapshot.neuron)
    layer = pa.DictionaryArray.from_arrays(
        pa.array(snapshot.layer_index, pa.int32()), pa.array(snapshot.layers, pa.string())
    )
    columns = [
        pa.array(np.full(rows, snapshot.epoch, dtype=np.int32)),
        layer,
        pa.array(snapshot.neuron),
        *[pa.array(np.ascontiguousarray(snapshot.stats[:, i])) for i in range(len(STAT_COLUMNS))],
    ]
    return pa.RecordBatch.from_arrays(columns, schema=TRACE_SCHEMA)


def _epoch_filter(epochs: slice | range | Iterable[int] | None) -> ds.Expression | None:
    if epochs is None:
        return None
    field = ds.field("epoch")
    if isinstance(epochs, slice):
        if epochs.step not in (None, 1):
            raise FluxError("epochs=slice(...) takes no step; pass a list or range of epochs instead")
        expr = None
        if epochs.start is not None:
            expr = field >= epochs.start
        if epochs.stop is not None:
            stop = field < epochs.stop
            expr = stop if expr is None else expr & stop
        return expr
    return field.isin(pa.array(sorted(set(int(e) for e in epochs)), pa.int32()))


def read_trace_files(
    paths: Sequence[str | os.PathLike],
    layers: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    epochs: slice | range | Iterable[int] | None = None,
) -> pa.Table:
    """Read trace Parquet files, projecting columns and pushing layer and epoch filters into the scan.

    The key columns ``epoch``, ``layer``, ``neuron`` are always included. Rows come sorted by epoch, layer
    order and neuron.
    """
    known = set(TRACE_SCHEMA.names)
    wanted = ["epoch", "layer", "neuron"] + [c for c in (columns or STAT_COLUMNS) if c not in ("epoch", "layer", "neuron")]
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise FluxError(f"unknown trace column(s) {', '.join(unknown)}; known: {', '.join(TRACE_SCHEMA.names)}")
    dataset = ds.dataset([str(p) for p in paths], format="parquet")
    expr = _epoch_filter(epochs)
    if layers is not None:
        layer_expr = ds.field("layer").isin(pa.array(list(layers), pa.string()))
        expr = layer_expr if expr is None else expr & layer_expr
    table = dataset.to_table(columns=wanted, filter=expr)
    if layers is not None and table.num_rows == 0:
        raise FluxError(f"the trace has no rows for layer(s) {', '.join(layers)}")
    return table


def _trace_paths_of_run(client, run_id: str, dst: str) -> list[Path]:
    top = {f.path for f in client.list_artifacts(run_id, TRACE_ARTIFACT_DIR)}
    complete = f"{TRACE_ARTIFACT_DIR}/{TRACE_FILE}"
    if complete in top:
        return [Path(client.download_artifacts(run_id, complete, dst))]
    parts_dir = f"{TRACE_ARTIFACT_DIR}/{PARTS_DIR}"
    if parts_dir in top:
        local = Path(client.download_artifacts(run_id, parts_dir, dst))
        parts = sorted(local.glob("*.parquet"))
        if parts:
            return parts
    raise FluxError(
        f"run {run_id} has no traces (nothing under '{TRACE_ARTIFACT_DIR}/'): was it recorded with mlflow_flux.watch?"
    )


def mlflow_tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def load_traces(
    run_id: str,
    *,
    layers: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    epochs: slice | range | Iterable[int] | None = None,
    as_arrow: bool = False,
    tracking_uri: str | None = None,
) -> pd.DataFrame | pa.Table:
    """The per-neuron traces of a run.

    Args:
        run_id: the MLflow run that was watched.
        layers: keep only these layers (qualified module names).
        columns: trace columns to read besides ``epoch``, ``layer``, ``neuron`` (default: all).
        epochs: a ``slice(start, stop)``, ``range`` or iterable of epochs to keep.
        as_arrow: return a ``pyarrow.Table`` instead of a pandas DataFrame.
        tracking_uri: the tracking server; default: MLflow's current one.

    Returns:
        One row per snapshot epoch x layer x neuron (see docs/traces.md). A run that was killed returns the
        epochs its closed trace segments hold.

    Raises:
        FluxError: unknown run, a run without traces, an unknown column.
    """
    from mlflow.tracking import MlflowClient

    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise FluxError(f"no run with id {run_id!r} at {tracking_uri or mlflow_tracking_uri()}") from None
    with tempfile.TemporaryDirectory(prefix="mlflow-flux-") as tmp:
        paths = _trace_paths_of_run(client, run_id, tmp)
        table = read_trace_files(paths, layers=layers, columns=columns, epochs=epochs)
    return table if as_arrow else table.to_pandas()
