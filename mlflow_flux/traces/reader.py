"""Reading traces back: from local files, from a run's artifacts, or over HTTP ranges from MLflow's server.

The schema comes from :mod:`.schema`; every MLflow-internal call goes through :mod:`.mlflow_adapter`.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from ..errors import FluxError, InvalidParameter
from . import mlflow_adapter
from .schema import KEY_COLUMNS, PARTS_DIR, STAT_COLUMNS, TRACE_ARTIFACT_DIR, TRACE_FILE, TRACE_SCHEMA
from .server import check_reachable

__all__ = ["read_trace_files", "opened_trace", "stored_trace", "RangedHttpFile", "load_traces"]


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
    wanted = [*KEY_COLUMNS, *(c for c in (columns or STAT_COLUMNS) if c not in KEY_COLUMNS)]
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


class RangedHttpFile(io.RawIOBase):
    """A read-only, seekable file over HTTP Range requests: pyarrow fetches the footer and the column chunks it
    needs, not the whole file. MLflow's artifact server answers ranges (206); a server that does not gets read
    whole, once.

    Args:
        base_uri: the server's base URI (for MLflow's artifact server, the run's artifact URI).
        endpoint: the file's path under ``base_uri``, starting with ``/``.
    """

    def __init__(self, base_uri: str, endpoint: str) -> None:
        super().__init__()
        self._base_uri = base_uri
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
        response = mlflow_adapter.http_get(self._base_uri, self._endpoint, headers={"Range": f"bytes={start}-{stop}"})
        self.requests += 1
        if response.status_code not in (200, 206):
            raise OSError(f"HTTP {response.status_code} reading {self._endpoint}: {response.text[:200]}")
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
    run_id = run.info.run_id
    path = f"{TRACE_ARTIFACT_DIR}/{TRACE_FILE}"
    stored = stored_trace(client, run_id)
    if stored is None:
        raise FluxError("no traces")
    if stored != path:
        raise FluxError("partial trace: the run never closed its trace (killed?)")
    access = mlflow_adapter.artifact_access(run.info.artifact_uri)
    if access.kind == "local":
        yield os.path.join(access.location, path)
    elif access.kind == "http":
        yield pa.PythonFile(RangedHttpFile(access.location, "/" + path), mode="r")
    else:
        with tempfile.TemporaryDirectory(prefix="mlflow-flux-") as tmp:
            yield client.download_artifacts(run_id, path, tmp)


def stored_trace(client, run_id: str) -> str | None:
    """What the run holds under ``traces/``: the compacted file's path, the segments' folder, or None."""
    listed = {f.path for f in client.list_artifacts(run_id, TRACE_ARTIFACT_DIR)}
    for candidate in (f"{TRACE_ARTIFACT_DIR}/{TRACE_FILE}", f"{TRACE_ARTIFACT_DIR}/{PARTS_DIR}"):
        if candidate in listed:
            return candidate
    return None


def _trace_paths_of_run(client, run_id: str, dst: str) -> list[Path]:
    stored = stored_trace(client, run_id)
    if stored is not None:
        local = Path(client.download_artifacts(run_id, stored, dst))
        parts = [local] if local.is_file() else sorted(local.glob("*.parquet"))
        if parts:
            return parts
    raise FluxError(
        f"run {run_id} has no traces (nothing under '{TRACE_ARTIFACT_DIR}/'): was it recorded with mlflow_flux.watch?"
    )


def _names_option(name: str, value: object) -> list[str] | None:
    """A list of names, refusing the common slips (one string read letter by letter, an empty list)."""
    if value is None:
        return None
    if isinstance(value, str):
        raise InvalidParameter(name, value, f"expected a list, e.g. {name}=[{value!r}]")
    try:
        names = list(value)
    except TypeError:
        raise InvalidParameter(name, value, "expected a list of names") from None
    if not names or not all(isinstance(n, str) for n in names):
        raise InvalidParameter(name, value, "expected a non-empty list of names")
    return names


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
        FluxError: a bad argument, an unreachable server, an unknown run, a run without traces, an unknown column.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not isinstance(run_id, str) or not run_id:
        raise InvalidParameter("run_id", run_id, "expected a run id string")
    layers = _names_option("layers", layers)
    columns = _names_option("columns", columns)
    if epochs is not None and not isinstance(epochs, (slice, range)):
        try:
            epochs = [int(e) for e in epochs]
        except (TypeError, ValueError):
            raise InvalidParameter("epochs", epochs, "expected a slice, a range or a list of epochs") from None
    uri = tracking_uri or mlflow.get_tracking_uri()
    check_reachable(uri)
    client = MlflowClient(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise FluxError(f"no run with id {run_id!r} at {uri}") from None
    with tempfile.TemporaryDirectory(prefix="mlflow-flux-") as tmp:
        paths = _trace_paths_of_run(client, run_id, tmp)
        table = read_trace_files(paths, layers=layers, columns=columns, epochs=epochs)
    return table if as_arrow else table.to_pandas()
