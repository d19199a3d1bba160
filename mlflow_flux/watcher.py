"""``mlflow_flux.watch(model)``: record every neuron of any PyTorch training loop into the active MLflow run.

    with mlflow.start_run():
        with mlflow_flux.watch(model) as flux:
            for epoch in range(epochs):
                ...                                   # your loop, untouched
                flux.end_epoch(epoch, {"loss/train": loss})

:func:`watch` is the fluent face: it resolves the active run when the watcher starts, as MLflow's ``fluent.py``
does, and hands its id to :class:`FluxWatcher`, the coordinator. The coordinator attaches the recorder's hooks and
calls the run's outputs (:mod:`mlflow_flux.outputs`: the trace, the live summaries, the figures, the explorer page,
neuron resets, a user's own) in order at start, at every ``end_epoch`` and at close; it knows none of them by name.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import numbers
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .errors import FluxError, InvalidParameter
from .interrupts import stop_on_signals
from .outputs.base import ACTION, Closing, RunOutput, Step, WatchedRun
from .recording import distributed
from .recording.layers import LayerSpec
from .recording.recorder import NeuronRecorder
from .settings import Number, RecorderSettings
from .traces import mlflow_adapter
from .traces.lifecycle import RunEnd, close_channels, conclude
from .traces.metrics import MetricLogger
from .traces.runs import log_watched_run, watched_run_params
from .traces.server import check_reachable, health_probe
from .traces.uploads import Uploads

__all__ = ["FluxWatcher", "WatchResult", "watch", "checked_watch_options", "DEFAULT_UPLOAD_TIMEOUT",
           "UPLOAD_TIMEOUT_ENV", "default_upload_timeout"]

_log = logging.getLogger(__name__)

DEFAULT_UPLOAD_TIMEOUT = 60.0  # seconds close() waits for uploads once training is over
UPLOAD_TIMEOUT_ENV = "MLFLOW_FLUX_UPLOAD_TIMEOUT"  # sets that default, e.g. for every variant of a sweep
WatchResult = RunEnd  # what reached the run when the watcher closed (the name watch()'s users know)


def default_upload_timeout() -> float:
    """Seconds close() waits for uploads: ``$MLFLOW_FLUX_UPLOAD_TIMEOUT``, else 60."""
    raw = os.environ.get(UPLOAD_TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_UPLOAD_TIMEOUT
    try:
        return Number().check(UPLOAD_TIMEOUT_ENV, float(raw))
    except ValueError:
        raise InvalidParameter(UPLOAD_TIMEOUT_ENV, raw, "expected a positive number") from None


def _checked(model, optimizer, run_id, settings, trace_dir, layers, outputs) -> tuple[list | None, list[RunOutput]]:
    """The coordinator's own options checked (one InvalidParameter each); the layers and outputs as lists."""
    if not isinstance(model, nn.Module):
        raise InvalidParameter("model", type(model).__name__, "expected a torch.nn.Module")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise InvalidParameter("optimizer", type(optimizer).__name__, "expected a torch.optim.Optimizer")
    if run_id is not None and not isinstance(run_id, str):
        raise InvalidParameter("run_id", run_id, "expected a run id string")
    if settings is not None and not isinstance(settings, RecorderSettings):
        raise InvalidParameter("settings", type(settings).__name__, "expected RecorderSettings")
    if trace_dir is not None and not isinstance(trace_dir, (str, os.PathLike)):
        raise InvalidParameter("trace_dir", trace_dir, "expected a directory path")
    for output in outputs:
        if not isinstance(output, RunOutput):
            raise InvalidParameter("outputs", type(output).__name__, "expected mlflow_flux.outputs.RunOutput objects")
    if layers is None:
        return None, list(outputs)
    if isinstance(layers, (str, type)):
        example = repr(layers) if isinstance(layers, str) else layers.__name__
        raise InvalidParameter("layers", layers, f"expected a list, e.g. layers=[{example}]")
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
    return specs, list(outputs)


def _checked_epoch(epoch, last: int | None, metrics) -> int:
    """``end_epoch()``'s arguments checked: a non-negative integer above the last one, metrics a mapping."""
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
        raise FluxError(f"end_epoch() takes a non-negative integer epoch, got {epoch!r}")
    if last is not None and epoch <= last:
        raise FluxError(f"end_epoch({epoch}) after end_epoch({last}): epochs must increase")
    if metrics is not None and not isinstance(metrics, Mapping):
        raise FluxError(f"end_epoch() takes metrics as a mapping of name to number, got {type(metrics).__name__}")
    return int(epoch)


