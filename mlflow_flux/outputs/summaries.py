"""The live summaries: the fluctuation summaries (:mod:`mlflow_flux.fluctuation`) of the window ending at every
``summary_every``-th snapshot, logged as ``flux/...`` metrics, with the same arithmetic the report uses offline."""

from __future__ import annotations

import collections

import numpy as np

from .. import fluctuation
from ..traces.schema import SUMMARY_COLUMNS
from .base import RunOutput, Step, WatchedRun

__all__ = ["LiveSummaries"]

# Readings that are not defined for some layers (ReLU's, after another activation; reduced widths, without a known
# chain): those are not logged there. Any other NaN is logged, as it always was.
_UNPUBLISHED_WHEN_UNDEFINED = {s.key for s in fluctuation.SUMMARIES if s.relu or s.key.startswith("reduced_width")}


class LiveSummaries(RunOutput):
    """Logs ``flux/<key>`` (the network's counted units) and ``flux/<layer>/<key>`` for the keys in
    ``layer_metrics``, and ``flux/nonfinite`` where a snapshot holds non-finite values; leaves the full row in
    ``step.summaries`` for the outputs after it.

    Each ``log_batch`` costs MLflow's sqlite store ~0.2 ms per metric: a few dozen keys every epoch would cost more
    than the hooks. The trace keeps every snapshot, and the report recomputes every epoch.
    """

    @classmethod
    def from_settings(cls, settings) -> LiveSummaries:
        return cls(settings)

    def __init__(self, settings) -> None:
        self.settings = settings
        self._recent: dict[str, collections.deque] = {}
        self._snapshots = 0
        self._recorder = None

    def start(self, run: WatchedRun) -> None:
        names = run.recorder.layer_names
        self._recorder = run.recorder
        # Every key is mapped for MLflow now, so a clash between two layer names fails here, not later.
        for key in fluctuation.SUMMARY_KEYS:
            run.metrics.names.key(f"flux/{key}")
            if key in self.settings.layer_metrics:
                for name in names:
                    run.metrics.names.key(f"flux/{name}/{key}")
        window = self.settings.window
        self._recent = {name: collections.deque(maxlen=window) for name in names}

    def end_epoch(self, step: Step) -> dict[str, float] | None:
        snapshot = step.snapshot
        if snapshot is None:
            return None
        for name, recent in self._recent.items():
            rows = snapshot.layer_slice(name)
            recent.append({c: snapshot.column(c)[rows] for c in SUMMARY_COLUMNS})
            if name in step.resets:  # reset units start their window again (fluctuation.restart_windows)
                for entry in recent:
                    for column in fluctuation.WINDOW_COLUMNS:
                        entry[column] = entry[column].copy()  # a view of the snapshot, which the trace keeps
                        entry[column][step.resets[name]] = np.nan
        self._snapshots += 1
        out = {"flux/nonfinite": float(snapshot.nonfinite)} if snapshot.nonfinite else {}
        window, every = self.settings.window, self.settings.summary_every
        if self._snapshots < window or (self._snapshots - window) % every != 0:
            return out
        # The same shaping as the offline recomputation: one stack of the last `window` snapshots per layer.
        layers = {name: {c: np.stack([s[c] for s in recent]) for c in SUMMARY_COLUMNS}
                  for name, recent in self._recent.items()}
        # The activations are known once a training pass showed them (the first snapshot's).
        layout = fluctuation.Layout(tuple(self._recent), self._recorder.activations, self.settings.network_units)
        summaries = fluctuation.window_summaries(layers, window, self.settings.thresholds, layout)
        row = {key: float(values[0]) for key, values in summaries.items()}
        step.summaries.update(row)
        for name, value in row.items():
            scope, key = name.rsplit("/", 1)
            if not np.isfinite(value) and (key in _UNPUBLISHED_WHEN_UNDEFINED and
                                           (key.startswith("reduced_width") or layout.not_relu(scope))):
                continue  # not defined here (a ReLU reading after tanh, a width without a chain): not published
            if scope == "all":
                out[f"flux/{key}"] = value
            elif key in self.settings.layer_metrics:
                out[f"flux/{name}"] = value
        return out
