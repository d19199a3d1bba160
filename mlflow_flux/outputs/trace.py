"""The trace output: every snapshot streamed to Parquet segments in the spool and the run, compacted into
``traces/traces.parquet`` and uploaded when the run closes (:class:`~mlflow_flux.traces.sink.TraceSink`)."""

from __future__ import annotations

from ..traces.runs import ACTIVATIONS_PARAM, format_activations
from ..traces.sink import TraceSink
from .base import Closing, RunOutput, Step, WatchedRun

__all__ = ["TraceOutput"]


class TraceOutput(RunOutput):
    """Writes the run's trace. Outputs after it find the sink in ``run.trace`` (to observe each segment, or read the
    trace back at close).

    Args:
        flush_every: snapshots per closed segment: at most this many are lost to a hard kill.
    """

    @classmethod
    def from_settings(cls, settings) -> TraceOutput:
        return cls(settings.flush_every)

    def __init__(self, flush_every: int = 10) -> None:
        self.flush_every = flush_every
        self.sink: TraceSink | None = None
        self.run: WatchedRun | None = None

    def start(self, run: WatchedRun) -> None:
        self.run = run
        self.sink = TraceSink(run.client, run.run_id, run.spool, flush_every=self.flush_every,
                              uploads=run.uploads).start()
        run.trace = self.sink

    def end_epoch(self, step: Step) -> None:
        if step.snapshot is None:
            return
        first = not self.sink.written
        self.sink.write(step.snapshot)  # TraceWriteError: the coordinator stops the recorder
        if first:  # by now a training pass showed which activation follows each layer: how to read the trace
            client, run_id = self.run.client, self.run.run_id
            value = format_activations(self.run.recorder.activations)[:6000]
            self.run.uploads.submit(lambda: client.log_param(run_id, ACTIVATIONS_PARAM, value))

    def close(self, closing: Closing) -> None:
        # The compaction runs on the writer thread while later outputs draw; the run's uploads wait for the file.
        self.sink.finish()
