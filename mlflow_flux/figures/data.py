"""What a watched run's figures draw, gathered snapshot by snapshot (numpy only).

Kept apart from :mod:`.draw` (which draws them, :func:`~.draw.run_figures`) so that ``watch()`` never imports
matplotlib: the figures are drawn at ``close()`` (about 0.3 s of imports a run without figures never pays), and
``watch(log_figures=False)`` gathers nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["RunFigureData", "quantiles"]

_SAMPLE = 256  # neurons per layer whose median and 10-90% band are drawn: all of them up to this width
_MAX_COLUMNS = 400  # heatmap columns: longer runs are averaged into at most this many bins of snapshots
_MAX_ROWS = 256  # heatmap rows: wider layers are averaged into this many bins of neurons


class RunFigureData:
    """What one run's figures draw, gathered snapshot by snapshot, so that drawing them never reads the trace back.

    Per layer it keeps ``w_std`` and ``bias`` of at most 256 evenly spaced neurons (all of them up to that width),
    whose median and 10-90% band are drawn, and a ``w_step`` grid of at most 256 neuron bins x 400 snapshot bins;
    plus the participating fractions of the live summaries. Memory grows with the number of snapshots by a few
    kilobytes per layer, never with the layer's width.

    Each snapshot costs a handful of numpy calls over all layers at once (the indices are built here, once): per
    layer it would be a hundred small calls, most of a snapshot's cost.
    """

    def __init__(self, layers: Sequence[tuple[str, int]]) -> None:
        self.names = [name for name, _ in layers]
        self.widths = [width for _, width in layers]
        offsets = np.concatenate([[0], np.cumsum(self.widths)[:-1]]).astype(int)
        samples = [np.linspace(0, w - 1, min(w, _SAMPLE)).astype(int) for w in self.widths]
        bins = [np.linspace(0, w, min(w, _MAX_ROWS) + 1).astype(int)[:-1] for w in self.widths]
        self._sample_index, self.sample_slices = self._global(samples, offsets)
        self._bin_starts, self.bin_slices = self._global(bins, offsets)
        self._bins_are_neurons = len(self._bin_starts) == sum(self.widths)
        self.epochs: list[int] = []
        self.samples: dict[str, list[np.ndarray]] = {"w_std": [], "bias": []}
        self.participation: dict[str, dict[int, float]] = {}
        # w_step heatmap: finished columns, each the mean over `span` snapshots; the open one as (sum, count)
        self._columns: list[np.ndarray] = []
        self._column_epochs: list[int] = []
        self._span = 1
        self._partial = np.zeros((2, len(self._bin_starts)))
        self._partial_snapshots = 0
        self._partial_epoch = 0

    @staticmethod
    def _global(per_layer: list[np.ndarray], offsets: np.ndarray) -> tuple[np.ndarray, list[slice]]:
        index = np.concatenate([positions + offset for positions, offset in zip(per_layer, offsets)])
        stops = np.cumsum([len(positions) for positions in per_layer])
        return index, [slice(int(stop - len(p)), int(stop)) for p, stop in zip(per_layer, stops)]

    def add(self, snapshot) -> None:
        """One snapshot (a :class:`~mlflow_flux.traces.schema.Snapshot` of the layers given at construction)."""
        self.epochs.append(snapshot.epoch)
        for name in ("w_std", "bias"):
            self.samples[name].append(snapshot.column(name)[self._sample_index])
        step = snapshot.column("w_step").astype(np.float64)
        finite = np.isfinite(step)
        if self._partial_snapshots == 0:
            self._partial_epoch = snapshot.epoch
        if self._bins_are_neurons:  # a row per neuron: nothing to bin
            self._partial[0] += np.where(finite, step, 0.0)
            self._partial[1] += finite
        else:
            self._partial[0] += np.add.reduceat(np.where(finite, step, 0.0), self._bin_starts)
            self._partial[1] += np.add.reduceat(finite.astype(np.float64), self._bin_starts)
        self._partial_snapshots += 1
        if self._partial_snapshots == self._span:
            self._finish_column()

    def _finish_column(self) -> None:
        with np.errstate(invalid="ignore", divide="ignore"):
            self._columns.append(self._partial[0] / self._partial[1])
        self._column_epochs.append(self._partial_epoch)
        self._partial[:] = 0
        self._partial_snapshots = 0
        if len(self._columns) == _MAX_COLUMNS:  # halve the resolution: memory stays flat however long the run
            self._columns = [np.nanmean(np.stack(self._columns[i : i + 2]), axis=0) for i in range(0, _MAX_COLUMNS, 2)]
            self._column_epochs = self._column_epochs[::2]
            self._span *= 2

    def add_summaries(self, epoch: int, summaries: Mapping[str, float]) -> None:
        """The live summaries at ``epoch`` (keys ``<layer>/<key>`` and ``all/<key>``)."""
        for key, value in summaries.items():
            if key.endswith("/participating_frac"):
                self.participation.setdefault(key.rsplit("/", 1)[0], {})[epoch] = float(value)

    def layer_band(self, layer: int, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The layer's 10th percentile, median and 90th percentile of ``name`` at each snapshot (NaN ignored)."""
        values = np.stack(self.samples[name])[:, self.sample_slices[layer]].astype(np.float64)
        return tuple(quantiles(values, (0.1, 0.5, 0.9)))

    def heatmap(self) -> tuple[np.ndarray, list[int]]:
        """``(neuron bins of every layer, snapshot bins)`` mean ``w_step``, and each column's first epoch."""
        columns, epochs = list(self._columns), list(self._column_epochs)
        if self._partial_snapshots:
            with np.errstate(invalid="ignore", divide="ignore"):
                columns.append(self._partial[0] / self._partial[1])
            epochs.append(self._partial_epoch)
        return (np.stack(columns, axis=1) if columns else np.empty((len(self._bin_starts), 0))), epochs


def quantiles(values: np.ndarray, fractions: Sequence[float]) -> list[np.ndarray]:
    """Per row of ``values``, each quantile (linear interpolation) of its non-NaN entries; NaN for a row of NaN.

    One sort for all rows: np.nanpercentile loops over rows in Python, half a second for a run's figures.
    """
    ordered = np.sort(values, axis=1)  # NaN sorts last
    counts = (~np.isnan(values)).sum(axis=1)
    rows = np.arange(len(values))
    out = []
    for fraction in fractions:
        position = fraction * np.maximum(counts - 1, 0)
        below = np.floor(position).astype(int)
        above = np.minimum(below + 1, np.maximum(counts - 1, 0))
        weight = position - below
        low, high = ordered[rows, below], ordered[rows, above]
        with np.errstate(invalid="ignore"):  # inf * 0 where a diverged run holds inf: the exact order statistic
            value = np.where(weight == 0, low, low * (1 - weight) + high * weight)
        out.append(np.where(counts > 0, value, np.nan))
    return out
