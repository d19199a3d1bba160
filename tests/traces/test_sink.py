"""The trace sink against a real sqlite store, and the background worker's retries."""

import logging
import subprocess

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

import mlflow_flux
from mlflow_flux.traces.background import Worker
from mlflow_flux.traces.reader import read_trace_files
from mlflow_flux.traces.schema import STAT_COLUMNS, Snapshot
from mlflow_flux.traces.sink import TraceSink, TraceWriteError


def _snapshot(epoch: int) -> Snapshot:
    stats = np.full((len(STAT_COLUMNS), 5), float(epoch), dtype=np.float32)
    stats[0] = np.arange(5) + epoch / 10
    return Snapshot(epoch, ["a", "b"], np.array([0, 0, 0, 1, 1], np.int32), np.array([0, 1, 2, 0, 1], np.int32),
                    stats, 0)


def _artifacts(client, run_id, path):
    return {f.path for f in client.list_artifacts(run_id, path)}


def test_segments_reach_the_run_while_training_and_compact_at_close(store, tmp_path):
    client = MlflowClient()
    run_id = client.create_run(store["experiment_id"]).info.run_id
    sink = TraceSink(client, run_id, tmp_path / "spool", flush_every=3).start()
    for epoch in range(7):
        sink.write(_snapshot(epoch))
    assert sink.drain(timeout=30)  # the background writes and uploads of the two closed segments
    assert _artifacts(client, run_id, "traces/parts") == {"traces/parts/part-00000.parquet",
                                                          "traces/parts/part-00001.parquet"}
    result = sink.close(timeout=30)
    assert result.uploaded and result.kept is None
    assert not (tmp_path / "spool").exists()  # removed only once the run confirmed the compacted trace
    path = client.download_artifacts(run_id, "traces/traces.parquet", str(tmp_path))
    table = read_trace_files([path]).to_pandas()
    assert table.epoch.tolist() == [e for e in range(7) for _ in range(5)]
    np.testing.assert_array_equal(table.w_std, np.array([n + e / 10 for e in range(7) for n in range(5)], np.float32))
    assert _artifacts(client, run_id, "traces") == {"traces/traces.parquet"}  # segments deleted once compacted
    assert pq.ParquetFile(path).metadata.num_row_groups == 1


class _FlakyClient:
    """A real client whose first ``failures`` artifact uploads raise, as a briefly unavailable store does."""

    def __init__(self, failures: int) -> None:
        self.client = MlflowClient()
        self.failures = failures
        self.attempts = 0

    def log_artifact(self, *args, **kwargs):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionError("the store is briefly unavailable")
        return self.client.log_artifact(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_an_upload_that_fails_twice_is_retried_and_lands(store, tmp_path):
    client = _FlakyClient(failures=2)
    run_id = client.create_run(store["experiment_id"]).info.run_id
    sink = TraceSink(client, run_id, tmp_path / "spool", flush_every=1).start()
    sink.write(_snapshot(0))
    assert sink.drain(timeout=30)
    assert client.attempts == 3
    assert _artifacts(client.client, run_id, "traces/parts") == {"traces/parts/part-00000.parquet"}


def test_worker_runs_jobs_in_order_retries_and_drops_a_job_that_keeps_failing(caplog):
    done, tries = [], {"flaky": 0, "broken": 0}

    def flaky():
        tries["flaky"] += 1
        if tries["flaky"] < 3:
            raise RuntimeError("not yet")
        done.append("flaky")

    def broken():
        tries["broken"] += 1
        raise RuntimeError("never")

    worker = Worker("test-worker", retries=3, backoff=0.001)
    worker.start()
    for job in (lambda: done.append(1), flaky, broken, lambda: done.append(2)):
        worker.submit(job)
    with caplog.at_level(logging.WARNING):
        worker.close()
    assert done == [1, "flaky", 2] and tries == {"flaky": 3, "broken": 4}
    assert "test-worker: giving up after 4 tries: never" in caplog.text


@pytest.fixture()
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs: a disk that really fills up (needs root, as on this project's machines and CI)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_recorder_once_and_keeps_what_was_written(store, tiny_disk):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 2048), nn.ReLU(), nn.Linear(2048, 64))  # ~50 KB per segment of 2
    with pytest.raises(TraceWriteError, match="No space left on device") as raised:
        with mlflow.start_run() as run:
            with mlflow_flux.watch(model, flush_every=2, trace_dir=tiny_disk, log_figures=False) as flux:
                for epoch in range(1000):
                    model(torch.randn(8, 16)).sum().backward()
                    flux.end_epoch(epoch)
    assert epoch < 100  # it stopped the first time it found the disk full, not 1000 epochs later
    assert "segment(s) written before are kept there and in the run" in str(raised.value)
    kept = sorted((tiny_disk / "parts").glob("part-*.parquet"))
    assert kept and not list((tiny_disk / "parts").glob("*.tmp"))
    local = read_trace_files(kept).to_pandas()
    remote = mlflow_flux.load_traces(run.info.run_id)
    assert sorted(set(remote.epoch)) == sorted(set(local.epoch)) == list(range(2 * len(kept)))
    assert MlflowClient().get_run(run.info.run_id).info.status == "FAILED"  # MLflow's context saw the error
