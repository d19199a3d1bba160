"""``mlflow_flux.watch(model)``: record every neuron of any PyTorch training loop into the active MLflow run.

    with mlflow.start_run():
        with mlflow_flux.watch(model) as flux:
            for epoch in range(epochs):
                ...                                   # your loop, untouched
                flux.end_epoch(epoch, {"loss/train": loss})
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import numbers
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from torch import nn

from . import fluctuation
from .errors import FluxError, InvalidParameter
from .interrupts import stop_on_signals
from .recording import distributed
from .recording.layers import LayerSpec
from .recording.recorder import NeuronRecorder
from .report.figure_data import RunFigureData
from .traces.metrics import MetricLogger
from .traces.mlflow_adapter import abandon_active_run
from .traces.schema import SUMMARY_COLUMNS, Snapshot
from .traces.server import check_reachable, health_probe
from .traces.sink import TraceSink, TraceWriteError

__all__ = ["FluxWatcher", "WatchResult", "watch", "DEFAULT_UPLOAD_TIMEOUT", "UPLOAD_TIMEOUT_ENV", "default_upload_timeout"]

_log = logging.getLogger(__name__)

DEFAULT_UPLOAD_TIMEOUT = 60.0  # seconds close() waits for uploads once training is over
UPLOAD_TIMEOUT_ENV = "MLFLOW_FLUX_UPLOAD_TIMEOUT"  # sets that default, e.g. for every variant of a sweep


def default_upload_timeout() -> float:
    """Seconds close() waits for uploads: ``$MLFLOW_FLUX_UPLOAD_TIMEOUT``, else 60."""
    raw = os.environ.get(UPLOAD_TIMEOUT_ENV)
    return DEFAULT_UPLOAD_TIMEOUT if raw is None else _positive_option(UPLOAD_TIMEOUT_ENV, _number(raw))


def _number(raw: str) -> object:
    try:
        return float(raw)
    except ValueError:
        return raw


def _int_option(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidParameter(name, value, f"expected an integer >= {minimum}")
    return int(value)


def _positive_option(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise InvalidParameter(name, value, "expected a positive number")
    return float(value)


SETTINGS_PREFIXES = ("flux.", "")


def _layer_metrics_option(value: object) -> tuple[str, ...]:
    """``False``: whole-network summaries only; ``True``: every summary per layer too; or the summaries wanted per
    layer, e.g. ``["participating_frac"]``."""
    if isinstance(value, bool):
        return fluctuation.SUMMARY_KEYS if value else ()
    if isinstance(value, str):
        raise InvalidParameter("layer_metrics", value, f"expected a list, e.g. layer_metrics=[{value!r}]")
    try:
        keys = tuple(value)
    except TypeError:
        raise InvalidParameter("layer_metrics", value, "expected True, False or a list of summary names") from None
    unknown = [key for key in keys if key not in fluctuation.SUMMARY_KEYS]
    if unknown:
        raise InvalidParameter("layer_metrics", unknown[0],
                               f"expected summary names among {', '.join(fluctuation.SUMMARY_KEYS)}")
    return keys


def _layers_option(layers: object) -> list[LayerSpec] | None:
    if layers is None:
        return None
    if isinstance(layers, (str, type)):
        raise InvalidParameter("layers", layers, f"expected a list, e.g. layers=[{layers!r}]"
                               if isinstance(layers, str) else f"expected a list, e.g. layers=[{layers.__name__}]")
    try:
        specs = list(layers)
    except TypeError:
        raise InvalidParameter("layers", layers, "expected a list of names, glob patterns or module types") from None
    if not specs:
        raise InvalidParameter("layers", layers, "expected at least one name, pattern or type; None watches every "
                                                 "Linear and Conv layer")
    for spec in specs:
        if not isinstance(spec, (str, type)):
            raise InvalidParameter("layers", spec, "expected a name, a glob pattern or a module type")
    return specs


@dataclass(frozen=True)
class WatchResult:
    """What reached the run when the watcher closed."""

    run_id: str
    uploaded: bool  # the compacted trace is confirmed in the run
    kept_trace: Path | None  # where the trace stayed on local disk (the run does not have it all)
    lost_metrics: int  # metrics the run did not get
    offline: bool  # the tracking server stopped answering

    @property
    def complete(self) -> bool:
        return self.uploaded and not self.lost_metrics and not self.offline


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
        trace_dir: str | os.PathLike | None = None,
        log_figures: bool = True,
        metrics_interval: float = 5.0,
        upload_timeout: float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        layer_metrics: bool | Sequence[str] = False,
        settings_prefix: str = "flux.",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidParameter("model", type(model).__name__, "expected a torch.nn.Module")
        if run_id is not None and not isinstance(run_id, str):
            raise InvalidParameter("run_id", run_id, "expected a run id string")
        if trace_dir is not None and not isinstance(trace_dir, (str, os.PathLike)):
            raise InvalidParameter("trace_dir", trace_dir, "expected a directory path")
        if not isinstance(log_figures, bool):
            raise InvalidParameter("log_figures", log_figures, "expected True or False")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise InvalidParameter("optimizer", type(optimizer).__name__, "expected a torch.optim.Optimizer")
        self.layer_metrics = _layer_metrics_option(layer_metrics)
        if settings_prefix not in SETTINGS_PREFIXES:
            raise InvalidParameter("settings_prefix", settings_prefix,
                                   f"expected one of {', '.join(map(repr, SETTINGS_PREFIXES))}")
        self.settings_prefix = settings_prefix
        self.recorder = NeuronRecorder(model, layers=_layers_option(layers),
                                       snapshot_every=_int_option("snapshot_every", snapshot_every, 1),
                                       optimizer=optimizer)
        self.run_id = run_id
        self.window = _int_option("window", window, 2)
        self.tau = _positive_option("tau", tau)
        self.summary_every = _int_option("summary_every", summary_every, 1)
        self.flush_every = _int_option("flush_every", flush_every, 1)
        self.trace_dir = Path(trace_dir) if trace_dir is not None else None
        self.log_figures = log_figures
        self.metrics_interval = _positive_option("metrics_interval", metrics_interval)
        self.upload_timeout = (default_upload_timeout() if upload_timeout is None
                               else _positive_option("upload_timeout", upload_timeout))
        self.client: MlflowClient | None = None
        self.metrics: MetricLogger | None = None
        self.sink: TraceSink | None = None
        self.result: WatchResult | None = None
        self._figures: RunFigureData | None = None
        self._recent: dict[str, collections.deque] = {}
        self._last_epoch: int | None = None
        self._snapshots = 0
        self._closed = False
        self._signals: contextlib.ExitStack | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def writes(self) -> bool:
        """Whether this process writes the run: always, except on ranks other than 0 under torch.distributed."""
        return self.recorder.rank == 0

    def start(self) -> "FluxWatcher":
        """Resolve the run, attach the hooks, open the sinks, and log the recorder's settings as params.

        Under torch.distributed every rank calls it; only rank 0 needs an active run and writes.
        """
        import mlflow

        if distributed.world()[0] != 0:
            self.recorder.attach()  # records, and joins each snapshot's all_gather; rank 0 writes
            return self
        if self.run_id is None:
            active = mlflow.active_run()
            if active is None:
                raise FluxError("no active MLflow run: call mlflow.start_run() first, or pass run_id=...")
            self.run_id = active.info.run_id
        tracking_uri = mlflow.get_tracking_uri()
        check_reachable(tracking_uri)
        self.client = MlflowClient()
        existing = self.client.get_run(self.run_id).data.params
        if "flux.layers" in existing:
            raise FluxError(
                f"run {self.run_id} already holds a watcher's traces: start another run "
                "(mlflow.start_run(nested=True)) for a second watch"
            )
        self.recorder.attach()
        try:
            self._open_sinks(health_probe(tracking_uri), existing)
        except BaseException:
            self.recorder.detach()  # a watcher that failed to start leaves no hook on the user's model
            raise
        return self

    def _open_sinks(self, reachable, existing: Mapping[str, str]) -> None:
        if self.trace_dir is None:
            self.trace_dir = Path(tempfile.gettempdir()) / "mlflow-flux" / self.run_id
        self.metrics = MetricLogger(self.client, self.run_id, interval=self.metrics_interval, reachable=reachable)
        # Every summary key is mapped for MLflow now, so a clash between two layer names fails here, not later.
        for key in fluctuation.SUMMARY_KEYS:
            self.metrics.names.key(f"flux/{key}")
            if key in self.layer_metrics:
                for name in self.recorder.layer_names:
                    self.metrics.names.key(f"flux/{name}/{key}")
        self.sink = TraceSink(self.client, self.run_id, self.trace_dir, flush_every=self.flush_every,
                              reachable=reachable).start()
        self.metrics.start()
        self._recent = {name: collections.deque(maxlen=self.window) for name in self.recorder.layer_names}
        if self.log_figures:  # gathered only for figures that will be drawn
            self._figures = RunFigureData(list(zip(self.recorder.layer_names, self.recorder.layer_sizes)))
        self.client.log_batch(
            self.run_id,
            params=[
                # `mlflow run` may have logged a setting under its plain name already (MLflow refuses a change).
                *(Param(self.settings_prefix + name, str(value)) for name, value in self.settings().items()
                  if self.settings_prefix + name not in existing),
                Param("flux.layers", ",".join(self.recorder.layer_names)[:6000]),
                Param("flux.fastpath", self.recorder.path),
            ],
        )

    def settings(self) -> dict[str, object]:
        """The recorder settings a run's trace is read with, logged as ``flux.<name>`` params (or under the plain
        names, with ``settings_prefix=""``, for runs whose own settings already use them)."""
        return {"window": self.window, "tau": self.tau, "snapshot_every": self.recorder.snapshot_every,
                "summary_every": self.summary_every, "flush_every": self.flush_every}

    def __enter__(self) -> "FluxWatcher":
        self._signals = contextlib.ExitStack()
        self._signals.enter_context(stop_on_signals())  # SIGTERM, like Ctrl-C, ends the run KILLED with its trace
        try:
            return self.start()
        except BaseException:
            self._signals.close()
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        try:
            self.close(interrupted=interrupted)
            if interrupted:
                self._end_run_killed()
        finally:
            if self._signals is not None:
                self._signals.close()

    def _end_run_killed(self) -> None:
        """Ctrl-C or SIGTERM: the run ends KILLED (MLflow's own context manager would record FAILED)."""
        import mlflow

        if self.result is not None and self.result.offline:
            return  # the server does not answer: the run's status cannot be set
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            mlflow.end_run("KILLED")  # popped from the fluent stack, so start_run's __exit__ leaves it alone
        elif self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, "KILLED")

    # -- per epoch ---------------------------------------------------------------------------------------------

    def end_epoch(self, epoch: int, metrics: Mapping[str, float] | None = None) -> dict[str, float]:
        """Close an epoch (or a span of steps): log ``metrics`` (e.g. the loss) and, on snapshot epochs, one trace
        snapshot and summaries.

        ``epoch`` is the snapshot's index in the trace: an epoch, or a global step for runs snapshot every N steps.

        Returns:
            The metrics queued for this epoch under the keys they are logged with, ``flux/...`` summaries included.

        Raises:
            FluxError: the watcher is not started, ``epoch`` does not increase, a metric is not a number, or the
                trace can no longer be written (the recorder then stops).
        """
        if self._closed or not self.recorder.attached:
            raise FluxError("end_epoch() outside the watcher: use `with mlflow_flux.watch(model) as flux:`")
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise FluxError(f"end_epoch() takes a non-negative integer epoch, got {epoch!r}")
        if self._last_epoch is not None and epoch <= self._last_epoch:
            raise FluxError(f"end_epoch({epoch}) after end_epoch({self._last_epoch}): epochs must increase")
        if metrics is not None and not isinstance(metrics, Mapping):
            raise FluxError(f"end_epoch() takes metrics as a mapping of name to number, got {type(metrics).__name__}")
        self._last_epoch = int(epoch)
        if not self.writes:
            if self.recorder.should_snapshot(epoch):
                self.recorder.snapshot(int(epoch))  # this rank's sums join rank 0's snapshot
            return {}
        logged = dict(metrics or {})
        if self.recorder.should_snapshot(epoch):
            snapshot = self.recorder.snapshot(int(epoch))
            try:
                self.sink.write(snapshot)
            except TraceWriteError:
                self.recorder.detach()  # the recorder stops: one error, not one per epoch
                raise
            logged.update(self._summaries(snapshot))
        if logged:
            self.metrics.log(logged, step=int(epoch))
        return {self.metrics.names.key(name): value for name, value in logged.items()}

    def end_step(self, step: int, metrics: Mapping[str, float] | None = None) -> dict[str, float]:
        """:meth:`end_epoch` under the name that fits long single-epoch training: the trace's ``epoch`` column then
        holds global steps (e.g. ``watch(model, snapshot_every=100)`` and ``end_step(step)`` after every step)."""
        return self.end_epoch(step, metrics)

    def _summaries(self, snapshot: Snapshot) -> dict[str, float]:
        """Summary metrics of the window ending at this snapshot, on every ``summary_every``-th snapshot.

        Each ``log_batch`` costs MLflow's sqlite store ~0.2 ms per metric: a few dozen keys every epoch would
        cost more than the hooks. The trace keeps every snapshot, and the report recomputes every epoch.
        """
        for name, recent in self._recent.items():
            rows = snapshot.layer_slice(name)
            recent.append({c: snapshot.column(c)[rows] for c in SUMMARY_COLUMNS})
        if self._figures is not None:
            self._figures.add(snapshot)
        self._snapshots += 1
        out = {"flux/nonfinite": float(snapshot.nonfinite)} if snapshot.nonfinite else {}
        if (self._snapshots - self.window) % self.summary_every != 0 or self._snapshots < self.window:
            return out
        # The same shaping as the offline recomputation: one stack of the last `window` snapshots per layer.
        layers = {
            name: {c: np.stack([s[c] for s in recent]) for c in SUMMARY_COLUMNS}
            for name, recent in self._recent.items()
        }
        row = {key: float(values[0]) for key, values in fluctuation.window_summaries(layers, self.window,
                                                                                   self.tau).items()}
        if self._figures is not None:
            self._figures.add_summaries(snapshot.epoch, row)
        for name, value in row.items():
            scope, key = name.rsplit("/", 1)
            if scope == "all":
                out[f"flux/{key}"] = value
            elif key in self.layer_metrics:
                out[f"flux/{name}"] = value
        return out

    # -- closing -----------------------------------------------------------------------------------------------

    def close(self, interrupted: bool = False) -> WatchResult | None:
        """Remove the hooks, flush metrics, compact and log the trace, and log the figures. Idempotent.

        Uploads get at most ``upload_timeout`` seconds once this is called; what does not reach the run by then
        stays on local disk, and :attr:`result` (also returned) says where. An interrupted watcher skips figures.
        """
        if self._closed:
            return self.result
        self._closed = True
        self.recorder.detach()
        if self.sink is None or self.metrics is None:
            return None
        deadline = time.monotonic() + self.upload_timeout
        self.metrics.flush()
        self.sink.finish()  # the compaction runs on the writer thread while the figures are drawn here
        if self.log_figures and not interrupted and self.sink.write_error is None:
            self._save_figures()
        sink = self.sink.wait(max(0.0, deadline - time.monotonic()))
        metrics_done = self.metrics.close(max(0.0, deadline - time.monotonic()))
        offline = self.sink.offline or self.metrics.offline or not metrics_done
        self.result = WatchResult(self.run_id, sink.uploaded, sink.kept, self.metrics.lost, offline)
        self._report(self.result)
        return self.result

    def _save_figures(self) -> None:
        from .report.plots import (  # matplotlib: imported only by a run that draws figures
            run_figures,
            save_png,
        )

        directory = self.trace_dir / "figures"
        # A figure is worth less than the trace: one that cannot be drawn or saved never fails the close.
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _log.warning("figures of run %s not saved: %s", self.run_id, exc)
            return
        for name, draw in run_figures(self._figures).items():
            path = directory / f"{name}.png"
            try:
                save_png(draw(), path)
            except Exception as exc:  # noqa: BLE001 - matplotlib's errors have no common base but Exception
                _log.warning("figure %s of run %s not saved: %s", name, self.run_id, exc)
                continue
            self.sink.upload(path, "figures")

    def _report(self, result: WatchResult) -> None:
        if result.lost_metrics and not result.offline:
            self.metrics.tag_losses()
        if result.offline and abandon_active_run(self.run_id):
            # The run cannot be ended on a server that does not answer; MLflow's end_run (and its atexit hook)
            # would retry for minutes and hold the user's process at exit.
            _log.warning("run %s stays RUNNING: the tracking server does not answer", self.run_id)
        if result.kept_trace is not None:
            _log.warning("the trace of run %s did not reach the run and is kept at %s; upload it later with: "
                         "mlflow artifacts log-artifacts --run-id %s --local-dir %s --artifact-path traces",
                         self.run_id, result.kept_trace, self.run_id, result.kept_trace)
        if result.lost_metrics:
            _log.warning("run %s lost %d metric values (%s)", self.run_id, result.lost_metrics,
                         "the tracking server stopped answering" if result.offline else "refused by the store")


