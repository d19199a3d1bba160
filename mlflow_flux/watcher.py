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
import inspect
import logging
import numbers
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from torch import nn

from . import fluctuation
from .errors import FluxError, InvalidParameter
from .figures.data import RunFigureData
from .interrupts import stop_on_signals
from .recording import distributed
from .recording.layers import LayerSpec
from .recording.recorder import NeuronRecorder
from .settings import Number, RecorderSettings
from .traces import mlflow_adapter
from .traces.lifecycle import RunEnd, abandon, finish_run, interruption, mark_missing
from .traces.metrics import MetricLogger
from .traces.runs import FASTPATH_PARAM, LAYERS_PARAM
from .traces.schema import SUMMARY_COLUMNS, Snapshot
from .traces.server import check_reachable, health_probe
from .traces.sink import TraceSink, TraceWriteError

__all__ = ["FluxWatcher", "WatchResult", "watch", "checked_watch_options", "DEFAULT_UPLOAD_TIMEOUT",
           "UPLOAD_TIMEOUT_ENV",
           "default_upload_timeout"]

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


def _positive_option(name: str, value: object) -> float:
    return Number().check(name, value)


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
    """What reached the run when the watcher closed.

    Attributes:
        run_id: the run recorded into.
        uploaded: the compacted trace is confirmed in the run.
        kept_trace: the local spool that keeps what the run does not hold (None: the run has it all).
        lost_metrics: metric values the run did not get.
        offline: the tracking server stopped answering.
        missing: the artifacts (``traces/traces.parquet``, figures, the explorer page) the run does not hold.
    """

    run_id: str
    uploaded: bool
    kept_trace: Path | None
    lost_metrics: int
    offline: bool
    missing: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return self.uploaded and not self.missing and not self.lost_metrics and not self.offline


