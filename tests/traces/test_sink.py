"""The trace sink against a real sqlite store, and the background worker's retries."""

import logging

import numpy as np
import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

from mlflow_flux.traces.background import Worker
from mlflow_flux.traces.reader import read_trace_files
from mlflow_flux.traces.schema import STAT_COLUMNS, Snapshot, snapshot_to_batch
from mlflow_flux.traces.sink import TraceSink


def _snapshot(epoch: int) -> Snapshot:
    stats = np.full((5, len(STAT_COLUMNS)), float(epoch), dtype=np.float32)
    stats[:, 0] = np.arange(5) + epoch / 10
    return Snapshot(epoch, ["a", "b"], np.array([0, 0, 0, 1, 1], np.int32), np.array([0, 1, 2, 0, 1], np.int32),
                    stats, 0)


def _artifacts(client, run_id, path):
    return {f.path for f in client.list_artifacts(run_id, path)}


def test_segments_reach_the_run_while_training_and_compact_at_close(store, tmp_path):
    client = MlflowClient()
    run_id = client.create_run(store["experiment_id"]).info.run_id
    sink = TraceSink(client, run_id, tmp_path / "spool", flush_every=3).start()
    for epoch in range(7):
        sink.write(snapshot_to_batch(_snapshot(epoch)))
    sink._worker.close()  # wait for the background uploads, as a reader polling the run would
    sink._worker.start()
    assert _artifacts(client, run_id, "traces/parts") == {"traces/parts/part-00000.parquet",
                                                          "traces/parts/part-00001.parquet"}
    path = sink.close()
    table = read_trace_files([path]).to_pandas()
    assert table.epoch.tolist() == [e for e in range(7) for _ in range(5)]
    np.testing.assert_array_equal(table.w_std, np.array([n + e / 10 for e in range(7) for n in range(5)], np.float32))
    assert _artifacts(client, run_id, "traces") == {"traces/traces.parquet"}  # segments deleted once compacted
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    assert not (tmp_path / "spool" / "parts").exists()


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
    sink = TraceSink(client, run_id, tmp_path / "spool", flush_every=1)
    sink._worker.backoff = 0.01
    sink.start()
    sink.write(snapshot_to_batch(_snapshot(0)))
    sink._worker.close()
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