def _built_outputs(settings: RecorderSettings, given: Sequence[RunOutput]) -> list[RunOutput]:
    """The outputs the settings turn on, then the user's; actions before observers, each kind in that order."""
    built = []
    for path in settings.outputs():
        module, _, name = path.partition(":")
        built.append(getattr(importlib.import_module(module), name).from_settings(settings))
    ordered = [*built, *given]
    return [o for o in ordered if o.kind == ACTION] + [o for o in ordered if o.kind != ACTION]


class FluxWatcher:
    """The coordinator of one watched run: the recorder's hooks and an ordered list of outputs
    (:mod:`mlflow_flux.outputs`), none known by name. Made by :func:`watch` (which finds the active run), or with a
    run id (None only on ranks > 0 under torch.distributed), :class:`~mlflow_flux.settings.RecorderSettings` and a
    client; the other arguments are :func:`watch`'s. Use it as a context manager."""

    def __init__(self, model: nn.Module, run_id: str | None = None, settings: RecorderSettings | None = None, *,
                 client=None, layers: Sequence[LayerSpec] | None = None,
                 optimizer: torch.optim.Optimizer | None = None, outputs: Sequence[RunOutput] = (),
                 activations: Mapping[str, str] | None = None, next_layers: Mapping[str, str] | None = None,
                 trace_dir: str | os.PathLike | None = None, upload_timeout: float | None = None,
                 metrics_interval: float = 5.0) -> None:
        specs, given = _checked(model, optimizer, run_id, settings, trace_dir, layers, outputs)
        self.settings = s = settings if settings is not None else RecorderSettings()
        self.recorder = NeuronRecorder(model, layers=specs, snapshot_every=s.snapshot_every, optimizer=optimizer,
                                       w_step=s.w_step, w_dist0=s.w_dist0, neuron_budget=s.neuron_budget,
                                       redundancy=s.redundancy, activations=activations, next_layers=next_layers)
        self.run_id, self.client = run_id, client
        self.trace_dir = Path(trace_dir) if trace_dir is not None else None
        self.metrics_interval = Number().check("metrics_interval", metrics_interval)
        self.upload_timeout = (default_upload_timeout() if upload_timeout is None
                               else Number().check("upload_timeout", upload_timeout))
        self.outputs = _built_outputs(s, given)
        self.result: RunEnd | None = None
        self.run: WatchedRun | None = None
        self._last_epoch: int | None = None
        self._closed = self._failed = False
        self._signals: contextlib.ExitStack | None = None

    @property
    def writes(self) -> bool:
        """Whether this process writes the run: always, except on ranks other than 0 under torch.distributed."""
        return self.recorder.rank == 0

    def _runs(self, output: RunOutput) -> bool:
        return self.writes or output.kind == ACTION  # observers on rank 0 only, actions on every rank

    def start(self) -> FluxWatcher:
        """Attach the hooks, log the settings as params, open the run's channels and start every output. Under
        torch.distributed every rank calls it; rank 0 writes (observers run there only), actions run everywhere."""
        import mlflow

        self.recorder.refuse_unsupported()  # before the run is touched: a refused model leaves it as it was
        writes = distributed.world()[0] == 0
        if writes and self.run_id is None:
            raise FluxError("FluxWatcher needs run_id= on rank 0 (or use mlflow_flux.watch(), which finds the "
                            "active run)")
        tracking_uri = mlflow.get_tracking_uri()
        if writes:
            check_reachable(tracking_uri)
        self.recorder.attach()  # records, and joins each snapshot's all_gather; rank 0 writes
        try:
            fingerprint = self.recorder.fingerprint()  # before any step; on every rank (FSDP2 gathers the weights)
            if writes:
                self.client = self.client or mlflow.MlflowClient()
            else:
                self.run = WatchedRun(None, None, "", self.settings, self.recorder)
            with mlflow_adapter.auth_errors(tracking_uri, f"run {self.run_id}") if writes else contextlib.nullcontext():
                params = self._open(tracking_uri, fingerprint) if writes else None
                for output in filter(self._runs, self.outputs):  # one that refuses the model does so before params
                    output.start(self.run)
                if writes:
                    log_watched_run(self.client, self.run_id, params, self.recorder, fingerprint)
                    self.run.metrics.start()
                    self.run.uploads.start()
        except BaseException:
            self.recorder.detach()  # a watcher that failed to start leaves no hook on the user's model
            raise
        return self

    def _open(self, tracking_uri: str, fingerprint: str) -> dict[str, str]:
        """Rank 0: the run read, its channels (spool, uploads, metrics) opened; returns the params to log."""
        run = self.client.get_run(self.run_id)
        reachable = health_probe(tracking_uri)
        spool = self.trace_dir or Path(tempfile.gettempdir()) / "mlflow-flux" / self.run_id
        self.run = WatchedRun(self.client, self.run_id, run.data.tags.get("mlflow.runName", self.run_id[:8]),
                              self.settings, self.recorder, spool, Uploads(self.client, self.run_id, reachable),
                              MetricLogger(self.client, self.run_id, interval=self.metrics_interval,
                                           reachable=reachable), fingerprint=fingerprint)
        return watched_run_params(run, self.settings)

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
                conclude(self.client, self.run_id, exc, result or RunEnd(self.run_id))
        finally:
            if self._signals is not None:
                self._signals.close()

    def end_epoch(self, epoch: int, metrics: Mapping[str, float] | None = None) -> dict[str, float]:
        """Close an epoch (or a span of steps; ``epoch`` is then a global step): on snapshot epochs one snapshot of
        every neuron, handed to the outputs (actions first); log ``metrics`` (e.g. the loss) and what they return.
        Returns the metrics queued under the keys they are logged with. Raises FluxError outside the watcher, for an
        epoch that does not increase or a metric that is not a number, or when the trace can no longer be written
        (the recorder then stops)."""
        if self._closed or not self.recorder.attached:
            raise FluxError("end_epoch() outside the watcher: use `with mlflow_flux.watch(model) as flux:`")
        self._last_epoch = epoch = _checked_epoch(epoch, self._last_epoch, metrics)
        step = Step(epoch, dict(metrics or {}), self.recorder.snapshot(epoch) if self.recorder.should_snapshot(epoch)
                    else None)
        logged = dict(step.metrics)
        try:
            for output in filter(self._runs, self.outputs):
                logged.update(output.end_epoch(step) or {})
        except FluxError:
            self._failed = True
            self.recorder.detach()  # the recorder stops: one error, not one per epoch
            raise
        if not self.writes:
            return {}
        if logged:
            self.run.metrics.log(logged, step=epoch)
        return {self.run.metrics.names.key(name): value for name, value in logged.items()}

    def end_step(self, step: int, metrics: Mapping[str, float] | None = None) -> dict[str, float]:
        """:meth:`end_epoch` under the name that fits long single-epoch training: the trace's ``epoch`` column then
        holds global steps (e.g. ``watch(model, snapshot_every=100)`` and ``end_step(step)`` after every step)."""
        return self.end_epoch(step, metrics)

    def log_figure(self, figure, artifact_file: str) -> None:
        """Log a matplotlib figure through the run's uploads (:meth:`WatchedRun.log_figure`)."""
        if self.run is not None:
            self.run.log_figure(figure, artifact_file)

    def close(self, interrupted: bool = False) -> RunEnd | None:
        """Remove the hooks, close every output, wait at most ``upload_timeout`` s for the uploads. Idempotent. What
        did not reach the run stays on local disk, and :attr:`result` (also returned) says where."""
        if self._closed:
            return self.result
        self._closed = True
        self.recorder.detach()
        if self.run is None:
            return None
        closing = Closing(time.monotonic() + self.upload_timeout, interrupted, self._failed)
        if self.writes:
            self.run.metrics.flush()  # sent while the outputs close: the uploads may take the whole deadline
        for output in filter(self._runs, self.outputs):
            try:
                output.close(closing)
            except Exception as exc:  # noqa: BLE001 -- an output's close never loses the others' work
                _log.warning("run %s: %s did not close: %s", self.run_id, type(output).__name__, exc)
        if self.writes:
            self.result = close_channels(self.client, self.run_id, self.run.uploads, self.run.metrics,
                                         self.run.spool, lambda: closing.left)
        return self.result