class FluxWatcher:
    """Hooks on a model plus the sinks of one run. Build it with :func:`watch`; use it as a context manager.

    Args:
        model: the model to watch.
        settings: the recorder's settings (:class:`~mlflow_flux.settings.RecorderSettings`), logged as params.
        layers, optimizer, run_id, trace_dir, upload_timeout, metrics_interval: see :func:`watch`.
    """

    def __init__(
        self,
        model: nn.Module,
        settings: RecorderSettings | None = None,
        *,
        layers: Sequence[LayerSpec] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        run_id: str | None = None,
        trace_dir: str | os.PathLike | None = None,
        upload_timeout: float | None = None,
        metrics_interval: float = 5.0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidParameter("model", type(model).__name__, "expected a torch.nn.Module")
        if settings is not None and not isinstance(settings, RecorderSettings):
            raise InvalidParameter("settings", type(settings).__name__, "expected RecorderSettings")
        if run_id is not None and not isinstance(run_id, str):
            raise InvalidParameter("run_id", run_id, "expected a run id string")
        if trace_dir is not None and not isinstance(trace_dir, (str, os.PathLike)):
            raise InvalidParameter("trace_dir", trace_dir, "expected a directory path")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise InvalidParameter("optimizer", type(optimizer).__name__, "expected a torch.optim.Optimizer")
        self.settings = settings if settings is not None else RecorderSettings()
        self.recorder = NeuronRecorder(model, layers=_layers_option(layers),
                                       snapshot_every=self.settings.snapshot_every, optimizer=optimizer,
                                       w_step=self.settings.w_step, w_dist0=self.settings.w_dist0,
                                       neuron_budget=self.settings.neuron_budget)
        self.run_id = run_id
        self.trace_dir = Path(trace_dir) if trace_dir is not None else None
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
        self._run_name = ""
        self._losses: dict[str, list[tuple[int, float]]] = {}  # the loss metrics end_epoch was given, for the page
        self._live = None  # the explorer's pooling of the snapshots written (explorer.LivePooler)

    # The settings the rest of the watcher reads often, by name.
    window = property(lambda self: self.settings.window)
    tau = property(lambda self: self.settings.tau)
    summary_every = property(lambda self: self.settings.summary_every)
    flush_every = property(lambda self: self.settings.flush_every)
    layer_metrics = property(lambda self: self.settings.layer_metrics)
    log_figures = property(lambda self: self.settings.log_figures)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def writes(self) -> bool:
        """Whether this process writes the run: always, except on ranks other than 0 under torch.distributed."""
        return self.recorder.rank == 0

    def start(self) -> FluxWatcher:
        """Resolve the run, attach the hooks, open the sinks, and log the recorder's settings as params.

        Under torch.distributed every rank calls it; only rank 0 needs an active run and writes.
        """
        import mlflow

        self.recorder.refuse_unsupported()  # before the run is touched: a refused model leaves it as it was
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
        with mlflow_adapter.auth_errors(tracking_uri, f"run {self.run_id}"):  # reading it, logging the params
            return self._start_recording(tracking_uri)

    def _start_recording(self, tracking_uri: str) -> FluxWatcher:
        run = self.client.get_run(self.run_id)
        existing = run.data.params
        self._run_name = run.data.tags.get("mlflow.runName", self.run_id[:8])
        if LAYERS_PARAM in existing:
            raise FluxError(
                f"run {self.run_id} already holds a watcher's traces: start another run "
                "(mlflow.start_run(nested=True)) for a second watch"
            )
        new_params = self._new_params(existing)
        self.recorder.attach()
        try:
            self._open_sinks(health_probe(tracking_uri), new_params)
        except BaseException:
            self.recorder.detach()  # a watcher that failed to start leaves no hook on the user's model
            raise
        return self

    def _new_params(self, existing: Mapping[str, str]) -> dict[str, str]:
        """The settings the run does not hold yet. A setting it holds under the same name (`mlflow run` logs the
        MLproject's parameters, the study its config) must have the same value: the report reads the trace with it.

        Raises:
            InvalidParameter: the run holds a param of a setting's name with another value.
        """
        new = {}
        for spec in self.settings.schema():
            value = getattr(self.settings, spec.name)
            if spec.name not in existing:
                new[spec.name] = spec.kind.format(value)
                continue
            try:
                same = spec.kind.parse(spec.name, existing[spec.name]) == value
            except InvalidParameter:
                same = False
            if not same:
                raise InvalidParameter(spec.name, value, f"run {self.run_id} already has the param {spec.name}="
                                                         f"{existing[spec.name]!r}, the name mlflow-flux logs this "
                                                         f"setting under: pass {spec.name}={existing[spec.name]} or "
                                                         "record into another run")
        return new

    def _open_sinks(self, reachable, new_params: Mapping[str, str]) -> None:
        if self.trace_dir is None:
            self.trace_dir = Path(tempfile.gettempdir()) / "mlflow-flux" / self.run_id
        self.metrics = MetricLogger(self.client, self.run_id, interval=self.metrics_interval, reachable=reachable)
        # Every summary key is mapped for MLflow now, so a clash between two layer names fails here, not later.
        for key in fluctuation.SUMMARY_KEYS:
            self.metrics.names.key(f"flux/{key}")
            if key in self.layer_metrics:
                for name in self.recorder.layer_names:
                    self.metrics.names.key(f"flux/{name}/{key}")
        if self.settings.explorer:  # the page's pooling runs on the sink's writer thread as the trace is written
            from .explorer import LivePooler

            self._live = LivePooler(self.window, self.settings.thresholds)
        self.sink = TraceSink(self.client, self.run_id, self.trace_dir, flush_every=self.flush_every,
                              reachable=reachable, observer=self._live).start()
        self.metrics.start()
        self._recent = {name: collections.deque(maxlen=self.window) for name in self.recorder.layer_names}
        if self.log_figures:  # gathered only for figures that will be drawn
            self._figures = RunFigureData(list(zip(self.recorder.layer_names, self.recorder.layer_sizes)))
        self.client.log_batch(
            self.run_id,
            params=[
                *(Param(name, value) for name, value in new_params.items()),
                Param(LAYERS_PARAM, ",".join(self.recorder.layer_names)[:6000]),
                Param(FASTPATH_PARAM, self.recorder.path),
            ],
        )

    def __enter__(self) -> FluxWatcher:
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
            result = self.close(interrupted=interrupted)
            if interrupted and self.client is not None and self.run_id is not None:
                # Ctrl-C or SIGTERM: the run ends KILLED (MLflow's own context manager would record FAILED).
                finish_run(self.client, self.run_id, "KILLED", interruption(exc),
                           RunEnd(self.run_id, offline=bool(result and result.offline)))
        finally:
            if self._signals is not None:
                self._signals.close()

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
        for name, value in logged.items():
            if "loss" in str(name).lower() and isinstance(value, numbers.Real):
                self._losses.setdefault(str(name), []).append((int(epoch), float(value)))
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
        summaries = fluctuation.window_summaries(layers, self.window, self.settings.thresholds)
        row = {key: float(values[0]) for key, values in summaries.items()}
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
        if self.settings.explorer and not interrupted and self.sink.write_error is None:
            self._save_explorer()
        sink = self.sink.wait(max(0.0, deadline - time.monotonic()))
        metrics_done = self.metrics.close(max(0.0, deadline - time.monotonic()))
        offline = self.sink.offline or self.metrics.offline or not metrics_done
        self.result = WatchResult(self.run_id, sink.uploaded, sink.kept, self.metrics.lost, offline, sink.missing)
        self._report(self.result)
        return self.result

    def log_figure(self, figure, artifact_file: str) -> None:
        """Save a matplotlib figure into the spool and log it to the run, like ``mlflow.log_figure``, but through
        the watcher's uploads: bounded by ``upload_timeout``, and named in :attr:`WatchResult.missing` (the spool
        keeps it) when it does not arrive."""
        if self.sink is None:
            return
        path = self.trace_dir / artifact_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path, format="png", dpi=100)
        except Exception as exc:  # noqa: BLE001 - a figure never fails a run
            _log.warning("figure %s of run %s not saved: %s", artifact_file, self.run_id, exc)
            return
        self.sink.upload(path, artifact_file.rsplit("/", 1)[0] if "/" in artifact_file else None)

    def _save_figures(self) -> None:
        from .figures.draw import run_figures, save_png  # matplotlib: imported only by a run that draws figures

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

    def _save_explorer(self) -> None:
        """The run's explorer page, from its snapshots pooled as they were written (else from its trace on local
        disk, a chunk of snapshots at a time), into the spool and the run. Like a figure, a page that cannot be
        built never fails the close."""
        from .explorer import PAGE_FILE, RunInput, pool_run, render_page  # imported only where a page is built

        losses = {key: (np.array([s for s, _ in points]), np.array([v for _, v in points], dtype=np.float32))
                  for key, points in self._losses.items() if len(points) > 1}
        run = RunInput(self.run_id, self._run_name, None, self.window, self.settings.thresholds, losses=losses)
        path = self.trace_dir / PAGE_FILE
        try:
            # Pooled as it was written, unless that stopped short (the sink counts only the snapshots the pooling
            # took without an error): then read back from the file, a chunk at a time.
            if self._live is not None and self.sink.segments_written() and self.sink.observed == self._snapshots > 0:
                pooled = self._live.pooled(run, self.sink.compacted)
            else:
                run.trace = self.sink.compacted()
                if run.trace is None:
                    return
                pooled = pool_run(run)
            path.write_text(render_page([pooled], f"mlflow-flux explorer: {self._run_name}", f"run {self.run_id}"),
                            encoding="utf-8")
        except Exception as exc:  # noqa: BLE001 - a page is worth less than the trace
            _log.warning("the explorer page of run %s was not built: %s", self.run_id, exc)
            return
        self.sink.upload(path, None)

    def _report(self, result: WatchResult) -> None:
        if result.lost_metrics and not result.offline:
            self.metrics.tag_losses()
        if result.offline:  # the run cannot be ended on a server that does not answer
            abandon(self.run_id)
        if result.missing:
            end = RunEnd(self.run_id)
            end.missing(result.missing, result.kept_trace)
            if not result.offline:  # the run says so itself, whoever ends it
                mark_missing(self.client, end)
            _log.warning("run %s: %s", self.run_id, end.describe())
        if result.lost_metrics:
            _log.warning("run %s lost %d metric values (%s)", self.run_id, result.lost_metrics,
                         "the tracking server stopped answering" if result.offline else "refused by the store")


