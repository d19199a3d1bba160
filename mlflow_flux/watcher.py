"""``mlflow_flux.watch(model)``: record every neuron of any PyTorch training loop into the active MLflow run.

    with mlflow.start_run():
        with mlflow_flux.watch(model) as flux:
            for epoch in range(epochs):
                ...                                   # your loop, untouched
                flux.end_epoch(epoch, {"loss/train": loss})
"""

from __future__ import annotations

import collections
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient
from torch import nn

from . import fluctuation
from .errors import FluxError
from .recording.layers import LayerSpec
from .recording.recorder import NeuronRecorder
from .report import plots
from .traces.metrics import MetricLogger
from .traces.reader import read_trace_files
from .traces.schema import SUMMARY_COLUMNS, Snapshot, snapshot_to_batch
from .traces.sink import TraceSink

__all__ = ["FluxWatcher", "watch", "TRACE_DIR_TAG"]

TRACE_DIR_TAG = "mlflow_flux.trace_dir"


class FluxWatcher:
    """Hooks on a model plus the sinks of one run. Build it with :func:`watch`; use it as a context manager."""

    def __init__(
        self,
        model: nn.Module,
        *,
        run_id: str | None = None,
        layers: Sequence[LayerSpec] | None = None,
        snapshot_every: int = 1,
        window: int = fluctuation.DEFAULT_WINDOW,
        tau: float = fluctuation.DEFAULT_TAU,
        summary_every: int = 10,
        flush_every: int = 10,
        trace_dir: str | Path | None = None,
        log_figures: bool = True,
        metrics_interval: float = 5.0,
    ) -> None:
        if window < 2:
            raise FluxError(f"window must be >= 2 snapshots, got {window}")
        if not (tau > 0 and np.isfinite(tau)):
            raise FluxError(f"tau must be a positive number, got {tau!r}")
        if flush_every < 1:
            raise FluxError(f"flush_every must be >= 1, got {flush_every}")
        if summary_every < 1:
            raise FluxError(f"summary_every must be >= 1, got {summary_every}")
        self.recorder = NeuronRecorder(model, layers=layers, snapshot_every=snapshot_every)
        self.run_id = run_id
        self.window = window
        self.tau = tau
        self.summary_every = summary_every
        self.flush_every = flush_every
        self.trace_dir = Path(trace_dir) if trace_dir is not None else None
        self.log_figures = log_figures
        self.metrics_interval = metrics_interval
        self.client: MlflowClient | None = None
        self.metrics: MetricLogger | None = None
        self.sink: TraceSink | None = None
        self._recent: dict[str, collections.deque] = {}
        self._last_epoch: int | None = None
        self._snapshots = 0
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> "FluxWatcher":
        """Resolve the run, attach the hooks, open the sinks, and log the recorder's settings as params."""
        import mlflow

        if self.run_id is None:
            active = mlflow.active_run()
            if active is None:
                raise FluxError("no active MLflow run: call mlflow.start_run() first, or pass run_id=...")
            self.run_id = active.info.run_id
        self.client = MlflowClient()
        if "flux.layers" in self.client.get_run(self.run_id).data.params:
            raise FluxError(
                f"run {self.run_id} already holds a watcher's traces: start another run "
                "(mlflow.start_run(nested=True)) for a second watch"
            )
        self.recorder.attach()
        try:
            self._open_sinks()
        except BaseException:
            self.recorder.detach()  # a watcher that failed to start leaves no hook on the user's model
            raise
        return self

    def _open_sinks(self) -> None:
        if self.trace_dir is None:
            self.trace_dir = Path(tempfile.gettempdir()) / "mlflow-flux" / self.run_id
        self.sink = TraceSink(self.client, self.run_id, self.trace_dir, flush_every=self.flush_every).start()
        self.metrics = MetricLogger(self.client, self.run_id, interval=self.metrics_interval).start()
        self._recent = {name: collections.deque(maxlen=self.window) for name in self.recorder.layer_names}
        self.client.log_batch(
            self.run_id,
            params=[
                Param("flux.window", str(self.window)),
                Param("flux.tau", str(self.tau)),
                Param("flux.snapshot_every", str(self.recorder.snapshot_every)),
                Param("flux.summary_every", str(self.summary_every)),
                Param("flux.flush_every", str(self.flush_every)),
                Param("flux.layers", ",".join(self.recorder.layer_names)[:6000]),
                Param("flux.fastpath", self.recorder.path),
            ],
            tags=[RunTag(TRACE_DIR_TAG, str(self.trace_dir))],
        )

    def __enter__(self) -> "FluxWatcher":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._end_run_killed()

    def _end_run_killed(self) -> None:
        """Ctrl-C: the run ends KILLED (MLflow's own context manager would record FAILED)."""
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            mlflow.end_run("KILLED")  # popped from the fluent stack, so start_run's __exit__ leaves it alone
        elif self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, "KILLED")

    # -- per epoch ---------------------------------------------------------------------------------------------

    def end_epoch(self, epoch: int, metrics: Mapping[str, float] | None = None) -> dict[str, float]:
        """Close an epoch: log ``metrics`` (e.g. the loss) and, on snapshot epochs, one trace snapshot and summaries.

        Returns:
            The metrics queued for this epoch, ``flux/...`` summaries included.

        Raises:
            FluxError: the watcher is not started, or ``epoch`` does not increase.
        """
        if self.sink is None or self.metrics is None or self._closed:
            raise FluxError("end_epoch() outside the watcher: use `with mlflow_flux.watch(model) as flux:`")
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise FluxError(f"end_epoch() takes a non-negative integer epoch, got {epoch!r}")
        if self._last_epoch is not None and epoch <= self._last_epoch:
            raise FluxError(f"end_epoch({epoch}) after end_epoch({self._last_epoch}): epochs must increase")
        self._last_epoch = int(epoch)
        logged = {key: float(value) for key, value in (metrics or {}).items()}
        if self.recorder.should_snapshot(epoch):
            snapshot = self.recorder.snapshot(int(epoch))
            self.sink.write(snapshot_to_batch(snapshot))
            logged.update(self._summaries(snapshot))
        if logged:
            self.metrics.log(logged, step=int(epoch))
        return logged

    def _summaries(self, snapshot: Snapshot) -> dict[str, float]:
        """Summary metrics of the window ending at this snapshot, on every ``summary_every``-th snapshot.

        Each ``log_batch`` costs MLflow's sqlite store ~0.2 ms per metric: a few dozen keys every epoch would
        cost more than the hooks. The trace keeps every snapshot, and the report recomputes every epoch.
        """
        for name, recent in self._recent.items():
            rows = snapshot.layer_slice(name)
            recent.append({c: snapshot.column(c)[rows] for c in SUMMARY_COLUMNS})
        self._snapshots += 1
        out = {"flux/nonfinite": float(snapshot.nonfinite)} if snapshot.nonfinite else {}
        if (self._snapshots - self.window) % self.summary_every != 0 or self._snapshots < self.window:
            return out
        # The same shaping as the offline recomputation: one stack of the last `window` snapshots per layer.
        layers = {
            name: {c: np.stack([s[c] for s in recent]) for c in SUMMARY_COLUMNS}
            for name, recent in self._recent.items()
        }
        row = fluctuation.window_summaries(layers, self.window, self.tau)
        out["flux/nonfinite"] = float(snapshot.nonfinite)
        out.update((f"flux/{key}", float(values[0])) for key, values in row.items())
        return out

    # -- closing -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Remove the hooks, flush metrics, compact and log the trace, and log the figures. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.recorder.detach()
        if self.sink is None or self.metrics is None:
            return
        try:
            self.metrics.close()
            trace_path = self.sink.close(upload=True)
            if trace_path is not None and self.log_figures:
                self._log_figures(trace_path)
        finally:
            if self.sink.trace_path is not None and self.trace_dir is not None:
                shutil.rmtree(self.trace_dir, ignore_errors=True)

    def _log_figures(self, trace_path: Path) -> None:
        trace = read_trace_files([trace_path], columns=SUMMARY_COLUMNS).to_pandas()
        summaries = fluctuation.summaries_over_epochs(trace, self.window, self.tau)
        for name, figure in plots.trace_figures(trace, summaries).items():
            self.client.log_figure(self.run_id, figure, f"figures/{name}.png")


def watch(model: nn.Module, **options) -> FluxWatcher:
    """Record every neuron of ``model`` into the active MLflow run.

    Args:
        model: any ``nn.Module``; by default every ``Linear`` and ``Conv1d/2d/3d`` layer is watched.
        **options: ``layers`` (names, glob patterns or module types), ``snapshot_every`` (epochs),
            ``window`` (snapshots per fluctuation window), ``tau`` (participation threshold),
            ``summary_every`` (log the ``flux/...`` summaries on every N-th snapshot, from the first full window),
            ``flush_every`` (snapshots per closed trace segment: what a SIGKILL can lose), ``run_id``,
            ``trace_dir`` (local spool), ``log_figures``.

    Returns:
        A :class:`FluxWatcher`; use it as a context manager and call ``end_epoch(epoch)`` once per epoch.

    While watched, each watched layer has a tensor hook on its weight and, on CPU with the compiled fast path, a
    wrapper as its ``forward`` (elsewhere a forward hook); all are taken out on exit. A ``copy.deepcopy`` or
    ``torch.save`` of the model meanwhile gives a plain, unwatched model.
    """
    return FluxWatcher(model, **options)
