"""Hugging Face ``transformers.Trainer``: ``Trainer(..., callbacks=[FluxCallback()])`` records every neuron of the
model into the MLflow run of the training.

    from mlflow_flux.integrations.transformers import FluxCallback

    args = TrainingArguments(output_dir="out", report_to="mlflow", num_train_epochs=3)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[FluxCallback()]).train()

With ``report_to="mlflow"`` the trace goes into the run that transformers' own ``MLflowCallback`` opened, whatever
the order of the callbacks (the watcher starts at the first training step, after every ``on_train_begin``); without
it, into the active MLflow run, or a new one the callback ends. The model's linear maps (``nn.Linear``, GPT-2's
``Conv1D``) are watched by default. Evaluation passes never count as activity.

A ``TrainerCallback`` has no event for an exception: while training runs the callback chains ``sys.excepthook``, so
a training that dies of an uncaught exception closes the watcher (its trace kept) and ends the run it recorded into
FAILED (KILLED for Ctrl-C or SIGTERM) before the process exits; the previous hook runs after it.
"""

from __future__ import annotations

import sys
from typing import Any

try:
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging
except ImportError as exc:  # the extra is optional; the core package never imports this module
    raise ImportError("mlflow_flux.integrations.transformers needs Hugging Face transformers: "
                      "pip install 'mlflow-flux[transformers]'") from exc

from ..traces.lifecycle import conclude
from ..watcher import FluxWatcher, checked_watch_options, watch
from ._common import RunChoice, active_or_new_run, end_started_run, every_n_steps_option

__all__ = ["FluxCallback"]

_log = hf_logging.get_logger(__name__)


class FluxCallback(TrainerCallback):
    """Watch the model during ``Trainer.train()``.

    Args:
        every_n_steps: snapshot every N global (optimizer) steps, the trace's ``epoch`` column then holds the
            step; default ``None``: once per epoch.
        **watch_options: :func:`mlflow_flux.watch`'s options (``layers``, ``window``, ``tau``, ...).
    """

    def __init__(self, *, every_n_steps: int | None = None, **watch_options: Any) -> None:
        self.every_n_steps = every_n_steps_option(every_n_steps)
        self.watch_options = checked_watch_options(watch_options)
        self.watcher: FluxWatcher | None = None
        self._run: RunChoice | None = None
        self._epochs = 0
        self._previous_hook = None

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.watcher is not None or model is None:
            return
        options = dict(self.watch_options)
        if "optimizer" not in options and optimizer is not None and options.get("recycle", "none") != "none":
            # A reset zeroes the moments of what it changes: in the torch optimizer that holds them, inside
            # accelerate's AcceleratedOptimizer (which takes no step hooks of its own).
            options["optimizer"] = getattr(optimizer, "optimizer", optimizer)
        if state.is_world_process_zero and "run_id" not in options:
            # By now transformers' MLflowCallback (report_to="mlflow") has started its run in on_train_begin.
            self._run = active_or_new_run("Hugging Face")
            options["run_id"] = self._run.run_id
            _log.info("mlflow-flux records into %s", self._run.how)
        self.watcher = watch(model, **options)
        try:
            self.watcher.start()
        except BaseException as exc:
            self.watcher = None
            end_started_run(self._run, exc)
            raise
        self._previous_hook, sys.excepthook = sys.excepthook, self._on_uncaught

    def on_step_end(self, args, state, control, **kwargs):
        if self.every_n_steps is not None and self.watcher is not None and state.global_step % self.every_n_steps == 0:
            self.watcher.end_step(state.global_step)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.every_n_steps is None and self.watcher is not None:
            self.watcher.end_epoch(self._epochs)
            self._epochs += 1

    def on_train_end(self, args, state, control, **kwargs):
        self._close(None)

    def _on_uncaught(self, exc_type, exc, traceback) -> None:
        """``sys.excepthook`` while training runs: the training died of ``exc``."""
        previous = self._previous_hook or sys.__excepthook__
        try:
            self._close(exc)
        finally:
            previous(exc_type, exc, traceback)

    def _close(self, exc: BaseException | None) -> None:
        if self._previous_hook is not None and sys.excepthook == self._on_uncaught:
            sys.excepthook = self._previous_hook
        self._previous_hook = None
        watcher, self.watcher = self.watcher, None
        if watcher is None:
            return
        result = None
        try:
            result = watcher.close(interrupted=isinstance(exc, KeyboardInterrupt))
        finally:
            if exc is not None and watcher.run_id is not None and not (self._run and self._run.started):
                # A run someone else started (transformers' MLflowCallback): the failed training still ends it.
                conclude(watcher.client, watcher.run_id, exc, result)
            else:
                end_started_run(self._run, exc, result)