_DEFAULTS = RecorderSettings()


def watch(
    model: nn.Module,
    *,
    layers: Sequence[LayerSpec] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    run_id: str | None = None,
    trace_dir: str | os.PathLike | None = None,
    upload_timeout: float | None = None,
    metrics_interval: float = 5.0,
    snapshot_every: int = _DEFAULTS.snapshot_every,
    window: int = _DEFAULTS.window,
    tau: float = _DEFAULTS.tau,
    tau_mode: str = _DEFAULTS.tau_mode,
    tau_relative: float = _DEFAULTS.tau_relative,
    dormant_tau: float = _DEFAULTS.dormant_tau,
    summary_every: int = _DEFAULTS.summary_every,
    flush_every: int = _DEFAULTS.flush_every,
    layer_metrics: bool | Sequence[str] = _DEFAULTS.layer_metrics,
    log_figures: bool = _DEFAULTS.log_figures,
    explorer: bool = _DEFAULTS.explorer,
    w_step: bool = _DEFAULTS.w_step,
    w_dist0: bool = _DEFAULTS.w_dist0,
    neuron_budget: int = _DEFAULTS.neuron_budget,
) -> FluxWatcher:
    """Record every neuron of ``model`` into the active MLflow run.

    Args:
        model: any ``nn.Module``; by default every ``Linear`` and ``Conv1d/2d/3d`` layer is watched.
        layers: names, glob patterns (``"encoder.*"``) or module types to watch instead.
        optimizer: read gradients as this optimizer applies them: unscaled under a GradScaler, once per step under
            gradient accumulation, synchronized under DDP; required under torch.distributed.
        run_id: record into this run instead of the active one.
        trace_dir: the local spool of the trace (default ``$TMPDIR/mlflow-flux/<run id>``).
        upload_timeout: seconds ``close()`` waits for uploads (default 60, or ``$MLFLOW_FLUX_UPLOAD_TIMEOUT``).
        metrics_interval: seconds between two metric sends.
        snapshot_every, window, tau, tau_mode, tau_relative, dormant_tau, summary_every, flush_every,
            layer_metrics, log_figures, explorer, w_step, w_dist0, neuron_budget: the recorder's settings
            (:class:`~mlflow_flux.settings.RecorderSettings`, docs/traces.md), logged as params under these names.
            ``layer_metrics``: ``False`` (the whole network's summaries only), ``True`` (every summary of every
            layer too, as ``flux/<layer>/...``) or the names of the summaries wanted per layer.

    Returns:
        A :class:`FluxWatcher`; use it as a context manager and call ``end_epoch(epoch)`` once per epoch.

    Raises:
        FluxError: a bad option (one line naming it), no active run, or an unreachable tracking server.

    While watched, each watched layer has a tensor hook on its weight and, on CPU with the compiled fast path, a
    wrapper as its ``forward``; all are taken out on exit. A ``copy.deepcopy`` or ``torch.save`` of the model
    meanwhile gives a plain, unwatched model. Inside the ``with`` block SIGTERM is handled like Ctrl-C (unless the
    program installed its own handler): the run ends KILLED with its trace.
    """
    settings = RecorderSettings(snapshot_every=snapshot_every, window=window, tau=tau, tau_mode=tau_mode,
                                tau_relative=tau_relative, dormant_tau=dormant_tau, summary_every=summary_every,
                                flush_every=flush_every, layer_metrics=layer_metrics, log_figures=log_figures,
                                explorer=explorer, w_step=w_step, w_dist0=w_dist0, neuron_budget=neuron_budget)
    return FluxWatcher(model, settings, layers=layers, optimizer=optimizer, run_id=run_id, trace_dir=trace_dir,
                       upload_timeout=upload_timeout, metrics_interval=metrics_interval)


def checked_watch_options(options: Mapping[str, object]) -> dict[str, object]:
    """``options`` checked against :func:`watch`'s keywords now (a framework callback takes them at construction,
    long before it calls ``watch()``): an unknown name or a bad value is one :class:`InvalidParameter`."""
    known = [name for name in inspect.signature(watch).parameters if name != "model"]
    for name, value in options.items():
        if name not in known:
            raise InvalidParameter(name, value, f"not an option of watch(); its options: {', '.join(known)}")
    RecorderSettings(**{k: v for k, v in options.items() if k in RecorderSettings.names()})
    return dict(options)
