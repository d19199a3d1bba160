"""The streaming trace sink: snapshots become closed Parquet segments on local disk and in the run's artifacts.

Two background threads: one writes segments to the local spool (never waits on the network), one uploads them
(waits while the tracking server is unreachable). Constructors only store settings; ``start()`` opens the spool
and the threads; ``close()`` compacts the segments into one file and logs it.

What is kept, whatever happens: a local file is deleted only once its content is elsewhere on local disk (segments,
once compacted and checked) or confirmed in the run (the compacted trace). A segment that cannot be written (a
full disk) stops the sink with one error; everything written before stays. Every file the sink was asked to upload
(the trace, figures, the explorer page) is accounted for: :attr:`SinkResult.missing` names those the run does not
hold, and the spool that keeps them stays.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import FluxError
from . import mlflow_adapter
from .background import Worker
from .schema import (
    PARQUET_OPTIONS,
    PARTS_DIR,
    TRACE_ARTIFACT_DIR,
    TRACE_FILE,
    TRACE_SCHEMA,
    Snapshot,
    snapshots_to_table,
    write_trace_table,
)
from .uploads import Uploads

__all__ = ["TraceSink", "TraceWriteError", "SinkResult", "ROW_GROUP_ROWS", "compact_segments", "TRACE_KEY"]

_log = logging.getLogger(__name__)

# 128 Ki rows (~78 epochs of the paper's model, ~9 MB decoded): a reader's memory is one row group, whatever the
# epochs (1 Mi rows took a reader ~50 MiB more, growing with the epochs up to it), and a query at one epoch fetches
# one row group's column chunks, not 600 epochs' worth.
ROW_GROUP_ROWS = 1 << 17
TRACE_KEY = f"{TRACE_ARTIFACT_DIR}/{TRACE_FILE}"  # the compacted trace's artifact path


class TraceWriteError(FluxError):
    """The local spool cannot take another segment (a full disk, a lost mount): the recorder stops."""


@dataclass(frozen=True)
class SinkResult:
    """What ``close()`` left, and where."""

    local_dir: Path
    trace_path: Path | None  # the compacted trace on local disk (None: no snapshot, or compaction failed)
    uploaded: bool  # the compacted trace is confirmed in the run (or there was none)
    missing: tuple[str, ...] = ()  # artifact paths the run does not hold (the trace, figures, ...)

    @property
    def kept(self) -> Path | None:
        """The local directory that still holds what the run lacks, or None when the run has it all."""
        return None if not self.missing or not self.local_dir.exists() else self.local_dir


class TraceSink:
    """Streams trace batches to Parquet segments on local disk and into the run's ``traces/`` artifacts.

    Every ``flush_every`` snapshots the buffered rows become one closed Parquet file (zstd) under
    ``<local_dir>/parts`` and are uploaded to ``traces/parts/`` in the background, so a process killed at any
    moment leaves all but the last ``flush_every`` snapshots readable, locally and in the run. ``close()``
    compacts the segments into one ``traces/traces.parquet`` (row groups of ROW_GROUP_ROWS rows), uploads it, and
    removes the uploaded segments where the artifact store allows deletion.

    ``observers`` are handed each segment's snapshots on the writer thread before the segment is written (the
    explorer pools them there, so close() need not read the trace back); one that raises is dropped, with a warning.

    ``uploads``, when given, are the run's uploads the sink shares with the run's other files (a watched run's
    figures and pages): the caller closes them; without, the sink has its own and :meth:`wait` closes them.
    """

    def __init__(self, client, run_id: str, local_dir: str | Path, flush_every: int = 10,
                 reachable: Callable[[], bool] | None = None, uploads: Uploads | None = None) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.client = client
        self.run_id = run_id
        self.local_dir = Path(local_dir)
        self.flush_every = flush_every
        self._buffer: list[Snapshot] = []
        self._parts: list[Path] = []
        self._writer = Worker("mlflow-flux-trace-writer", retries=0)
        self._own_uploads = uploads is None
        self._uploads = uploads if uploads is not None else Uploads(client, run_id, reachable)
        self._write_error: OSError | None = None
        self._trace_path: Path | None = None
        self._observers: list[Callable[[list[Snapshot]], None]] = []
        self._written = 0
        self._segments_done = threading.Event()  # set on the writer thread once finish()'s last segment is written

    @property
    def parts_dir(self) -> Path:
        return self.local_dir / PARTS_DIR

    @property
    def offline(self) -> bool:
        return self._uploads.offline

    @property
    def written(self) -> int:
        """Snapshots taken so far."""
        return self._written

    def observe(self, observer: Callable[[list[Snapshot]], None]) -> None:
        """Hand ``observer`` each segment's snapshots, on the writer thread, before the segment is written."""
        self._observers.append(observer)

    def start(self) -> TraceSink:
        try:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FluxError(f"cannot create the trace spool {self.parts_dir}: {exc.strerror or exc}") from None
        self._writer.start()
        if self._own_uploads:
            self._uploads.start()
        return self

    def write(self, snapshot: Snapshot) -> None:
        """Add one snapshot (the sink keeps it: it must not change afterwards); every ``flush_every`` snapshots a
        segment is written and uploaded, on the background threads.

        Raises:
            TraceWriteError: an earlier segment could not be written; nothing more is taken.
        """
        self._raise_write_error()
        if not self._parts and not self._buffer:  # the run will hold a trace: missing until it arrives
            self._uploads.expect(TRACE_KEY)
        self._buffer.append(snapshot)
        self._written += 1
        if len(self._buffer) >= self.flush_every:
            self._close_segment()

    def _raise_write_error(self) -> None:
        error = self._write_error
        if error is not None:
            written = [p.name for p in self._parts if p.exists()]
            raise TraceWriteError(
                f"cannot write the trace to {self.parts_dir}: {error.strerror or error}; the recorder stopped. "
                f"{len(written)} segment(s) written before are kept there" + (" and in the run" if written else "")
            )

    def _close_segment(self) -> None:
        if not self._buffer:
            return
        snapshots, self._buffer = self._buffer, []
        path = self.parts_dir / f"part-{len(self._parts):05d}.parquet"
        self._parts.append(path)
        self._writer.submit(lambda: self._write_segment(path, snapshots))

    def _write_segment(self, path: Path, snapshots: list[Snapshot]) -> None:
        if self._write_error is not None:
            return
        for observer in list(self._observers):
            try:
                observer(snapshots)
            except Exception as exc:  # noqa: BLE001 -- what observes the trace never stops it
                _log.warning("run %s: %s stopped observing the trace: %s", self.run_id, observer, exc)
                self._observers.remove(observer)
        tmp = path.with_suffix(".tmp")
        try:
            write_trace_table(snapshots_to_table(snapshots), tmp)
            tmp.rename(path)  # a reader never sees half a segment
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            self._write_error = exc
            _log.error("cannot write trace segment %s: %s", path, exc)
            return
        self._uploads.submit(lambda: self._upload_segment(path))

    def _upload_segment(self, path: Path) -> None:
        if not path.exists():  # compacted and removed meanwhile: the compacted file carries these rows
            return
        self.client.log_artifact(self.run_id, str(path), f"{TRACE_ARTIFACT_DIR}/{PARTS_DIR}")

    @property
    def write_error(self) -> OSError | None:
        return self._write_error

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every segment closed so far is written and uploaded (at most ``timeout`` seconds for the
        uploads); the sink stays open. True when nothing is left."""
        self._writer.wait()
        return self._uploads.drain(timeout)

    def upload(self, path: Path, artifact_dir: str | None) -> None:
        """Queue another local file for the run's artifacts (e.g. a figure written into the spool); ``artifact_dir``
        None: the run's root. :attr:`SinkResult.missing` names it if it does not arrive."""
        self._uploads.upload(path, artifact_dir)

    def finish(self) -> None:
        """Close the last segment and queue the compaction (writer thread) and its upload (uploader thread).

        Returns at once: the caller can do other work (figures) while both run; :meth:`wait` collects the result.
        """
        if self._write_error is None:
            self._close_segment()
        self._writer.submit(self._segments_done.set)
        self._writer.submit(self._compact_and_queue_upload)
        self._writer.stop()  # the thread ends once the compaction is done

    def segments_written(self, timeout: float | None = None) -> bool:
        """After :meth:`finish`: wait until every segment is written (and observed), not for the compaction."""
        return self._segments_done.wait(timeout)

    def _compact_and_queue_upload(self) -> None:
        parts = [p for p in self._parts if p.exists()]
        if parts and self._write_error is None:
            self._trace_path = self._compact(parts)
        if self._trace_path is not None:
            path = self._trace_path
            self._uploads.upload(path, TRACE_ARTIFACT_DIR, confirm=lambda: self._trace_arrived(path))
        else:
            self._uploads.give_up(TRACE_KEY)  # the segments are the run's copy, and the spool keeps them

    def compacted(self) -> Path | list[Path] | None:
        """After :meth:`finish`: wait for the local writes, then the compacted trace on local disk (or, where
        compaction failed, its segments; None when there is no snapshot). It stays there until :meth:`wait`."""
        self._writer.wait()
        if self._trace_path is not None and self._trace_path.exists():
            return self._trace_path
        parts = [p for p in self._parts if p.exists()]
        return parts or None

    def wait(self, timeout: float | None = None) -> SinkResult:
        """Wait for local writes, then at most ``timeout`` seconds for uploads. Without a confirmed upload the
        local directory stays, with the compacted trace (or the segments) in it."""
        self._writer.close()
        done = self._uploads.close(timeout) if self._own_uploads else True
        missing = self._uploads.missing
        if self._own_uploads and done and not missing:
            shutil.rmtree(self.local_dir, ignore_errors=True)
        return SinkResult(self.local_dir, self._trace_path, TRACE_KEY not in missing, missing)

    def close(self, timeout: float | None = None) -> SinkResult:
        """:meth:`finish`, then :meth:`wait`."""
        self.finish()
        return self.wait(timeout)

    def _compact(self, parts: list[Path]) -> Path | None:
        """Merge the segments into one file; the segments go once it is checked."""
        try:
            return compact_segments(parts, self.local_dir / TRACE_FILE)
        except OSError as exc:
            _log.error("cannot compact the trace in %s (%s): its segments are kept there", self.local_dir, exc)
            return None

    def _trace_arrived(self, path: Path) -> bool:
        """After the compacted trace's upload: whether the run holds it; if so its segments go from the run."""
        if not self._confirmed(path):
            return False  # the segments in the run stay: they are then the run's copy
        try:  # readers prefer traces.parquet; segments left in the run are harmless
            run = self.client.get_run(self.run_id)
            mlflow_adapter.delete_artifacts(run.info.artifact_uri, f"{TRACE_ARTIFACT_DIR}/{PARTS_DIR}")
        except Exception as exc:  # noqa: BLE001 -- e.g. a store that does not delete
            _log.info("kept traces/%s in the run (the artifact store did not delete them: %s)", PARTS_DIR, exc)
        return True

    def _confirmed(self, path: Path) -> bool:
        """The run lists the compacted trace with its size (a store that lists no sizes is taken at its word)."""
        try:
            listed = {f.path: f.file_size for f in self.client.list_artifacts(self.run_id, TRACE_ARTIFACT_DIR)}
        except Exception as exc:  # noqa: BLE001 -- unconfirmed: keep the local copy
            _log.warning("could not confirm the trace upload of run %s: %s", self.run_id, exc)
            return False
        key = f"{TRACE_ARTIFACT_DIR}/{TRACE_FILE}"
        return key in listed and listed[key] in (None, path.stat().st_size)


