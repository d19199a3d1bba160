"""PyTorch Lightning: ``Trainer(callbacks=[FluxCallback()])`` records every neuron of the LightningModule into the
MLflow run of the fit.

    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow_flux.integrations.lightning import FluxCallback

    trainer = Trainer(logger=MLFlowLogger(experiment_name="mine"), callbacks=[FluxCallback()])
    trainer.fit(model, data)

With an ``MLFlowLogger`` the trace goes into that logger's run (no second run); without one, into the active MLflow
run, or a new one the callback ends. Validation and sanity-check passes never count as activity (they run in eval
mode without gradients). Under Lightning's DDP strategy every rank records and rank 0 writes the one trace.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import MLFlowLogger
    from lightning.pytorch.utilities import rank_zero_info
except ImportError as exc:  # the extra is optional; the core package never imports this module
    raise ImportError("mlflow_flux.integrations.lightning needs PyTorch Lightning: "
                      "pip install 'mlflow-flux[lightning]'") from exc

from ..watcher import FluxWatcher, checked_watch_options, watch
from ._common import RunChoice, active_or_new_run, end_started_run, every_n_steps_option

__all__ = ["FluxCallback"]


class FluxCallback(pl.Callback):
    """Watch the LightningModule during ``fit``.

    Args:
        every_n_steps: snapshot every N optimizer steps (the trace's ``epoch`` column then holds global steps);
            default ``None``: once per training epoch.
        **watch_options: :func:`mlflow_flux.watch`'s options (``layers``, ``window``, ``tau``, ``snapshot_every``,
            ...). ``optimizer`` defaults to the fit's optimizer when it has exactly one: gradients are then read as
            it applies them (unscaled under 16-bit mixed precision, synchronized under DDP).
    """

    def __init__(self, *, every_n_steps: int | None = None, **watch_options: Any) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps_option(every_n_steps)
        self.watch_options = checked_watch_options(watch_options)
        self.watcher: FluxWatcher | None = None
        self._run: RunChoice | None = None
        self._logs_metrics = False  # no MLFlowLogger: the callback logs what the module logged
        self._last_step = -1

    def _choose_run(self, trainer: pl.Trainer) -> RunChoice | None:
        if "run_id" in self.watch_options:
            return None
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                run_id = logger.run_id  # creates the logger's run now if it has none yet
                return RunChoice(run_id, False, f"the MLFlowLogger's run {run_id}")
        return active_or_new_run("Lightning")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        options = dict(self.watch_options)
        if "optimizer" not in options and len(trainer.optimizers) == 1:
            options["optimizer"] = trainer.optimizers[0]
        if trainer.global_rank == 0:
            self._run = self._choose_run(trainer)
            if self._run is not None:
                options["run_id"] = self._run.run_id
                rank_zero_info(f"mlflow-flux records into {self._run.how}")
                self._logs_metrics = not any(isinstance(logger, MLFlowLogger) for logger in trainer.loggers)
        self.watcher = watch(pl_module, **options)
        try:
            self.watcher.start()
        except BaseException as exc:
            self.watcher = None
            end_started_run(self._run, exc)
            raise

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step  # optimizer steps so far; unchanged across accumulated batches
        if self.every_n_steps is None or self.watcher is None or step == self._last_step:
            return
        if step % self.every_n_steps == 0:
            self._last_step = step
            self.watcher.end_step(step, self._metrics(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        if self.every_n_steps is None and self.watcher is not None:
            self.watcher.end_epoch(trainer.current_epoch, self._metrics(trainer))

    def _metrics(self, trainer: pl.Trainer) -> dict[str, float]:
        """What the module logged, when no MLFlowLogger logs it to the run already."""
        if not self._logs_metrics:
            return {}
        return {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}

    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        self._close(exception)

    def teardown(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        self._close()  # harmless after on_fit_end; covers a fit that ended without it

    def _close(self, exc: BaseException | None = None) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is None:
            return
        result = None
        try:
            result = watcher.close(interrupted=isinstance(exc, KeyboardInterrupt))
        finally:
            end_started_run(self._run, exc, result)
