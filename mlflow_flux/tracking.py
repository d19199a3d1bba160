"""Everything that writes to MLflow: batched metrics off the training thread, and the streaming trace sink.

Constructors only store settings; ``start()`` opens threads and directories; ``close()`` flushes and waits.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from .traces import PARTS_DIR, TRACE_ARTIFACT_DIR, TRACE_FILE, TRACE_SCHEMA

# Float columns split into byte streams compress ~40% better under zstd (26 against 42 bytes per neuron-epoch on
# the paper's model) and write 5x faster; pandas, pyarrow, DuckDB and Polars read the encoding.
_PARQUET_OPTIONS = {
    "use_byte_stream_split": [f.name for f in TRACE_SCHEMA if pa.types.is_floating(f.type)],
    "use_dictionary": ["layer"],
}

__all__ = [
    "write_trace_table",
    "MetricLogger",
    "TraceSink",
    "MAX_METRICS_PER_BATCH",
    "ROLE_TAG",
    "SWEEP_TAG",
    "FAILURE_TAG",
    "flux_tags",
    "ensure_runs_view",
]

_log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
ROW_GROUP_ROWS = 1 << 20  # ~1M rows: ~600 epochs of the paper's model per row group

def write_trace_table(table: pa.Table, path: str | Path, compression: str = "zstd") -> None:
    """Write trace rows the way the sink does (zstd, byte-stream-split floats)."""
    pq.write_table(table, path, compression=compression, **_PARQUET_OPTIONS)


ROLE_TAG = "mlflow_flux.role"  # sweep | variant | report
SWEEP_TAG = "mlflow_flux.sweep_id"
FAILURE_TAG = "mlflow_flux.failure"
_KIND_TAG = "mlflow.experimentKind"


def flux_tags(role: str, sweep_id: str | None = None) -> dict[str, str]:
    """The tags every run mlflow-flux creates carries."""
    from . import __version__
    from .plugin import VERSION_TAG

    tags = {ROLE_TAG: role, VERSION_TAG: __version__}
    if sweep_id is not None:
        tags[SWEEP_TAG] = sweep_id
    return tags


def ensure_runs_view(client: MlflowClient, experiment_id: str) -> None:
    """Make MLflow 3's UI open the experiment as a runs table (it would otherwise guess its GenAI view).

    Only an experiment without a kind is changed: a kind someone chose is kept.
    """
    experiment = client.get_experiment(experiment_id)
    if _KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment_id, _KIND_TAG, "custom_model_development")


class _Worker:
    """One background thread that runs queued jobs in order; ``close()`` drains the queue first.

    A job that raises is retried (the tracking store may be briefly locked by a sibling run); a job that keeps
    failing is dropped with a logged warning, and training goes on.
    """

    def __init__(self, name: str, retries: int = 3) -> None:
        self.name = name
        self.retries = retries
        self._queue: "queue.Queue[Callable[[], None] | None]" = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._queue.put(job)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            for attempt in range(self.retries + 1):
                try:
                    job()
                    break
                except Exception as exc:  # noqa: BLE001: a tracking hiccup must not kill training
                    if attempt == self.retries:
                        _log.warning("%s: giving up after %d tries: %s", self.name, attempt + 1, exc)
                    else:
                        time.sleep(0.2 * 2**attempt)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


class MetricLogger:
    """Collects metrics and sends them with ``log_batch`` from a background thread.

    Metrics are buffered and sent at most every ``interval`` seconds (or when 1000 are waiting), so a
    1000-epoch run costs a few dozen MLflow calls, not thousands.
    """

    def __init__(self, client: MlflowClient, run_id: str, interval: float = 5.0) -> None:
        self.client = client
        self.run_id = run_id
        self.interval = interval
        self._pending: list[Metric] = []
        self._last_send = 0.0
        self._worker = _Worker("mlflow-flux-metrics")

    def start(self) -> "MetricLogger":
        self._worker.start()
        self._last_send = time.monotonic()
        return self

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue metrics for one step; never blocks on the tracking server."""
        timestamp = int(time.time() * 1000)
        self._pending.extend(Metric(key, float(value), timestamp, step) for key, value in metrics.items())
        if len(self._pending) >= MAX_METRICS_PER_BATCH or time.monotonic() - self._last_send >= self.interval:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        self._last_send = time.monotonic()
        for start in range(0, len(pending), MAX_METRICS_PER_BATCH):
            chunk = pending[start : start + MAX_METRICS_PER_BATCH]
            self._worker.submit(lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk))

    def close(self) -> None:
        """Send what is left and wait until it is sent."""
        self.flush()
        self._worker.close()