def compact_segments(parts: list[Path], path: Path) -> Path:
    """Merge trace segments into one file at ``path`` (row groups of about ROW_GROUP_ROWS rows: few requests for a
    reader over HTTP, memory bounded by one row group whatever the number of epochs); the segments are deleted once
    the file is written and holds their rows.

    Raises:
        OSError: the file could not be written or does not hold the segments' rows (the segments are kept).
    """
    tmp = path.with_suffix(".tmp")
    try:
        rows = 0
        with pq.ParquetWriter(tmp, TRACE_SCHEMA, **PARQUET_OPTIONS) as writer:
            pending: list[pa.Table] = []
            for part in parts:
                pending.append(pq.read_table(part, schema=TRACE_SCHEMA))
                rows += pending[-1].num_rows
                if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
                    table = pa.concat_tables(pending)
                    whole = table.num_rows - table.num_rows % ROW_GROUP_ROWS
                    writer.write_table(table.slice(0, whole), row_group_size=ROW_GROUP_ROWS)
                    pending = [table.slice(whole)]  # the rest starts the next row group
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
        if pq.ParquetFile(tmp).metadata.num_rows != rows:
            raise OSError(f"the compacted trace does not hold the {rows} rows of its segments")
        tmp.rename(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for part in parts:
        part.unlink()
    return path
