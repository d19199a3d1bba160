"""The protocol every output of a watched run follows, and what the coordinator hands it.

An output is one thing a watched run produces: its trace, its live summaries, its figures, its explorer page, its
neuron resets, or a user's own. It has three hooks, each optional:

    start(run)         the run is resolved and the hooks are on: open what it writes (``run`` is a WatchedRun)
    end_epoch(step)    every end_epoch()/end_step() call: ``step.snapshot`` on snapshot epochs; may return metrics
    close(closing)     the run ends: ``closing.deadline`` bounds any wait, ``closing.interrupted`` says why

Two kinds (:attr:`RunOutput.kind`): **observers** run on rank 0 only and only read (everything a run wrote before
actions existed); **actions** run on every rank, before the observers see the snapshot, and may change parameters
and optimizer state, identically on every rank. The coordinator (:class:`~mlflow_flux.watcher.FluxWatcher`) holds
an ordered list of outputs and knows none of them by name; the built-in ones are named by the settings table
(:data:`mlflow_flux.settings.RecorderSettings`, each setting that enables one carries its ``output``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # annotations only: no import at run time
    from ..recording.recorder import NeuronRecorder
    from ..settings import RecorderSettings
    from ..traces.metrics import MetricLogger
    from ..traces.schema import Snapshot
    from ..traces.sink import TraceSink
    from ..traces.uploads import Uploads

__all__ = ["RunOutput", "WatchedRun", "Step", "Closing", "OBSERVER", "ACTION"]

OBSERVER, ACTION = "observer", "action"

_log = logging.getLogger(__name__)


@dataclass
class WatchedRun:
    """What every output of one watched run shares, handed to :meth:`RunOutput.start`.

    Attributes:
        client: an ``MlflowClient`` (None on ranks other than 0).
        run_id: the run recorded into (None on ranks other than 0).
        run_name: its name, as the UI shows it.
        settings: the recorder's settings.
        recorder: the hooks and sums: ``layer_names``, ``layer_sizes``, ``model``, ``optimizer``, ``rank``.
        spool: the local directory the run's files are written to before they are uploaded.
        uploads: the run's uploads (figures, pages, the trace): one deadline, one account of what arrived.
        metrics: the run's batched metric logger.
        trace: the trace being written (set by the trace output when it starts): later outputs may
            :meth:`~mlflow_flux.traces.sink.TraceSink.observe` it, or read it back at close.
        fingerprint: the hash of the watched weights when the watcher started (runs that share it share their start).
        extra: room for an output to leave something for the ones after it.
    """

    client: Any
    run_id: str | None
    run_name: str
    settings: RecorderSettings
    recorder: NeuronRecorder
    spool: Path | None = None
    uploads: Uploads | None = None
    metrics: MetricLogger | None = None
    trace: TraceSink | None = None
    fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return self.recorder.rank

    def log_figure(self, figure, artifact_file: str) -> None:
        """Save a matplotlib figure into the spool and upload it to the run, like ``mlflow.log_figure``, but through
        the run's uploads: bounded by the close's deadline, and named in :attr:`RunEnd.missing` (the spool keeps it)
        when it does not arrive. A figure never fails a run: one that cannot be saved is a warning."""
        if self.uploads is None:
            return
        path = self.spool / artifact_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path, format="png", dpi=100)
        except Exception as exc:  # noqa: BLE001 - matplotlib's errors have no common base but Exception
            _log.warning("figure %s of run %s not saved: %s", artifact_file, self.run_id, exc)
            return
        self.uploads.upload(path, artifact_file.rsplit("/", 1)[0] if "/" in artifact_file else None)


@dataclass
class Step:
    """One ``end_epoch(epoch, metrics)`` call, as the outputs see it, in order.

    Attributes:
        epoch: the index passed (an epoch, or a global step).
        metrics: what the training loop passed (read only).
        snapshot: the statistics of every watched neuron since the previous one, on snapshot epochs (rank 0; None
            elsewhere). Actions see it first and may record into it what they did.
        summaries: the live summaries of the window ending here, when the summaries output computed them
            (``"<layer>/<key>"`` and ``"all/<key>"``).
        resets: units an action reset at this step, by layer (integer arrays): their windows start again.
    """

    epoch: int
    metrics: Mapping[str, Any]
    snapshot: Snapshot | None = None
    summaries: dict[str, float] = field(default_factory=dict)
    resets: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Closing:
    """How a run closes: by ``deadline`` (``time.monotonic()``) every upload must be done; ``interrupted`` by Ctrl-C or
    a signal; ``failed``: the recording stopped with an error (e.g. a full disk) before the end."""

    deadline: float
    interrupted: bool = False
    failed: bool = False

    @property
    def left(self) -> float:
        """Seconds until the deadline (0 once passed)."""
        return max(0.0, self.deadline - time.monotonic())


class RunOutput:
    """One output of a watched run. Subclass it and override the hooks you need; pass an instance in
    ``watch(model, outputs=[...])``.

    Constructors only store settings: side effects (opening files, threads) happen in :meth:`start`.
    """

    kind: ClassVar[str] = OBSERVER

    @classmethod
    def from_settings(cls, settings: RecorderSettings) -> RunOutput:
        """The built-in outputs are made from the run's settings (the setting that enables one names it)."""
        return cls()

    def start(self, run: WatchedRun) -> None:
        """The run is resolved, its params logged and the hooks attached."""

    def end_epoch(self, step: Step) -> Mapping[str, float] | None:
        """One ``end_epoch()``; return metrics to log at ``step.epoch`` (names as for ``end_epoch``), or None."""
        return None

    def close(self, closing: Closing) -> None:
        """The run ends; queue what remains to upload (``run.uploads``) and wait at most ``closing.left``."""
