"""One owner of a run's ending: FINISHED, FAILED with its reason, KILLED on a signal, or kept locally with a tag that
says what is missing, where the local copy is and the command that uploads it.

Every entry point ends its runs here (``train``, the sweep, the report, the watcher on Ctrl-C, the framework
callbacks, the CLI on bad input), so a run's status always says what happened:

    with ending(client, run_id) as end:
        ...                                  # the work; an exception ends the run FAILED (KILLED for Ctrl-C/SIGTERM)
        end.missing(result)                  # what did not reach the artifact store, if anything
    # here the run is ended: FINISHED, or FINISHED with mlflow_flux.missing and the recovery command

A run whose tracking server stopped answering cannot be ended: it is taken off MLflow's fluent stack without a
request (MLflow would retry for minutes), and the caller says so and exits 3.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import mlflow_adapter
from .runs import FAILURE_TAG

__all__ = ["MISSING_TAG", "KEPT_AT_TAG", "RunEnd", "ending", "finish_run", "abandon", "mark_missing", "upload_command",
           "interruption"]

_log = logging.getLogger(__name__)

MISSING_TAG = "mlflow_flux.missing"  # what did not reach the artifact store, and how to upload it
KEPT_AT_TAG = "mlflow_flux.kept_at"  # the local directory that holds it


def upload_command(run_id: str, directory: Path) -> str:
    """The command that uploads a kept spool into the run, every file where a normal run has it."""
    return f"mlflow-flux upload {run_id} {shlex.quote(str(directory))}"


def interruption(exc: KeyboardInterrupt) -> str:
    """Why a run was stopped, in words: by which signal, or Ctrl-C."""
    return f"stopped by {exc.args[0]}" if hasattr(exc, "signum") else "interrupted (Ctrl-C)"


@dataclass
class RunEnd:
    """What the work inside :func:`ending` found out about its run's results."""

    run_id: str
    absent: list[str] = field(default_factory=list)  # artifact paths that did not reach the store
    kept_at: Path | None = None  # where they are on local disk
    offline: bool = False  # the tracking server stopped answering: the run cannot be ended
    failure: str | None = None  # the work finished but failed (e.g. a sweep's variants): the reason
    status: str | None = None  # how the run ended (set when the block exits)

    def fail(self, reason: str) -> None:
        """End the run FAILED with ``reason``, though the block finishes without an exception."""
        self.failure = reason

    def missing(self, paths: Sequence[str], kept_at: Path | None) -> None:
        """Artifacts that did not reach the store, kept at ``kept_at``."""
        self.absent.extend(p for p in paths if p not in self.absent)
        if kept_at is not None:
            self.kept_at = kept_at

    def lost_tracking(self) -> None:
        self.offline = True

    @property
    def complete(self) -> bool:
        return not self.absent and not self.offline

    def describe(self) -> str:
        """What is missing, where it is, and the command that uploads it, in one line."""
        what = f"{', '.join(self.absent)} did not reach the artifact store" if self.absent else "nothing is missing"
        if self.kept_at is None:
            return what
        return f"{what}; kept at {self.kept_at}; upload it with: {upload_command(self.run_id, self.kept_at)}"


def finish_run(client, run_id: str, status: str, reason: str | None = None, end: RunEnd | None = None) -> None:
    """End ``run_id`` with ``status``, its reason (``mlflow_flux.failure``) and what is missing, if anything.

    The fluent API's active run is ended through it (so ``mlflow.start_run``'s own exit leaves it alone); another
    run through the client. A run whose tracking server does not answer is only taken off the fluent stack.
    """
    import mlflow

    if end is not None and end.offline:
        abandon(run_id)
        return
    if reason:
        client.set_tag(run_id, FAILURE_TAG, reason[:5000])
    if end is not None and end.absent:
        mark_missing(client, end)
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(status)
    else:
        client.set_terminated(run_id, status)
    if end is not None:
        end.status = status


def abandon(run_id: str) -> None:
    """Leave ``run_id`` RUNNING on a server that does not answer: off the fluent API's stack, with no request (MLflow's
    ``end_run``, and its ``atexit`` hook, would retry for minutes and hold the process at exit)."""
    if mlflow_adapter.abandon_active_run(run_id):
        _log.warning("run %s stays RUNNING: the tracking server does not answer", run_id)


def mark_missing(client, end: RunEnd) -> None:
    """Tag the run with what did not reach its artifact store, where it is kept, and the command that uploads it."""
    client.set_tag(end.run_id, MISSING_TAG, end.describe()[:5000])
    if end.kept_at is not None:
        client.set_tag(end.run_id, KEPT_AT_TAG, str(end.kept_at))


@contextlib.contextmanager
def ending(client, run_id: str) -> Iterator[RunEnd]:
    """End ``run_id`` honestly when the block exits: FINISHED (with ``mlflow_flux.missing`` when artifacts did not
    all reach the store), FAILED with the exception as its reason, KILLED on Ctrl-C or SIGTERM. The exception goes
    on."""
    end = RunEnd(run_id)
    status, reason = "FAILED", None
    try:
        yield end
        status, reason = ("FAILED", end.failure) if end.failure else ("FINISHED", None)
    except KeyboardInterrupt as exc:
        status, reason = "KILLED", interruption(exc)
        raise
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        finish_run(client, run_id, status, reason, end)