def watch(model: nn.Module, **options) -> FluxWatcher:
    """Record every neuron of ``model`` into the active MLflow run.

    Args:
        model: any ``nn.Module``; by default every ``Linear`` and ``Conv1d/2d/3d`` layer is watched.
        **options: ``layers`` (a list of names, glob patterns or module types), ``snapshot_every`` (epochs),
            ``window`` (snapshots per fluctuation window), ``tau`` (participation threshold),
            ``summary_every`` (log the ``flux/...`` summaries on every N-th snapshot, from the first full window),
            ``flush_every`` (snapshots per closed trace segment: what a SIGKILL can lose), ``run_id``,
            ``trace_dir`` (local spool), ``log_figures``, ``upload_timeout`` (seconds ``close()`` waits for
            uploads; default 60, or ``$MLFLOW_FLUX_UPLOAD_TIMEOUT``), ``optimizer`` (read gradients as this
            optimizer applies them: unscaled under a GradScaler, once per step under gradient accumulation,
            synchronized under DDP; required under torch.distributed), ``layer_metrics`` (``False``, the default:
            the ``flux/...`` summaries of the whole network only; ``True``: every summary of every layer too, as
            ``flux/<layer>/...``; or the names of the summaries wanted per layer), ``settings_prefix`` (``"flux."``,
            the default, or ``""``: the names the window, tau and the other recorder settings are logged under).

    Returns:
        A :class:`FluxWatcher`; use it as a context manager and call ``end_epoch(epoch)`` once per epoch.

    Raises:
        FluxError: a bad option (one line naming it), no active run, or an unreachable tracking server.

    While watched, each watched layer has a tensor hook on its weight and, on CPU with the compiled fast path, a
    wrapper as its ``forward`` (elsewhere a forward hook); all are taken out on exit. A ``copy.deepcopy`` or
    ``torch.save`` of the model meanwhile gives a plain, unwatched model. Inside the ``with`` block SIGTERM is
    handled like Ctrl-C (unless the program installed its own handler): the run ends KILLED with its trace.
    """
    return FluxWatcher(model, **options)
