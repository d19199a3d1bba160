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


class _LayerFigureData:
    """One layer's share of :class:`RunFigureData`."""

    def __init__(self, name: str, width: int) -> None:
        self.name = name
        self.width = width
        self.sample = np.arange(0, width, max(1, width // _MAX_LINES))[:_MAX_LINES]
        self.median_sample = np.linspace(0, width - 1, min(width, _MEDIAN_SAMPLE)).astype(int)
        self.lines: dict[str, list[np.ndarray]] = {"w_std": [], "bias": []}
        # Medians are taken when drawing, from these columns: a selection per layer per snapshot was the largest
        # part of a snapshot's cost.
        self.median_columns: dict[str, list[np.ndarray]] = {"w_std": [], "bias": []}
        # w_step heatmap: neurons averaged into row bins, snapshots into column bins of `span` snapshots each
        self.row_starts = np.linspace(0, width, min(width, _MAX_ROWS) + 1).astype(int)[:-1]
        self.row_sizes = np.diff(np.r_[self.row_starts, width])
        self.columns: list[np.ndarray] = []  # finished bins: mean log-free w_step per row bin
        self.column_epochs: list[int] = []  # first epoch of each finished bin
        self.span = 1
        self._partial = np.zeros((2, len(self.row_starts)))  # sum and count of finite values in the open bin
        self._partial_snapshots = 0
        self._partial_epoch = 0

    def add(self, epoch: int, columns: Mapping[str, np.ndarray]) -> None:
        for name in ("w_std", "bias"):
            values = columns[name]
            self.lines[name].append(values[self.sample].astype(np.float32))
            self.median_columns[name].append(values[self.median_sample].astype(np.float32))
        step = columns["w_step"].astype(np.float64)
        finite = np.isfinite(step)
        if self._partial_snapshots == 0:
            self._partial_epoch = epoch
        if len(self.row_starts) == self.width:  # a row per neuron: nothing to bin (reduceat costs ~50 us a call)
            self._partial[0] += np.where(finite, step, 0.0)
            self._partial[1] += finite
        else:
            self._partial[0] += np.add.reduceat(np.where(finite, step, 0.0), self.row_starts)
            self._partial[1] += np.add.reduceat(finite.astype(np.float64), self.row_starts)
        self._partial_snapshots += 1
        if self._partial_snapshots == self.span:
            self._finish_column()

    def _finish_column(self) -> None:
        with np.errstate(invalid="ignore", divide="ignore"):
            self.columns.append(self._partial[0] / self._partial[1])
        self.column_epochs.append(self._partial_epoch)
        self._partial[:] = 0
        self._partial_snapshots = 0
        if len(self.columns) == _MAX_COLUMNS:  # halve the resolution: memory stays flat however long the run
            pairs = [np.nanmean(np.stack(self.columns[i : i + 2]), axis=0) for i in range(0, _MAX_COLUMNS, 2)]
            self.columns, self.column_epochs = pairs, self.column_epochs[::2]
            self.span *= 2

    def medians(self, name: str) -> np.ndarray:
        """The layer's median of ``name`` at each snapshot (over up to 256 evenly spaced neurons)."""
        return median(np.stack(self.median_columns[name]))

    def heatmap(self) -> tuple[np.ndarray, list[int]]:
        columns, epochs = list(self.columns), list(self.column_epochs)
        if self._partial_snapshots:
            with np.errstate(invalid="ignore", divide="ignore"):
                columns.append(self._partial[0] / self._partial[1])
            epochs.append(self._partial_epoch)
        return (np.stack(columns, axis=1) if columns else np.empty((len(self.row_starts), 0))), epochs


class RunFigureData:
    """What one run's figures draw, gathered snapshot by snapshot, so that drawing them never reads the trace back.

    Per layer it keeps ``w_std`` and ``bias`` of at most 48 neurons (the thin lines) and of at most 256 evenly spaced
    ones (their median is the thick line: the layer's median up to that width), and a ``w_step`` grid of at most
    256 neuron bins x 400 snapshot bins; plus the participating fractions of the live summaries. Memory grows with
    the number of snapshots by a few kilobytes per layer, never with the layer's width.
    """

    def __init__(self, layers: Sequence[tuple[str, int]]) -> None:
        self.layers = [_LayerFigureData(name, width) for name, width in layers]
        self.epochs: list[int] = []
        self.participation: dict[str, dict[int, float]] = {}

    def add(self, epoch: int, layer_columns: Sequence[Mapping[str, np.ndarray]]) -> None:
        """One snapshot: per layer (in the order given at construction) its ``w_std``, ``bias``, ``w_step``."""
        self.epochs.append(epoch)
        for layer, columns in zip(self.layers, layer_columns):
            layer.add(epoch, columns)

    def add_summaries(self, epoch: int, summaries: Mapping[str, float]) -> None:
        """The live summaries at ``epoch`` (keys ``<layer>/<key>`` and ``all/<key>``)."""
        for key, value in summaries.items():
            if key.endswith("/participating_frac"):
                self.participation.setdefault(key.rsplit("/", 1)[0], {})[epoch] = float(value)

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
    fig, axes = _panels(len(data.layers), title)
    for ax, layer in zip(axes, data.layers):
        ax.plot(data.epochs, np.stack(layer.lines[column]), lw=0.5, alpha=0.5)
        ax.plot(data.epochs, layer.medians(column), color="black", lw=1.8, label="median")
        ax.set_title(f"{layer.name} ({layer.width} neurons)", fontsize=9)
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
    fig, axes = _panels(len(data.layers), "Weight step per neuron and epoch (log10 of the L2 norm)")
    last = data.epochs[-1] + 1
    for ax, layer in zip(axes, data.layers):
        grid, epochs = layer.heatmap()
        with np.errstate(divide="ignore", invalid="ignore"):
            logged = np.log10(grid)
        logged[~np.isfinite(logged)] = np.nan
        image = ax.imshow(logged, aspect="auto", interpolation="nearest", cmap="viridis",
                          extent=(float(epochs[0]) if epochs else 0.0, float(last), layer.width, 0))
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set_title(layer.name, fontsize=9)
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
