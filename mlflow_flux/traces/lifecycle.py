"""One owner of a run's ending: FINISHED, FAILED with its reason, KILLED on a signal, or kept locally with a tag that
says what is missing, where the local copy is and the command that uploads it.

One decision, :func:`status_of`, maps how a run ended (it finished, an exception, Ctrl-C or a signal, a failure the
work reported, tracking lost) to its MLflow status and reason; one writer, :func:`conclude`, writes it with the tags.
Every entry point ends its runs through them (``train``, the sweep and its variants, the report, the watcher on
Ctrl-C, both framework callbacks, the CLI on bad input, the helper that keeps KILLED past ``mlflow run``), so a run's
status always says what happened:

    with ending(client, run_id) as end:
        ...                                  # the work; an exception ends the run FAILED (KILLED for Ctrl-C/SIGTERM)
        end.add_missing(paths, kept_at)      # what did not reach the artifact store, if anything
    # here the run is ended: FINISHED, or FINISHED with mlflow_flux.missing and the recovery command

:class:`RunEnd` is the one result type of a run's close: what a watched run's outputs left behind (``watch()``'s
:attr:`~mlflow_flux.watcher.FluxWatcher.result`) and how ``train``, a sweep or a report ended.

A run whose tracking server stopped answering cannot be ended: it is taken off MLflow's fluent stack without a
request (MLflow would retry for minutes), and the caller says so and exits 3.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import mlflow_adapter
from .runs import FAILURE_TAG
from .schema import TRACE_ARTIFACT_DIR, TRACE_FILE

__all__ = ["MISSING_TAG", "KEPT_AT_TAG", "RunEnd", "status_of", "conclude", "ending", "abandon", "mark_missing",
           "close_channels",
           "upload_command", "interruption", "keep_killed_past_mlflow_run"]

_log = logging.getLogger(__name__)

MISSING_TAG = "mlflow_flux.missing"  # what did not reach the artifact store, and how to upload it
KEPT_AT_TAG = "mlflow_flux.kept_at"  # the local directory that holds it
TRACE_KEY = f"{TRACE_ARTIFACT_DIR}/{TRACE_FILE}"


def upload_command(run_id: str, directory: Path) -> str:
    """The command that uploads a kept spool into the run, every file where a normal run has it."""
    return f"mlflow-flux upload {run_id} {shlex.quote(str(directory))}"


def interruption(exc: KeyboardInterrupt) -> str:
    """Why a run was stopped, in words: by which signal, or Ctrl-C."""
    return f"stopped by {exc.args[0]}" if hasattr(exc, "signum") else "interrupted (Ctrl-C)"


@dataclass
class RunEnd:
    """What a run's close produced, and how the run ended: the one result type of a watched run, a variant, a sweep
    and a report.

    Attributes:
        run_id: the run.
        missing: artifact paths (``traces/traces.parquet``, figures, the explorer page) the run does not hold.
        kept_at: the local directory that keeps them (None: the run has it all).
        lost_metrics: metric values the run did not get.
        offline: the tracking server stopped answering: the run cannot be ended.
        failure: the work finished but failed (e.g. a sweep's variants): the reason; the run ends FAILED.
        killed: the work was stopped from outside (a signal to a child process): the reason; the run ends KILLED.
        status: how the run was ended (set by :func:`conclude`).
    """

    run_id: str
    missing: tuple[str, ...] = ()
    kept_at: Path | None = None
    lost_metrics: int = 0
    offline: bool = False
    failure: str | None = None
    killed: str | None = None
    status: str | None = None

    def fail(self, reason: str) -> None:
        """End the run FAILED with ``reason``, though the work finishes without an exception."""
        self.failure = reason

    def add_missing(self, paths: Sequence[str], kept_at: Path | None) -> None:
        """Artifacts that did not reach the store, kept at ``kept_at``."""
        self.missing = (*self.missing, *(p for p in paths if p not in self.missing))
        if kept_at is not None:
            self.kept_at = kept_at

    def lost_tracking(self) -> None:
        self.offline = True

    def include(self, other: RunEnd) -> None:
        """What another close left for this run (a watcher's, inside a variant's run): missing files, the local
        copy, lost metrics, a lost server."""
        self.add_missing(other.missing, other.kept_at)
        self.lost_metrics += other.lost_metrics
        self.offline = self.offline or other.offline

    @property
    def uploaded(self) -> bool:
        """The run holds its compacted trace (or had none to hold)."""
        return TRACE_KEY not in self.missing

    @property
    def kept_trace(self) -> Path | None:
        """The local spool that keeps what the run does not hold (None: the run has it all)."""
        return self.kept_at if self.missing else None

    @property
    def complete(self) -> bool:
        return not self.missing and not self.lost_metrics and not self.offline

    def describe(self) -> str:
        """What is missing, where it is, and the command that uploads it, in one line."""
        what = f"{', '.join(self.missing)} did not reach the artifact store" if self.missing else "nothing is missing"
        if self.kept_at is None:
            return what
        return f"{what}; kept at {self.kept_at}; upload it with: {upload_command(self.run_id, self.kept_at)}"


def status_of(exc: BaseException | None = None, end: RunEnd | None = None) -> tuple[str | None, str | None]:
    """The one decision: how a run ended, as its MLflow status and the reason it carries.

    Tracking lost (``end.offline``): no status, the run cannot be ended. Ctrl-C or a signal (``KeyboardInterrupt``,
    which :mod:`mlflow_flux.interrupts` raises for SIGTERM too): KILLED. Any other exception: FAILED with it. No
    exception: KILLED or FAILED when the work said so (``end.killed``, ``end.failure``), else FINISHED.

    >>> status_of(), status_of(ValueError("bad")), status_of(KeyboardInterrupt())
    (('FINISHED', None), ('FAILED', 'ValueError: bad'), ('KILLED', 'interrupted (Ctrl-C)'))
    >>> status_of(None, RunEnd("r", failure="2 variants failed")), status_of(None, RunEnd("r", offline=True))
    (('FAILED', '2 variants failed'), (None, None))
    """
    if end is not None and end.offline:
        return None, None
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED", interruption(exc)
    if exc is not None:
        return "FAILED", f"{type(exc).__name__}: {exc}"
    if end is not None and end.killed:
        return "KILLED", end.killed
    if end is not None and end.failure:
        return "FAILED", end.failure
    return "FINISHED", None


def conclude(client, run_id: str, exc: BaseException | None = None, end: RunEnd | None = None) -> RunEnd:
    """End ``run_id`` as :func:`status_of` decides, with its reason (``mlflow_flux.failure``) and what is missing: the
    only place a status is written.

    The fluent API's active run is ended through it (so ``mlflow.start_run``'s own exit leaves it alone); another run
    through the client. A run whose tracking server does not answer is only taken off the fluent stack.
    """
    end = end if end is not None else RunEnd(run_id)
    status, reason = status_of(exc, end)
    if status is None:
        abandon(run_id)
        return end
    if reason:
        client.set_tag(run_id, FAILURE_TAG, reason[:5000])
    if end.missing:
        mark_missing(client, end)
    _write_status(client, run_id, status)
    end.status = status
    return end


def _write_status(client, run_id: str, status: str) -> None:
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(status)
    else:
        client.set_terminated(run_id, status)


def abandon(run_id: str) -> None:
    """Leave ``run_id`` RUNNING on a server that does not answer: off the fluent API's stack, with no request (MLflow's
    ``end_run``, and its ``atexit`` hook, would retry for minutes and hold the process at exit)."""
    if mlflow_adapter.abandon_active_run(run_id):
        _log.warning("run %s stays RUNNING: the tracking server does not answer", run_id)


def close_channels(client, run_id: str, uploads, metrics, spool: Path, left) -> RunEnd:
    """Close a watched run's uploads and metric logger, each within ``left()`` seconds of the close's deadline, and
    say on the run (and in a warning) what did not arrive; the spool is removed only when everything did. The run's
    status is left to its owner (:func:`conclude`, ``mlflow.start_run``'s exit, or a framework's callback)."""
    uploaded = uploads.close(left())
    metrics_sent = metrics.close(left())
    missing = uploads.missing
    end = RunEnd(run_id, missing, spool if missing else None, metrics.lost,
                 uploads.offline or metrics.offline or not metrics_sent)
    if uploaded and not missing:
        shutil.rmtree(spool, ignore_errors=True)
    if end.lost_metrics and not end.offline:
        metrics.tag_losses()
    if end.offline:  # the run cannot be ended on a server that does not answer
        abandon(run_id)
    if end.missing:
        if not end.offline:  # the run says so itself, whoever ends it
            mark_missing(client, end)
        _log.warning("run %s: %s", run_id, end.describe())
    if end.lost_metrics:
        _log.warning("run %s lost %d metric values (%s)", run_id, end.lost_metrics,
                     "the tracking server stopped answering" if end.offline else "refused by the store")
    return end


def mark_missing(client, end: RunEnd) -> None:
    """Tag the run with what did not reach its artifact store, where it is kept, and the command that uploads it."""
    client.set_tag(end.run_id, MISSING_TAG, end.describe()[:5000])
    if end.kept_at is not None:
        client.set_tag(end.run_id, KEPT_AT_TAG, str(end.kept_at))


@contextlib.contextmanager
def ending(client, run_id: str) -> Iterator[RunEnd]:
    """End ``run_id`` honestly when the block exits (:func:`conclude` with the block's exception, if any); the
    exception goes on."""
    end = RunEnd(run_id)
    try:
        yield end
    except BaseException as exc:
        conclude(client, run_id, exc, end)
        raise
    conclude(client, run_id, None, end)


def keep_killed_past_mlflow_run(run_id: str, mlflow_run_pid: int, timeout: float = 60.0) -> None:
    """Make KILLED stick on the run ``mlflow run`` made for this process: ``mlflow run`` ends it FAILED once we exit
    (the workaround and its MLflow version: :func:`~.mlflow_adapter.after_mlflow_run_exits`). A helper process waits
    for it and ends the run KILLED again, through :func:`conclude`'s writer."""
    mlflow_adapter.after_mlflow_run_exits(mlflow_run_pid, [sys.executable, "-m", __name__, str(mlflow_run_pid),
                                                           run_id, str(timeout)])


def _restore_killed(parent: int, run_id: str, timeout: float) -> None:
    """The helper's work: wait for ``mlflow run`` (``parent``) to exit, then write KILLED again if it was changed."""
    from mlflow.tracking import MlflowClient

    mlflow_adapter.wait_for_exit(parent, timeout)
    client = MlflowClient()
    if client.get_run(run_id).info.status != "KILLED":
        _write_status(client, run_id, "KILLED")


if __name__ == "__main__":  # the helper started by keep_killed_past_mlflow_run
    _restore_killed(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]))
    os._exit(0)
