"""The trace table: its schema, snapshots to Arrow, and reading traces back from a run.

One row per snapshot epoch x layer x neuron. docs/traces.md documents every column.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from .errors import FluxError
from .recorder import STAT_COLUMNS, Snapshot

__all__ = [
    "TRACE_SCHEMA",
    "TRACE_ARTIFACT_DIR",
    "TRACE_FILE",
    "PARTS_DIR",
    "snapshot_to_batch",
    "read_trace_files",
    "opened_trace",
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


class _RangedHttpFile(io.RawIOBase):
    """A read-only, seekable file over HTTP Range requests: pyarrow fetches the footer and the column chunks it
    needs, not the whole file. MLflow's artifact server answers ranges (206); a server that does not gets read
    whole, once."""

    def __init__(self, host_creds, endpoint: str) -> None:
        super().__init__()
        self._creds = host_creds
        self._endpoint = endpoint
        self._position = 0
        self._size: int | None = None
        self._whole: bytes | None = None
        self.requests = 0
        self.fetched = 0  # bytes received

    def _fetch(self, start: int, stop: int) -> bytes:
        """Bytes ``start`` to ``stop`` inclusive."""
        if self._whole is not None:
            return self._whole[start : stop + 1]
        from mlflow.utils.rest_utils import augmented_raise_for_status, http_request

        response = http_request(self._creds, self._endpoint, "GET", extra_headers={"Range": f"bytes={start}-{stop}"})
        self.requests += 1
        augmented_raise_for_status(response)
        self.fetched += len(response.content)
        if response.status_code == 206:
            if self._size is None:
                self._size = int(response.headers["Content-Range"].rsplit("/", 1)[1])
            return response.content
        self._whole = response.content  # ranges ignored: keep the whole file
        self._size = len(self._whole)
        return self._whole[start : stop + 1]

    def size(self) -> int:
        if self._size is None:
            self._fetch(0, 0)
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size()}[whence]
        self._position = base + offset
        return self._position

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.size() - self._position)
        if count <= 0:
            return 0
        data = self._fetch(self._position, self._position + count - 1)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


@contextlib.contextmanager
def opened_trace(client, run) -> Iterator[object]:
    """The compacted trace of a finished run, as something ``pyarrow.parquet.ParquetFile`` opens, fetched lazily.

    A local artifact store is read in place; the MLflow artifact server is read with HTTP ranges, so only the
    column chunks a reader asks for cross the network; any other store is downloaded first.

    Raises:
        FluxError: the run has no traces, or only the segments of a trace that was never closed.
    """
    import pyarrow as pa
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.utils.credentials import get_default_host_creds

    run_id = run.info.run_id
    path = f"{TRACE_ARTIFACT_DIR}/{TRACE_FILE}"
    stored = _stored_trace(client, run_id)
    if stored is None:
        raise FluxError("no traces")
    if stored != path:
        raise FluxError("partial trace: the run never closed its trace (killed?)")
    repo = get_artifact_repository(run.info.artifact_uri)
    if isinstance(repo, LocalArtifactRepository):
        yield os.path.join(repo.artifact_dir, path)
    elif isinstance(repo, HttpArtifactRepository):
        ranged = _RangedHttpFile(get_default_host_creds(repo.artifact_uri), "/" + path)
        yield pa.PythonFile(ranged, mode="r")
    else:
        with tempfile.TemporaryDirectory(prefix="mlflow-flux-") as tmp:
            yield client.download_artifacts(run_id, path, tmp)


def _stored_trace(client, run_id: str) -> str | None:
    """What the run holds under ``traces/``: the compacted file's path, the segments' folder, or None."""
    listed = {f.path for f in client.list_artifacts(run_id, TRACE_ARTIFACT_DIR)}
    for candidate in (f"{TRACE_ARTIFACT_DIR}/{TRACE_FILE}", f"{TRACE_ARTIFACT_DIR}/{PARTS_DIR}"):
        if candidate in listed:
            return candidate
    return None


def _trace_paths_of_run(client, run_id: str, dst: str) -> list[Path]:
    stored = _stored_trace(client, run_id)
    if stored is not None:
        local = Path(client.download_artifacts(run_id, stored, dst))
        parts = [local] if local.is_file() else sorted(local.glob("*.parquet"))
        if parts:
            return parts
    raise FluxError(
        f"run {run_id} has no traces (nothing under '{TRACE_ARTIFACT_DIR}/'): was it recorded with mlflow_flux.watch?"
    )


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

    import mlflow
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise FluxError(f"no run with id {run_id!r} at {tracking_uri or mlflow.get_tracking_uri()}") from None
    with tempfile.TemporaryDirectory(prefix="mlflow-flux-") as tmp:
        paths = _trace_paths_of_run(client, run_id, tmp)
        table = read_trace_files(paths, layers=layers, columns=columns, epochs=epochs)
    return table if as_arrow else table.to_pandas()
