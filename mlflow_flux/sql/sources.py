"""Where the traces of many runs are, as one Arrow dataset: each run's file at a path that names its run and its
parameters (``run_id=.../lr=0.01/.../traces.parquet``, hive partitioning), so that a filter on a parameter prunes
whole runs, a filter on epochs prunes row groups, and only the columns a query reads are fetched.

The paths are served by a small Arrow filesystem (:class:`TraceFileSystem`): a local store's file in place, a remote
one through HTTP ranges (MLflow's artifact server, or a presigned URL of the store), its byte ranges cached on local
disk by run id and file version, so a second query does not fetch them again. The same paths and filesystem serve
Ray Data on a cluster's workers (it pickles; each worker asks the tracking server for its own URLs).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from ..errors import FluxError
from ..traces import mlflow_adapter
from ..traces.reader import TRACE_PATH, RangedHttpFile, located_trace, missing_trace
from ..traces.runs import LAYERS_PARAM
from ..traces.schema import TRACE_ARTIFACT_DIR, TRACE_SCHEMA

__all__ = ["RunTrace", "TraceFileSystem", "trace_dataset", "typed_params", "DEFAULT_CACHE", "PARAMS_LEFT_OUT",
           "column_name"]

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlflow-flux" / "traces"
# Params that are not settings worth a column: the list of watched layers (the trace has a layer column).
PARAMS_LEFT_OUT = (LAYERS_PARAM,)
RUN_COLUMNS = ("run_id", "run_name", "status")


@dataclass
class RunTrace:
    """One run's trace: where it is (a local path, or the run's artifact URI to ask), its size, and the run's
    identity and parameters."""

    run_id: str
    run_name: str
    status: str
    params: dict[str, object]
    artifact_uri: str
    local_path: str | None = None
    size: int | None = None
    tracking_uri: str | None = None
    remote: object = field(default=None, repr=False)  # how to read it over HTTP: probed, or asked on first open
    version: str | None = None  # the remote file's version (ETag), from the probe
    tail: tuple[int, bytes] | None = field(default=None, repr=False)  # the footer the probe fetched: (offset, bytes)
    probed: tuple[int, int] = (0, 0)  # the probe's requests and bytes received


def column_name(param: str) -> str:
    """A parameter's column: its name, with ``param_`` before one a trace column or a run column already has.

    >>> column_name("lr"), column_name("epoch"), column_name("flux.fastpath")
    ('lr', 'param_epoch', 'flux.fastpath')
    """
    taken = {*TRACE_SCHEMA.names, *RUN_COLUMNS}
    return f"param_{param}" if param in taken else param


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


def typed_params(params_of_runs: Sequence[Mapping[str, str]]) -> tuple[list[str], dict[str, pa.DataType]]:
    """The parameters the runs logged, and each one's column type: int64 or float64 where every value reads as one,
    boolean where every value is true/false, else string (a run without the parameter holds null).

    >>> typed_params([{"lr": "0.01", "seed": "0", "opt": "adam"}, {"lr": "1e-3", "seed": "1", "twins": "true"}])[1]
    {'lr': DataType(double), 'opt': DataType(string), 'seed': DataType(int64), 'twins': DataType(bool)}
    """
    names = sorted({name for params in params_of_runs for name in params if name not in PARAMS_LEFT_OUT})
    types: dict[str, pa.DataType] = {}
    for name in names:
        values = [params[name] for params in params_of_runs if name in params]
        if all(v.strip().lower() in ("true", "false") for v in values):
            types[name] = pa.bool_()
            continue
        try:
            parsed = [_number(v) for v in values]
        except ValueError:
            types[name] = pa.string()
            continue
        finite = all(math.isfinite(p) for p in parsed)
        types[name] = pa.int64() if finite and all(isinstance(p, int) for p in parsed) else pa.float64()
    return names, types


def _segment(value: str) -> str:
    """A path segment holding any text (hive partitioning's URI encoding reads it back)."""
    return quote(value, safe="")


class _Handler(pafs.FileSystemHandler):
    """Serves ``run_id=<id>/.../traces.parquet`` from each run's own location (read only)."""

    def __init__(self, runs: Mapping[str, RunTrace], cache: str | None) -> None:
        self.runs = dict(runs)
        self.cache = cache
        self.opened: list[RangedHttpFile] = []  # the remote files read (their requests and bytes, for the caller)

    def __reduce__(self):  # to Ray's workers: the runs and the cache, not the files this process opened
        return (_Handler, (self.runs, self.cache))

    def __eq__(self, other) -> bool:
        return isinstance(other, _Handler) and other.runs.keys() == self.runs.keys()

    def __ne__(self, other) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "mlflow-flux-traces"

    def normalize_path(self, path: str) -> str:
        return path

    def _run(self, path: str) -> RunTrace:
        match = re.match(r"^/?run_id=([^/]+)/", path)
        if match is None or match.group(1) not in self.runs:
            raise FileNotFoundError(path)
        return self.runs[match.group(1)]

    def get_file_info(self, paths):
        infos = []
        for path in paths:
            try:
                run = self._run(path)
            except FileNotFoundError:
                infos.append(pafs.FileInfo(path, pafs.FileType.NotFound))
                continue
            infos.append(pafs.FileInfo(path, pafs.FileType.File, size=run.size))
        return infos

    def get_file_info_selector(self, selector):
        raise NotImplementedError("the trace paths are listed by the query, not discovered")

    def open_input_file(self, path: str):
        return self.open_input_stream(path)

    def open_input_stream(self, path: str):
        run = self._run(path)
        if run.local_path is not None:
            return pa.OSFile(run.local_path, "rb")
        if run.remote is None:
            run.remote = mlflow_adapter.remote_file(run.artifact_uri, TRACE_PATH)
        if run.remote is None:
            raise OSError(f"run {run.run_id}'s artifact store offers no ranged reads and no presigned URL")
        source = (RangedHttpFile.cached(run.remote, run.size, self.cache, f"{run.run_id}/{TRACE_PATH}", run.version,
                                        run.tail)
                  if self.cache else RangedHttpFile(run.remote, run.size, known=run.tail))
        self.opened.append(source)
        return pa.PythonFile(source, mode="r")

    def create_dir(self, path, recursive):
        raise OSError("read only")

    def delete_dir(self, path):
        raise OSError("read only")

    def delete_dir_contents(self, path, missing_dir_ok=False):
        raise OSError("read only")

    def delete_root_dir_contents(self):
        raise OSError("read only")

    def delete_file(self, path):
        raise OSError("read only")

    def move(self, src, dest):
        raise OSError("read only")

    def copy_file(self, src, dest):
        raise OSError("read only")

    def open_output_stream(self, path, metadata):
        raise OSError("read only")

    def open_append_stream(self, path, metadata):
        raise OSError("read only")


class TraceFileSystem(pafs.PyFileSystem):
    """The Arrow filesystem that serves the runs' traces (see the module's docstring)."""

    def __init__(self, runs: Mapping[str, RunTrace], cache: str | os.PathLike | None = DEFAULT_CACHE) -> None:
        super().__init__(_Handler(runs, str(cache) if cache is not None else None))


def run_trace(client, run, cache: str | os.PathLike | None = None) -> RunTrace:
    """A run's trace as the dataset reads it: a local store's file in place; a remote one probed with one ranged
    request for its footer, which also gives its size and version (no listing of the run's artifacts, a round trip
    to the server that the scan would then repeat; with a ``cache``, through it). The artifacts are listed only for
    a store without ranged reads, whose listing alone says whether the file is there.

    Raises:
        FluxError: the run holds no compacted trace, or says its trace is kept locally.
    """
    missing = missing_trace(run)
    if missing:
        raise FluxError(f"results kept locally: {missing}")
    name = run.data.tags.get(mlflow_adapter.RUN_NAME_TAG, "")
    found = RunTrace(run.info.run_id, name, run.info.status, dict(run.data.params), run.info.artifact_uri)
    located, looked = located_trace(run, cache)
    if isinstance(located, str):
        found.local_path, found.size = located, os.path.getsize(located)
        return found
    if located is not None:
        found.remote, found.size, found.version = located.remote, located.size(), located.version
        found.probed = (located.requests, located.fetched)
        found.tail = located.known if cache is None else None  # with a cache, the footer is there
        return found
    missing = FluxError("no compacted trace (never watched, or killed before it closed its trace)")
    if looked:  # looked for where it would be, and not there
        raise missing
    listed = {f.path: f.file_size for f in client.list_artifacts(run.info.run_id, TRACE_ARTIFACT_DIR)}
    if TRACE_PATH not in listed:
        raise missing
    found.size = listed[TRACE_PATH]  # a store without ranged reads: opening it says so
    return found


NULL = "__HIVE_DEFAULT_PARTITION__"  # a run without the parameter: null in its column


def trace_paths(runs: Sequence[RunTrace], names: Sequence[str], types: Mapping[str, pa.DataType]) -> list[str]:
    """Each run's hive path: its id, name, status and every parameter (null where it has none), then the file."""
    paths = []
    for run in runs:
        segments = [f"run_id={_segment(run.run_id)}", f"run_name={_segment(run.run_name)}",
                    f"status={_segment(run.status)}"]
        for name in names:
            value = run.params.get(name)
            text = NULL if value is None else str(value).strip()
            if value is not None and pa.types.is_boolean(types[name]):
                text = text.lower()
            segments.append(f"{_segment(column_name(name))}={_segment(text) if text else NULL}")
        paths.append("/".join([*segments, "traces.parquet"]))
    return paths


def trace_dataset(runs: Sequence[RunTrace], cache: str | os.PathLike | None = DEFAULT_CACHE) -> ds.Dataset:
    """The traces of ``runs`` as one Arrow dataset, the runs' identity and typed parameters as columns."""
    names, types = typed_params([{k: str(v) for k, v in run.params.items()} for run in runs])
    schema = pa.schema([pa.field("run_id", pa.string()), pa.field("run_name", pa.string()),
                        pa.field("status", pa.string()),
                        *(pa.field(column_name(n), types[n]) for n in names)])
    partitioning = ds.HivePartitioning(schema, null_fallback=NULL, segment_encoding="uri")
    filesystem = TraceFileSystem({run.run_id: run for run in runs}, cache)
    return ds.dataset(trace_paths(runs, names, types), schema=pa.unify_schemas([TRACE_SCHEMA, schema]),
                      format="parquet", filesystem=filesystem, partitioning=partitioning)
