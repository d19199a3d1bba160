"""Reading traces back: from local files, from a run's artifacts in place, or with HTTP Range requests (MLflow's
artifact server, or a presigned URL of an S3, GCS or Azure store), so that only the footer and the column chunks a
reader asks for cross the network.

The schema comes from :mod:`.schema`; every MLflow-internal call goes through :mod:`.mlflow_adapter`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ..errors import FluxError, InvalidParameter
from . import mlflow_adapter
from .lifecycle import MISSING_TAG
from .schema import KEY_COLUMNS, PARTS_DIR, STAT_COLUMNS, TRACE_ARTIFACT_DIR, TRACE_FILE, TRACE_SCHEMA
from .server import check_reachable

__all__ = ["read_trace_files", "opened_trace", "located_trace", "stored_trace", "RangedHttpFile", "RangeCache",
           "load_traces", "load_resets", "run_resets", "TRACE_PATH"]

_log = logging.getLogger(__name__)

TRACE_PATH = f"{TRACE_ARTIFACT_DIR}/{TRACE_FILE}"
_ignored_ranges: set[str] = set()  # stores already said to ignore ranges (said once per process)


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
    return field.isin(pa.array(sorted({int(e) for e in epochs}), pa.int32()))


def _filter(layers: Sequence[str] | None, epochs) -> ds.Expression | None:
    expr = _epoch_filter(epochs)
    if layers is not None:
        layer_expr = ds.field("layer").isin(pa.array(list(layers), pa.string()))
        expr = layer_expr if expr is None else expr & layer_expr
    return expr


def _wanted(columns: Sequence[str] | None) -> list[str]:
    known = set(TRACE_SCHEMA.names)
    wanted = [*KEY_COLUMNS, *(c for c in (columns or STAT_COLUMNS) if c not in KEY_COLUMNS)]
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise FluxError(f"unknown trace column(s) {', '.join(unknown)}; known: {', '.join(TRACE_SCHEMA.names)}")
    return wanted


def read_trace_files(
    paths: Sequence[str | os.PathLike],
    layers: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    epochs: slice | range | Iterable[int] | None = None,
) -> pa.Table:
    """Read trace Parquet files, projecting columns and pushing layer and epoch filters into the scan.

    The key columns ``epoch``, ``layer``, ``neuron`` are always included. Rows come sorted by epoch, layer
    order and neuron. A column a file was written without (an older trace) is left out.
    """
    wanted = _wanted(columns)
    dataset = ds.dataset([str(p) for p in paths], format="parquet")
    held = set(dataset.schema.names)
    table = dataset.to_table(columns=[c for c in wanted if c in held], filter=_filter(layers, epochs))
    if layers is not None and table.num_rows == 0:
        raise FluxError(f"the trace has no rows for layer(s) {', '.join(layers)}")
    return table


def read_trace_file(source, layers: Sequence[str] | None = None, columns: Sequence[str] | None = None,
                    epochs: slice | range | Iterable[int] | None = None) -> pa.Table:
    """One trace file opened as a ``ParquetFile`` source (a path, or a ranged reader): only the row groups whose epochs
    can match and only the columns asked for are read, then the rows are filtered."""
    wanted = _wanted(columns)
    parquet = pq.ParquetFile(source, pre_buffer=True)
    held = set(parquet.schema_arrow.names)
    groups = _row_groups(parquet, epochs)
    table = parquet.read_row_groups(groups, columns=[c for c in wanted if c in held]) if groups else \
        parquet.schema_arrow.empty_table().select([c for c in wanted if c in held])
    expr = _filter(layers, epochs)
    if expr is not None:
        table = ds.dataset(table).to_table(filter=expr)
    if layers is not None and table.num_rows == 0:
        raise FluxError(f"the trace has no rows for layer(s) {', '.join(layers)}")
    return table


def _row_groups(parquet: pq.ParquetFile, epochs) -> list[int]:
    """The row groups whose epoch statistics can hold the epochs asked for (all, without a filter or statistics)."""
    every = list(range(parquet.metadata.num_row_groups))
    if epochs is None:
        return every
    if isinstance(epochs, slice):
        low = epochs.start if epochs.start is not None else -(2**31)
        high = epochs.stop - 1 if epochs.stop is not None else 2**31
        wanted = None
    else:
        wanted = sorted({int(e) for e in epochs})
        if not wanted:
            return []
        low, high = wanted[0], wanted[-1]
    index = parquet.schema_arrow.get_field_index("epoch")
    kept = []
    for group in every:
        stats = parquet.metadata.row_group(group).column(index).statistics
        if stats is None or not stats.has_min_max:
            kept.append(group)
            continue
        if stats.max < low or stats.min > high:
            continue
        if wanted is not None and not any(stats.min <= e <= stats.max for e in wanted):
            continue
        kept.append(group)
    return kept


class RangeCache:
    """Byte ranges of one remote file kept on local disk, in blocks, under a key that names the file's version (the run
    id, the path, its size and the store's ETag of it; see :meth:`RangedHttpFile.cached`): a second read of the same
    ranges does not cross the network, and a file replaced under the same name is never read from a stale cache."""

    # 64 KiB: a column chunk is tens of KiB to MiBs, and a run of missing blocks is fetched in one request.
    BLOCK = 1 << 16

    def __init__(self, directory: str | os.PathLike, key: str) -> None:
        self.directory = Path(directory) / hashlib.sha256(key.encode()).hexdigest()[:32]
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, block: int) -> Path:
        return self.directory / f"{block:08d}"

    def blocks(self, start: int, stop: int) -> range:
        return range(start // self.BLOCK, stop // self.BLOCK + 1)

    def get(self, block: int) -> bytes | None:
        path = self._path(block)
        return path.read_bytes() if path.exists() else None

    def put(self, block: int, data: bytes) -> None:
        tmp = self._path(block).with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(self._path(block))


class RangedHttpFile(io.RawIOBase):
    """A read-only, seekable file over HTTP Range requests: pyarrow fetches the footer and the column chunks it
    needs, not the whole file. A store that ignores ranges (200 with the whole body) is read whole, once, and said so
    once.

    Args:
        remote: where the file is (:class:`~.mlflow_adapter.RemoteFile`): a presigned URL, or MLflow's artifact server.
        size: the file's size, when known (saves a request).
        cache: keeps the ranges read on local disk, by block (see :class:`RangeCache`).
    """

    # What a first request fetches from the end of the file: pyarrow reads the footer as the last 64 KiB first.
    TAIL = 1 << 16

    def __init__(self, remote: mlflow_adapter.RemoteFile, size: int | None = None,
                 cache: RangeCache | None = None, known: tuple[int, bytes] | None = None) -> None:
        super().__init__()
        self._remote = remote
        self._position = 0
        self._size = size
        self._whole: bytes | None = None
        self._cache = cache
        self._known = known  # (offset, bytes) already fetched: the tail a probe read
        self._lock = threading.Lock()
        self.requests = 0
        self.fetched = 0  # bytes received over the network
        self._headers: Mapping[str, str] = {}

    @classmethod
    def probe(cls, remote: mlflow_adapter.RemoteFile, cache: str | os.PathLike | None = None,
              key: str = "") -> RangedHttpFile:
        """A reader that has its file's size, version and last :attr:`TAIL` bytes (the footer) at hand: without a
        cache in one request (what listing the run's artifacts and the first read would take two round trips for);
        with one, a 1-byte request for the version and the footer through the cache (a second read fetches nothing
        more).

        Raises:
            FileNotFoundError: the store has no such file (HTTP 404).
            OSError: any other HTTP error, with its status.
        """
        if cache is not None:
            source = cls.cached(remote, None, cache, key)
            size = source.size()
            source._fetch(max(0, size - cls.TAIL), size - 1)
            return source
        source = cls(remote)
        source._take(source._send(f"bytes=-{cls.TAIL}"), None)
        return source

    @property
    def remote(self) -> mlflow_adapter.RemoteFile:
        """Where the file is read from."""
        return self._remote

    @property
    def version(self) -> str:
        """The file's version as the store names it: its ETag, else Last-Modified (empty: the store says neither)."""
        return self._headers.get("ETag") or self._headers.get("Last-Modified") or ""

    @property
    def known(self) -> tuple[int, bytes] | None:
        """The bytes fetched so far that another reader of the same version may start from (the probed tail)."""
        return self._known

    @classmethod
    def cached(cls, remote: mlflow_adapter.RemoteFile, size: int | None, directory: str | os.PathLike,
               key: str, version: str | None = None, known: tuple[int, bytes] | None = None) -> RangedHttpFile:
        """A reader whose ranges are cached under ``directory``, by ``key`` and the file's version as the store
        names it (its ETag, else Last-Modified, else the size): given (from a :meth:`probe`), or asked for in one
        1-byte request."""
        source = cls(remote, size, known=known)
        if version is None:
            source._request(size - 1 if size else 0, size - 1 if size else 0)  # a store ignoring ranges: read whole
            version = source.version
        source._cache = RangeCache(directory, f"{key}/{source._size}/{version}")
        return source

    def _send(self, ranges: str):
        """One GET with ``Range: ranges``, counted; the response, whatever its status."""
        headers = {"Range": ranges}
        if self._remote.presigned:
            import requests

            response = requests.get(self._remote.url, headers={**dict(self._remote.headers), **headers}, timeout=60)
        else:
            response = mlflow_adapter.http_get(self._remote.base_uri, self._remote.endpoint, headers=headers)
        with self._lock:
            self.requests += 1
        return response

    def _request(self, start: int, stop: int) -> bytes:
        """Bytes ``start`` to ``stop`` inclusive, from the network."""
        return self._take(self._send(f"bytes={start}-{stop}"), (start, stop))

    def _take(self, response, wanted: tuple[int, int] | None) -> bytes:
        """The bytes ``wanted`` (inclusive; None: the tail asked for) from a response: a range (206), or the whole
        file from a store that ignores ranges (200, kept)."""
        self._headers = response.headers
        if response.status_code not in (200, 206):
            text = response.text[:200].replace("\n", " ")
            kind = FileNotFoundError if response.status_code == 404 else OSError
            raise kind(f"HTTP {response.status_code} reading {self._remote.endpoint or 'a presigned URL'}: {text}")
        with self._lock:
            self.fetched += len(response.content)
        if response.status_code == 206:
            span, _, total = response.headers["Content-Range"].removeprefix("bytes ").partition("/")
            if self._size is None:
                self._size = int(total)
            if wanted is None:
                self._known = (int(span.split("-")[0]), response.content)
            return response.content
        self._whole = response.content  # ranges ignored: keep the whole file
        self._size = len(self._whole)
        where = (self._remote.url or self._remote.base_uri or "").split("?")[0].rsplit("/", 1)[0]
        if where not in _ignored_ranges:
            _ignored_ranges.add(where)
            _log.warning("the artifact store at %s ignores HTTP ranges: traces there are read whole (%d bytes)",
                         where, self._size)
        if wanted is None:
            self._known = (0, self._whole)
            return self._whole
        return self._whole[wanted[0] : wanted[1] + 1]

    def _fetch(self, start: int, stop: int) -> bytes:
        """Bytes ``start`` to ``stop`` inclusive (through the cache where there is one)."""
        if self._whole is not None:
            return self._whole[start : stop + 1]
        if self._known is not None and self._known[0] <= start and stop < self._known[0] + len(self._known[1]):
            return self._known[1][start - self._known[0] : stop + 1 - self._known[0]]
        if self._cache is None:
            return self._request(start, stop)
        size = self.size()
        blocks = list(self._cache.blocks(start, stop))
        data = {b: self._cache.get(b) for b in blocks}
        missing = [b for b in blocks if data[b] is None]
        while missing:  # one request per run of consecutive missing blocks
            run = [missing.pop(0)]
            while missing and missing[0] == run[-1] + 1:
                run.append(missing.pop(0))
            first, last = run[0] * RangeCache.BLOCK, min(size, (run[-1] + 1) * RangeCache.BLOCK) - 1
            body = self._request(first, last)
            if self._whole is not None:
                return self._whole[start : stop + 1]
            for b in run:
                piece = body[(b - run[0]) * RangeCache.BLOCK:(b - run[0] + 1) * RangeCache.BLOCK]
                self._cache.put(b, piece)
                data[b] = piece
        joined = b"".join(data[b] for b in blocks)
        offset = blocks[0] * RangeCache.BLOCK
        return joined[start - offset : stop + 1 - offset]

    def size(self) -> int:
        if self._size is None:
            self._request(0, 0)
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


def missing_trace(run) -> str | None:
    """What a run says did not reach its artifact store, when its trace is among it (else None)."""
    missing = run.data.tags.get(MISSING_TAG)
    return missing if missing and TRACE_PATH in missing else None


def stored_trace(client, run_id: str) -> str | None:
    """What the run holds under ``traces/``: the compacted file's path, the segments' folder, or None."""
    listed = {f.path for f in client.list_artifacts(run_id, TRACE_ARTIFACT_DIR)}
    for candidate in (TRACE_PATH, f"{TRACE_ARTIFACT_DIR}/{PARTS_DIR}"):
        if candidate in listed:
            return candidate
    return None


def located_trace(run, cache: str | os.PathLike | None = None) -> tuple[str | RangedHttpFile | None, bool]:
    """Where a run's compacted trace is, found without listing the run's artifacts: ``client.list_artifacts`` is a
    round trip to the tracking server, and MLflow 3.x makes two more inside it (``get_run``, for the run's logged
    models). A local store's file is looked for in place; a remote one is probed with one ranged request for its
    footer, which also gives its size and version (with ``cache``, through it).

    Returns:
        ``(found, looked)``: the local path or the probed :class:`RangedHttpFile` (None: not found), and whether the
        file was looked for where it would be (False for a store without ranged reads: only its listing says).
    """
    access = mlflow_adapter.artifact_access(run.info.artifact_uri)
    if access.kind == "local":
        local = os.path.join(access.location, TRACE_PATH)
        return (local if os.path.isfile(local) else None), True
    remote = mlflow_adapter.remote_file(run.info.artifact_uri, TRACE_PATH)
    if remote is None:
        return None, False
    try:
        return RangedHttpFile.probe(remote, cache, f"{run.info.run_id}/{TRACE_PATH}"), True
    except FileNotFoundError:
        return None, True


@contextlib.contextmanager
def opened_trace(client, run, cache: str | os.PathLike | None = None) -> Iterator[object]:
    """The compacted trace of a finished run, as something ``pyarrow.parquet.ParquetFile`` opens, read lazily.

    A local artifact store is read in place; a remote one with HTTP ranges (only the footer and the column chunks a
    reader asks for cross the network; with ``cache``, a directory, they are kept there for the next read); a store
    that offers neither is downloaded first. The run's artifacts are listed only where the file was not found that
    way, to say why.

    Raises:
        FluxError: the run has no trace, only the segments of one that was never closed, or says its trace did not
            reach the artifact store.
    """
    run_id = run.info.run_id
    missing = missing_trace(run)
    if missing:
        raise FluxError(f"results kept locally: {missing}")
    located, _ = located_trace(run, cache)
    if isinstance(located, str):
        yield located
        return
    if located is not None:
        yield pa.PythonFile(located, mode="r")
        return
    stored = stored_trace(client, run_id)
    if stored is None:
        raise FluxError("no traces")
    if stored != TRACE_PATH:
        raise FluxError("partial trace: the run never closed its trace (killed?)")
    with tempfile.TemporaryDirectory(prefix="mlflow-flux-") as tmp:  # a store without ranged reads
        yield mlflow_adapter.download_quietly(client, run_id, TRACE_PATH, tmp)


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

    Only what is asked for is read: the columns, and the row groups whose epochs can match; on a remote artifact store
    through HTTP ranges (MLflow's artifact server, or a presigned URL of S3, GCS or Azure).

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
        FluxError: a bad argument, an unreachable server, an unknown run, a run without traces, one whose trace is
            kept locally (the message says where and how to upload it), an unknown column; not authenticated or not
            permitted (their own exit codes on the command line). A run that holds only part of its trace (the
            segments of a killed run, or of one whose compacted trace did not reach the store) returns that part
            and says so in a warning.
    """
    import mlflow
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
    with mlflow_adapter.auth_errors(uri, f"run {run_id}"):  # a 403 on the artifacts, too: one line
        try:
            run = client.get_run(run_id)
            stored = stored_trace(client, run_id)
        except Exception as exc:  # noqa: BLE001 -- MLflow raises its own kinds: unknown run, 401, 403
            raise mlflow_adapter.flux_error(exc, uri, f"no run with id {run_id!r} at {uri}", f"run {run_id}") from None
        missing = missing_trace(run)
        if stored is None:
            if missing:
                raise FluxError(f"run {run_id} holds no trace: {missing}")
            raise FluxError(f"run {run_id} has no traces (nothing under '{TRACE_ARTIFACT_DIR}/'): was it recorded with "
                            "mlflow_flux.watch?")
        if stored != TRACE_PATH:
            _log.warning("run %s holds only the closed segments of its trace%s", run_id,
                         f": {missing}" if missing else " (it was killed before it compacted them)")
        if stored == TRACE_PATH:
            with opened_trace(client, run) as source:
                table = read_trace_file(source, layers=layers, columns=columns, epochs=epochs)
        else:  # the closed segments of a run that was killed before it compacted them
            with tempfile.TemporaryDirectory(prefix="mlflow-flux-") as tmp:
                local = Path(mlflow_adapter.download_quietly(client, run_id, stored, tmp))
                table = read_trace_files(sorted(local.glob("*.parquet")), layers=layers, columns=columns, epochs=epochs)
    if columns is None:  # every column, with those an older trace lacks as NaN
        table = _with_all_columns(table)
    return table if as_arrow else table.to_pandas()


def _with_all_columns(table: pa.Table) -> pa.Table:
    for name in STAT_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(pa.field(name, pa.float32()),
                                        pc.cast(pa.nulls(table.num_rows, pa.float32()), pa.float32()).fill_null(
                                            float("nan")))
    return table.select(TRACE_SCHEMA.names)


def run_resets(client, run) -> pd.DataFrame:
    """A run's reset table (``resets/resets.parquet``), empty for a run that recycled nothing or records none."""
    from .resets import RESETS_DIR, RESETS_FILE, RESETS_TAG, empty_resets, read_resets

    if RESETS_TAG not in run.data.tags and run.data.params.get("recycle", "none") == "none":
        return empty_resets()
    try:
        with tempfile.TemporaryDirectory(prefix="mlflow-flux-") as tmp:
            local = mlflow_adapter.download_quietly(client, run.info.run_id, f"{RESETS_DIR}/{RESETS_FILE}", tmp)
            return read_resets(local)
    except Exception as exc:  # noqa: BLE001 -- a run stopped before its close wrote none
        _log.info("run %s has no reset table: %s", run.info.run_id, exc)
        return empty_resets()


def load_resets(run_id: str, *, tracking_uri: str | None = None) -> pd.DataFrame:
    """The neurons a run's recycling policy reset: one row per reset unit (``epoch``, ``step``, ``layer``,
    ``neuron``, ``policy``, ``score``, ``dry_run``; docs/recycling.md), empty when it reset none.

    Raises:
        FluxError: a bad run id, an unreachable server, an unknown run.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    if not isinstance(run_id, str) or not run_id:
        raise InvalidParameter("run_id", run_id, "expected a run id string")
    uri = tracking_uri or mlflow.get_tracking_uri()
    check_reachable(uri)
    client = MlflowClient(tracking_uri)
    with mlflow_adapter.auth_errors(uri, f"run {run_id}"):
        try:
            run = client.get_run(run_id)
        except Exception as exc:  # noqa: BLE001 -- MLflow raises its own kinds: unknown run, 401, 403
            raise mlflow_adapter.flux_error(exc, uri, f"no run with id {run_id!r} at {uri}", f"run {run_id}") from None
        return run_resets(client, run)
