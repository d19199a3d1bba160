"""The streaming trace sink: snapshots become closed Parquet segments on local disk and in the run's artifacts.

Constructors only store settings; ``start()`` opens the directory and the upload thread; ``close()`` compacts the
segments into one file and logs it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import mlflow_adapter
from .background import Worker
from .schema import PARQUET_OPTIONS, PARTS_DIR, TRACE_ARTIFACT_DIR, TRACE_FILE, TRACE_SCHEMA, write_trace_table

__all__ = ["TraceSink", "ROW_GROUP_ROWS"]

_log = logging.getLogger(__name__)

ROW_GROUP_ROWS = 1 << 20  # ~1M rows: ~600 epochs of the paper's model per row group


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
        client,
        run_id: str,
        local_dir: str | Path,
        flush_every: int = 10,
    ) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.client = client
        self.run_id = run_id
        self.local_dir = Path(local_dir)
        self.flush_every = flush_every
        self._buffer: list[pa.RecordBatch] = []
        self._parts: list[Path] = []
        self._worker = Worker("mlflow-flux-traces")
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
                write_trace_table(pa.Table.from_batches(batches, TRACE_SCHEMA), tmp)
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
        with pq.ParquetWriter(self.trace_path, TRACE_SCHEMA, **PARQUET_OPTIONS) as writer:
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
        try:
            run = self.client.get_run(self.run_id)
            mlflow_adapter.delete_artifacts(run.info.artifact_uri, f"{TRACE_ARTIFACT_DIR}/{PARTS_DIR}")
        except Exception as exc:  # noqa: BLE001 -- readers prefer traces.parquet; leftover segments are harmless
            _log.info("kept traces/%s in the run (the artifact store did not delete them: %s)", PARTS_DIR, exc)
