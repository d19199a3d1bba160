"""What both framework callbacks share: which MLflow run a fit records into, and the callback's own options."""

from __future__ import annotations

from ..errors import InvalidParameter
from ..traces.lifecycle import RunEnd, conclude

__all__ = ["every_n_steps_option", "RunChoice", "active_or_new_run", "end_started_run"]


def every_n_steps_option(value: int | None) -> int | None:
    """``None`` (one snapshot per training epoch) or a positive number of optimizer steps between snapshots."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidParameter("every_n_steps", value, "expected a positive integer, or None for once per epoch")
    return value


class RunChoice:
    """The run a callback records into, and whether the callback started it (then it also ends it)."""

    def __init__(self, run_id: str, started: bool, how: str) -> None:
        self.run_id, self.started, self.how = run_id, started, how


def active_or_new_run(framework: str) -> RunChoice:
    """The active MLflow run, or a new one that the callback ends; ``how`` says which (the callback logs it)."""
    import mlflow

    active = mlflow.active_run()
    if active is not None:
        choice = RunChoice(active.info.run_id, False, f"the active MLflow run {active.info.run_id}")
    else:
        run = mlflow.start_run()
        choice = RunChoice(run.info.run_id, True, f"a new MLflow run {run.info.run_id} (the {framework} trainer "
                           "logs to no MLflow run and none is active)")
    return choice


def end_started_run(choice: RunChoice | None, exc: BaseException | None = None, result: RunEnd | None = None) -> None:
    """End the run the callback started (no other): as :func:`~mlflow_flux.traces.lifecycle.status_of` decides from
    how the fit ended (``exc``: the exception that stopped it) and what the watcher's close left (``result``)."""
    import mlflow

    if choice is None or not choice.started:
        return
    conclude(mlflow.MlflowClient(), choice.run_id, exc, result)