class _ActiveRunWatcher(FluxWatcher):
    """What :func:`watch` returns: the run is found when the watcher starts (the active one, unless ``run_id`` was
    given), so ``flux = watch(model)`` may be made before ``mlflow.start_run()``."""

    def start(self) -> FluxWatcher:
        if self.run_id is None and distributed.world()[0] == 0:
            import mlflow

            active = mlflow.active_run()
            if active is None:
                raise FluxError("no active MLflow run: call mlflow.start_run() first, or pass run_id=...")
            self.run_id = active.info.run_id
        return super().start()


def _settings_from(options: Mapping[str, object]) -> RecorderSettings:
    """:class:`RecorderSettings` from keyword options; an unknown name is one InvalidParameter."""
    known = RecorderSettings.names()
    for name, value in options.items():
        if name not in known:
            raise InvalidParameter(name, value, f"not an option of watch(); its options: "
                                                f"{', '.join([*_OWN_OPTIONS, *known])}")
    return RecorderSettings(**options)


def watch(model: nn.Module, *, layers: Sequence[LayerSpec] | None = None,
          optimizer: torch.optim.Optimizer | None = None, run_id: str | None = None,
          outputs: Sequence[RunOutput] = (), activations: Mapping[str, str] | None = None,
          next_layers: Mapping[str, str] | None = None, trace_dir: str | os.PathLike | None = None,
          upload_timeout: float | None = None, metrics_interval: float = 5.0, **settings) -> FluxWatcher:
    """Record every neuron of ``model`` into the active MLflow run.

    Args:
        model: any ``nn.Module``; by default every ``Linear`` and ``Conv1d/2d/3d`` layer is watched.
        layers: names, glob patterns (``"encoder.*"``) or module types to watch instead.
        optimizer: read gradients as this optimizer applies them: unscaled under a GradScaler, once per step under
            gradient accumulation, synchronized under DDP; required under torch.distributed and by resets.
        run_id: record into this run instead of the active one.
        outputs: your own outputs (:class:`mlflow_flux.outputs.RunOutput`), after the built-in ones.
        activations: ``{layer: "relu" | "tanh" | ...}``: the activation after a layer, where the model's modules do
            not show it (docs/metrics.md, "Redundant units").
        next_layers: ``{layer: next layer}``: the layer that reads a layer's output, where the modules do not show it.
        trace_dir: the local spool of the trace (default ``$TMPDIR/mlflow-flux/<run id>``).
        upload_timeout: seconds ``close()`` waits for uploads (default 60, or ``$MLFLOW_FLUX_UPLOAD_TIMEOUT``).
        metrics_interval: seconds between two metric sends.
        **settings: the recorder's settings (:class:`~mlflow_flux.settings.RecorderSettings`: ``snapshot_every``,
            ``window``, ``tau``, ..., listed in this function's signature and docs/traces.md), logged as params under
            these names. ``layer_metrics``: ``False`` (the network's summaries only), ``True`` (every summary of
            every layer too, as ``flux/<layer>/...``) or the names of the summaries wanted per layer.

    Returns:
        A :class:`FluxWatcher`; use it as a context manager and call ``end_epoch(epoch)`` once per epoch.

    Raises:
        FluxError: a bad option (one line naming it), no active run, or an unreachable tracking server.

    While watched, each watched layer has a tensor hook on its weight and, on CPU with the compiled fast path, a
    wrapper as its ``forward``; all are taken out on exit. A ``copy.deepcopy`` or ``torch.save`` of the model
    meanwhile gives a plain, unwatched model. Inside the ``with`` block SIGTERM is handled like Ctrl-C (unless the
    program installed its own handler): the run ends KILLED with its trace.
    """
    return _ActiveRunWatcher(model, run_id, _settings_from(settings), layers=layers, optimizer=optimizer,
                             outputs=outputs, activations=activations, next_layers=next_layers, trace_dir=trace_dir,
                             upload_timeout=upload_timeout, metrics_interval=metrics_interval)


_OWN_OPTIONS = tuple(name for name, p in inspect.signature(watch).parameters.items()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY)
# watch()'s signature as help() and editors show it: its own options, then every setting with its default, from the
# settings' one declaration (a test checks that each reaches the FluxWatcher's settings).
watch.__signature__ = inspect.signature(watch).replace(parameters=[
    *(p for p in inspect.signature(watch).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD),
    *(inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=spec.default)
      for spec in RecorderSettings.schema())])


def checked_watch_options(options: Mapping[str, object]) -> dict[str, object]:
    """``options`` checked against :func:`watch`'s keywords now (a framework callback takes them at construction,
    long before it calls ``watch()``): an unknown name or a bad value is one :class:`InvalidParameter`."""
    known = [name for name in inspect.signature(watch).parameters if name != "model"]
    for name, value in options.items():
        if name not in known:
            raise InvalidParameter(name, value, f"not an option of watch(); its options: {', '.join(known)}")
    RecorderSettings(**{k: v for k, v in options.items() if k in RecorderSettings.names()})
    return dict(options)