class TraceSink:
    """Streams trace batches to Parquet segments on local disk and into the run's ``traces/`` artifacts.

    Every ``flush_every`` snapshots the buffered rows become one closed Parquet file (zstd) under
    ``<local_dir>/parts`` and are uploaded to ``traces/parts/`` in the background, so a process killed at any
    moment leaves all but the last ``flush_every`` snapshots readable, locally and in the run. ``close()``
    compacts the segments into one ``traces/traces.parquet`` (row groups of ~1M rows), uploads it, and
    removes the uploaded segments where the artifact store allows deletion.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        local_dir: str | Path,
        flush_every: int = 10,
        compression: str = "zstd",
    ) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.client = client
        self.run_id = run_id
        self.local_dir = Path(local_dir)
        self.flush_every = flush_every
        self.compression = compression
        self._buffer: list[pa.RecordBatch] = []
        self._parts: list[Path] = []
        self._worker = _Worker("mlflow-flux-traces")
        self.trace_path: Path | None = None

    @property
    def parts_dir(self) -> Path:
        return self.local_dir / PARTS_DIR

    def start(self) -> "TraceSink":
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self._worker.start()
        return self

    def write(self, batch: pa.RecordBatch) -> None:
        """Add one snapshot's rows; every ``flush_every`` snapshots a segment is closed and uploaded."""
        self._buffer.append(batch)
        if len(self._buffer) >= self.flush_every:
            self._close_segment()

    def _close_segment(self) -> None:
        if not self._buffer:
            return
        batches, self._buffer = self._buffer, []
        path = self.parts_dir / f"part-{len(self._parts):05d}.parquet"
        self._parts.append(path)

        def write_and_upload() -> None:
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                write_trace_table(pa.Table.from_batches(batches, TRACE_SCHEMA), tmp, self.compression)
                tmp.rename(path)  # a reader never sees half a segment
            self.client.log_artifact(self.run_id, str(path), f"{TRACE_ARTIFACT_DIR}/{PARTS_DIR}")

        self._worker.submit(write_and_upload)

    def close(self, upload: bool = True) -> Path | None:
        """Close the last segment, compact all segments into one file and (by default) log it to the run."""
        self._close_segment()
        self._worker.close()
        parts = [p for p in self._parts if p.exists()]
        if not parts:
            return None
        self.trace_path = self.local_dir / TRACE_FILE
        with pq.ParquetWriter(self.trace_path, TRACE_SCHEMA, compression=self.compression, **_PARQUET_OPTIONS) as writer:
            # Segments are merged into row groups of about ROW_GROUP_ROWS rows: few row groups mean few requests
            # for a reader over HTTP, while memory stays bounded by one row group whatever the number of epochs.
            pending: list[pa.Table] = []
            for part in parts:
                pending.append(pq.read_table(part, schema=TRACE_SCHEMA))
                if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS * 2)
                    pending = []
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS * 2)
        if upload:
            self.client.log_artifact(self.run_id, str(self.trace_path), TRACE_ARTIFACT_DIR)
            self._delete_uploaded_parts()
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        return self.trace_path

    def _delete_uploaded_parts(self) -> None:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            run = self.client.get_run(self.run_id)
            get_artifact_repository(run.info.artifact_uri).delete_artifacts(f"{TRACE_ARTIFACT_DIR}/{PARTS_DIR}")
        except Exception as exc:  # noqa: BLE001: readers prefer traces.parquet; leftover segments are harmless
            _log.info("kept traces/%s in the run (the artifact store did not delete them: %s)", PARTS_DIR, exc)
