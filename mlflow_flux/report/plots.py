"""Figures. Each function takes data and returns a matplotlib Figure; none fetches anything.

Figures are built with ``matplotlib.figure.Figure`` directly, so no pyplot state and no GUI backend is touched.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..fluctuation import median

__all__ = [
    "RunFigureData",
    "neuron_lines_figure",
    "participation_figure",
    "w_step_heatmap_figure",
    "curves_by_group_figure",
    "stacked_images_figure",
]

_MAX_LINES = 48  # neurons drawn per panel: enough to see the spread, few enough to see anything
_MEDIAN_SAMPLE = 256  # neurons whose median is the thick line: all of them up to this width
_MAX_COLUMNS = 400  # heatmap columns: longer runs are averaged into at most this many bins of snapshots
_MAX_ROWS = 256  # heatmap rows: wider layers are averaged into this many bins of neurons


def _panels(count: int, title: str) -> tuple[Figure, list]:
    cols = min(3, count)
    rows = -(-count // cols)
    fig = Figure(figsize=(4.2 * cols, 2.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[count:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes[:count]


class RunFigureData:
    """What one run's figures draw, gathered snapshot by snapshot, so that drawing them never reads the trace back.

    Per layer it keeps ``w_std`` and ``bias`` of at most 48 neurons (the thin lines) and of at most 256 evenly spaced
    ones (their median is the thick line: the layer's median up to that width), and a ``w_step`` grid of at most
    256 neuron bins x 400 snapshot bins; plus the participating fractions of the live summaries. Memory grows with
    the number of snapshots by a few kilobytes per layer, never with the layer's width.

    Each snapshot costs a handful of numpy calls over all layers at once (the indices are built here, once): per
    layer it would be a hundred small calls, most of a snapshot's cost.
    """

    def __init__(self, layers: Sequence[tuple[str, int]]) -> None:
        self.names = [name for name, _ in layers]
        self.widths = [width for _, width in layers]
        offsets = np.concatenate([[0], np.cumsum(self.widths)[:-1]]).astype(int)
        lines = [np.arange(0, w, max(1, w // _MAX_LINES))[:_MAX_LINES] for w in self.widths]
        medians = [np.linspace(0, w - 1, min(w, _MEDIAN_SAMPLE)).astype(int) for w in self.widths]
        bins = [np.linspace(0, w, min(w, _MAX_ROWS) + 1).astype(int)[:-1] for w in self.widths]
        self._line_index, self.line_slices = self._global(lines, offsets)
        self._median_index, self.median_slices = self._global(medians, offsets)
        self._bin_starts, self.bin_slices = self._global(bins, offsets)
        self._bins_are_neurons = len(self._bin_starts) == sum(self.widths)
        self.epochs: list[int] = []
        self.lines: dict[str, list[np.ndarray]] = {"w_std": [], "bias": []}
        self.median_columns: dict[str, list[np.ndarray]] = {"w_std": [], "bias": []}
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
            values = snapshot.column(name)
            self.lines[name].append(values[self._line_index])
            self.median_columns[name].append(values[self._median_index])
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

    def layer_lines(self, layer: int, name: str) -> np.ndarray:
        """``(snapshots, sampled neurons)`` values of ``name`` of one layer."""
        return np.stack(self.lines[name])[:, self.line_slices[layer]]

    def layer_medians(self, layer: int, name: str) -> np.ndarray:
        """The layer's median of ``name`` at each snapshot (over up to 256 evenly spaced neurons)."""
        return median(np.stack(self.median_columns[name])[:, self.median_slices[layer]])

    def layer_heatmap(self, layer: int) -> tuple[np.ndarray, list[int]]:
        """``(neuron bins, snapshot bins)`` mean ``w_step`` of one layer, and each column's first epoch."""
        columns, epochs = list(self._columns), list(self._column_epochs)
        if self._partial_snapshots:
            with np.errstate(invalid="ignore", divide="ignore"):
                columns.append(self._partial[0] / self._partial[1])
            epochs.append(self._partial_epoch)
        rows = self.bin_slices[layer]
        grid = np.stack(columns, axis=1)[rows] if columns else np.empty((rows.stop - rows.start, 0))
        return grid, epochs

    def figures(self) -> dict[str, Figure]:
        """The figures of the run, keyed by file stem (none before the first snapshot)."""
        if not self.epochs:
            return {}
        figures = {
            "weight_fluctuations": neuron_lines_figure(
                self, "w_std", "Weight fluctuations: spread (std of incoming weights) per neuron", "w_std"),
            "bias_fluctuations": neuron_lines_figure(self, "bias", "Bias fluctuations per neuron", "bias"),
            "w_step_heatmap": w_step_heatmap_figure(self),
        }
        if self.participation:
            series = {name: pd.Series(values).sort_index() for name, values in self.participation.items()}
            figures["participation"] = participation_figure(series, "Participating neurons over epochs")
        return figures


def neuron_lines_figure(data: RunFigureData, column: str, title: str, ylabel: str) -> Figure:
    """Per layer, ``column`` of a sample of neurons over epochs (thin) and the layer median (thick)."""
    fig, axes = _panels(len(data.names), title)
    for layer, (ax, name, width) in enumerate(zip(axes, data.names, data.widths)):
        ax.plot(data.epochs, data.layer_lines(layer, column), lw=0.5, alpha=0.5)
        ax.plot(data.epochs, data.layer_medians(layer, column), color="black", lw=1.8, label="median")
        ax.set_title(f"{name} ({width} neurons)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
    return fig


def participation_figure(series: Mapping[str, pd.Series], title: str, ylabel: str = "participating fraction") -> Figure:
    """One line per named series (index: epoch)."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for label, values in series.items():
        ax.plot(values.index, values.to_numpy(), label=label, lw=1.5 if label == "all" else 1.0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    return fig


def w_step_heatmap_figure(data: RunFigureData) -> Figure:
    """Per layer, a neuron x epoch heatmap of log10 ``w_step`` (neurons and snapshots averaged into bins)."""
    fig, axes = _panels(len(data.names), "Weight step per neuron and epoch (log10 of the L2 norm)")
    last = data.epochs[-1] + 1
    for layer, (ax, name, width) in enumerate(zip(axes, data.names, data.widths)):
        grid, epochs = data.layer_heatmap(layer)
        with np.errstate(divide="ignore", invalid="ignore"):
            logged = np.log10(grid)
        logged[~np.isfinite(logged)] = np.nan
        image = ax.imshow(logged, aspect="auto", interpolation="nearest", cmap="viridis",
                          extent=(float(epochs[0]) if epochs else 0.0, float(last), width, 0))
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("neuron")
    return fig


def curves_by_group_figure(curves: Mapping[str, Sequence[pd.Series]], title: str, ylabel: str,
                           log_y: bool = False, xlabel: str = "epoch", log_x: bool = False) -> Figure:
    """One line per group (the mean of its series) with a band from the min to the max series."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for label, series in curves.items():
        frame = pd.concat(list(series), axis=1)
        mean = frame.mean(axis=1)
        line = ax.plot(mean.index, mean.to_numpy(), label=label)[0]
        if frame.shape[1] > 1:
            ax.fill_between(mean.index, frame.min(axis=1), frame.max(axis=1), color=line.get_color(), alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log_y:
        ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
    ax.legend(fontsize=8)
    return fig


def stacked_images_figure(images: Sequence[tuple[str, np.ndarray]], title: str) -> Figure:
    """Images (e.g. each run's reconstruction figure) stacked top to bottom with a label each."""
    fig = Figure(figsize=(9, 1.9 * len(images) + 0.4), layout="constrained")
    axes = fig.subplots(len(images), 1, squeeze=False)[:, 0]
    for ax, (label, image) in zip(axes, images):
        ax.imshow(image)
        ax.set_axis_off()
        ax.set_title(label, fontsize=9)
    fig.suptitle(title)
    return fig
