"""Reading traces back: load_traces' options, other readers of the file, and the ranged HTTP reader."""

import functools
import http.server
import os
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

import mlflow_flux
from mlflow_flux.traces.mlflow_adapter import RemoteFile
from mlflow_flux.traces.reader import RangedHttpFile
from mlflow_flux.traces.schema import KEY_COLUMNS, STAT_COLUMNS, SUMMARY_COLUMNS, TRACE_SCHEMA, write_trace_table
from tests.helpers import train_mlp


def test_load_traces_options(store):
    run_id, _ = train_mlp(6, window=2, snapshot_every=2)
    full = mlflow_flux.load_traces(run_id)
    assert sorted(full.epoch.unique()) == [0, 2, 4]
    assert list(full.columns) == ["epoch", "layer", "neuron", *STAT_COLUMNS]
    part = mlflow_flux.load_traces(run_id, layers=["2"], columns=["w_std"], epochs=slice(2, None))
    assert list(part.columns) == ["epoch", "layer", "neuron", "w_std"]
    assert set(part.layer.astype(str)) == {"2"} and sorted(part.epoch.unique()) == [2, 4] and len(part) == 2 * 16
    table = mlflow_flux.load_traces(run_id, epochs=[4], as_arrow=True)
    assert table.num_rows == 32 + 16 + 10 and table.schema.field("w_std").type == "float"
    params = MlflowClient().get_run(run_id).data.params
    assert params["flux.layers"] == "0,2,4" and params["snapshot_every"] == "2"  # a setting under its own name




def test_duckdb_and_polars_read_the_trace_file(store, tmp_path):
    run_id, _ = train_mlp(3, window=2)
    path = MlflowClient().download_artifacts(run_id, "traces/traces.parquet", str(tmp_path))
    expected = pd.read_parquet(path)
    duckdb = pytest.importorskip("duckdb")
    ((count, epochs),) = duckdb.sql(f"select count(*), count(distinct epoch) from read_parquet('{path}')").fetchall()
    assert (count, epochs) == (len(expected), 3)
    # Polars reads the file in a child process, from where `make test` installs it (beside the environment, not in
    # it: see the Makefile), and writes what it read back out for pandas to compare.
    readers = os.environ.get("MLFLOW_FLUX_TEST_READERS")
    env = {**os.environ, "PYTHONPATH": readers} if readers else dict(os.environ)
    copy = tmp_path / "read_by_polars.parquet"
    script = "import sys, polars; polars.read_parquet(sys.argv[1]).write_parquet(sys.argv[2])"
    done = subprocess.run([sys.executable, "-c", script, path, str(copy)], env=env, capture_output=True, text=True)
    if "No module named 'polars'" in done.stderr:
        pytest.skip("polars is not installed (make test installs it)")
    assert done.returncode == 0, done.stderr[-2000:]
    frame = pd.read_parquet(copy)
    assert len(frame) == len(expected) and list(frame.columns) == list(expected.columns)
    for column in STAT_COLUMNS:
        np.testing.assert_array_equal(frame[column].to_numpy(), expected[column].to_numpy())





def _trace_table(epochs: int, neurons: int) -> pa.Table:
    rng = np.random.default_rng(0)
    rows = epochs * neurons
    columns = {
        "epoch": pa.array(np.repeat(np.arange(epochs, dtype=np.int32), neurons)),
        "layer": pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)), pa.array(["fc"])),
        "neuron": pa.array(np.tile(np.arange(neurons, dtype=np.int32), epochs)),
    }
    columns.update({c: pa.array(rng.standard_normal(rows).astype(np.float32)) for c in STAT_COLUMNS})
    return pa.table(columns, schema=TRACE_SCHEMA)


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Python's file server: it ignores Range headers and always answers 200 with the whole file."""

    requests = 0

    def do_GET(self):
        type(self).requests += 1
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture()
def plain_file_server(tmp_path):
    handler = functools.partial(_CountingHandler, directory=str(tmp_path))
    _CountingHandler.requests = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_ignores_range_is_read_whole_once_and_gives_the_same_table(plain_file_server):
    directory, uri = plain_file_server
    table = _trace_table(epochs=50, neurons=300)
    write_trace_table(table, directory / "trace.parquet")
    ranged = RangedHttpFile(RemoteFile(base_uri=uri, endpoint="/trace.parquet"))
    read = pq.ParquetFile(pa.PythonFile(ranged, mode="r"), pre_buffer=True).read(columns=[*KEY_COLUMNS,
                                                                                         *SUMMARY_COLUMNS])
    assert read.equals(table.select([*KEY_COLUMNS, *SUMMARY_COLUMNS]))
    assert ranged.requests == 1 and _CountingHandler.requests == 1  # every later read came from the one copy
    assert ranged.fetched == ranged.size() == (directory / "trace.parquet").stat().st_size


def test_a_missing_file_is_an_error_not_an_empty_table(plain_file_server):
    _, uri = plain_file_server
    with pytest.raises(OSError, match="HTTP 404"):
        RangedHttpFile(RemoteFile(base_uri=uri, endpoint="/nothing.parquet")).size()
