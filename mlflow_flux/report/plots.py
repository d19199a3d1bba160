"""Figures. Each function takes data and returns a matplotlib Figure; none fetches anything.

Figures are built with ``matplotlib.figure.Figure`` directly, so no pyplot state and no GUI backend is touched.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import matplotlib.patches
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = [
    "RunFigureData",
    "save_png",
    "neuron_bands_figure",
    "participation_figure",
    "w_step_heatmap_figure",
    "curves_by_group_figure",
    "stacked_images_figure",
    "verdict_timeline_figure",
    "VERDICT_COLOURS",
]

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
        return tuple(_quantiles(values, (0.1, 0.5, 0.9)))

    def heatmap(self) -> tuple[np.ndarray, list[int]]:
        """``(neuron bins of every layer, snapshot bins)`` mean ``w_step``, and each column's first epoch."""
        columns, epochs = list(self._columns), list(self._column_epochs)
        if self._partial_snapshots:
            with np.errstate(invalid="ignore", divide="ignore"):
                columns.append(self._partial[0] / self._partial[1])
            epochs.append(self._partial_epoch)
        return (np.stack(columns, axis=1) if columns else np.empty((len(self._bin_starts), 0))), epochs

    def figures(self) -> dict[str, Callable[[], Figure]]:
        """How to draw each figure of the run, keyed by file stem (none before the first snapshot): one figure that
        cannot be drawn then costs only itself."""
        if not self.epochs:
            return {}
        figures: dict[str, Callable[[], Figure]] = {
            "weight_fluctuations": lambda: neuron_bands_figure(
                self, "w_std", "Weight fluctuations: spread of each neuron's incoming weights", "w_std (log)",
                log_y=True),
            "bias_fluctuations": lambda: neuron_bands_figure(self, "bias", "Bias fluctuations", "bias"),
            "w_step_heatmap": lambda: w_step_heatmap_figure(self),
        }
        if self.participation:
            series = {name: pd.Series(values).sort_index() for name, values in self.participation.items()}
            figures["participation"] = lambda: participation_figure(series, "Participating neurons over epochs")
        return figures


def _single(title: str, size: tuple[float, float] = (7.5, 4.2)) -> tuple[Figure, object]:
    # One axes and a fixed layout: matplotlib's cost is per axes (ticks, text) and per layout pass, ~0.8 s for the
    # six-panel figures these replaced; at close() that was most of a watched run's end.
    fig = Figure(figsize=size)
    ax = fig.subplots()
    ax.set_title(title)
    return fig, ax


def save_png(figure: Figure, path) -> None:
    """Write ``figure`` as PNG quickly: zlib level 1 writes several times faster than the default for ~10% more bytes."""
    figure.savefig(path, format="png", dpi=100, pil_kwargs={"compress_level": 1})


def _quantiles(values: np.ndarray, fractions: Sequence[float]) -> list[np.ndarray]:
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


def neuron_bands_figure(data: RunFigureData, column: str, title: str, ylabel: str, log_y: bool = False) -> Figure:
    """Every layer in one axes: the median of ``column`` over its neurons (line) and the 10-90% band, by epoch."""
    fig, ax = _single(title, size=(9.0, 4.2))
    drawn = []
    for layer, (name, width) in enumerate(zip(data.names, data.widths)):
        low, middle, high = data.layer_band(layer, column)
        line = ax.plot(data.epochs, middle, lw=1.5, label=f"{name} ({width})")[0]
        ax.fill_between(data.epochs, low, high, color=line.get_color(), alpha=0.18, linewidth=0)
        drawn.extend((low, middle, high))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if log_y:
        values = np.concatenate(drawn) if drawn else np.empty(0)
        positive = values[np.isfinite(values) & (values > 0)]
        if positive.size:  # limits from the finite positive values: a diverged run (NaN, inf, 0) keeps its figure
            ax.set_yscale("log")
            ax.set_ylim(positive.min() / 1.2, positive.max() * 1.2)
    # A fixed place outside the data: loc="best" tests every candidate position against every path drawn.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="layer (neurons):\nmedian, 10-90%",
              title_fontsize=7, frameon=False)
    fig.subplots_adjust(left=0.1, right=0.74, bottom=0.12, top=0.9)
    return fig


def participation_figure(series: Mapping[str, pd.Series], title: str, ylabel: str = "participating fraction") -> Figure:
    """One line per named series (index: epoch)."""
    fig, ax = _single(title, size=(9.0, 4.2))
    for label, values in series.items():
        ax.plot(values.index, values.to_numpy(), label=label, lw=1.5 if label == "all" else 1.0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.subplots_adjust(left=0.1, right=0.74, bottom=0.12, top=0.9)
    return fig


def w_step_heatmap_figure(data: RunFigureData) -> Figure:
    """log10 ``w_step`` of every neuron (averaged into bins) by epoch, the layers stacked top to bottom."""
    grid, epochs = data.heatmap()
    fig, ax = _single("Weight step per neuron and epoch (log10 of the L2 norm)", size=(7.5, 4.8))
    with np.errstate(divide="ignore", invalid="ignore"):
        logged = np.log10(grid)
    logged[~np.isfinite(logged)] = np.nan
    image = ax.imshow(logged, aspect="auto", interpolation="nearest", cmap="viridis",
                      extent=(float(epochs[0]) if epochs else 0.0, float(data.epochs[-1] + 1), len(grid), 0))
    for rows in data.bin_slices[1:]:
        ax.axhline(rows.start, color="white", lw=0.8)
    ax.set_yticks([(rows.start + rows.stop) / 2 for rows in data.bin_slices], data.names, fontsize=7)
    ax.set_xlabel("epoch")
    fig.colorbar(image, ax=ax, shrink=0.85)
    fig.subplots_adjust(left=0.2, right=0.98, bottom=0.1, top=0.92)
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
    fig = Figure(figsize=(13, 2.9 * len(images) + 0.5), layout="constrained")  # shown full width: shapes legible
    axes = fig.subplots(len(images), 1, squeeze=False)[:, 0]
    for ax, (label, image) in zip(axes, images):
        ax.imshow(image)
        ax.set_axis_off()
        ax.set_title(label, fontsize=9)
    fig.suptitle(title)
    return fig


VERDICT_COLOURS = {"agrees": "#2e8b57", "disagrees": "#c0392b", "inconclusive": "#e0a526", "not testable": "#b0b0b0"}


def verdict_timeline_figure(table: pd.DataFrame, texts: Mapping[str, str]) -> Figure:
    """One panel per claim: epochs across, one band per optimizer, each verdict epoch a cell coloured by verdict
    (agrees / disagrees / inconclusive), reaching to the next verdict epoch."""
    claims = list(dict.fromkeys(table["claim"]))
    optimizers = list(dict.fromkeys(table["optimizer"]))
    fig = Figure(figsize=(9.5, 1.1 + 0.45 * len(optimizers) * len(claims) + 0.5 * len(claims)), layout="constrained")
    axes = fig.subplots(len(claims), 1, squeeze=False)[:, 0]
    epochs = sorted(set(table["epoch"]))
    edges = [0, *[e + 1 for e in epochs]]  # the cell of epoch e spans the epochs since the previous verdict
    for ax, claim in zip(axes, claims):
        for row, optimizer in enumerate(optimizers):
            cells = table[(table["claim"] == claim) & (table["optimizer"] == optimizer)]
            verdicts = dict(zip(cells["epoch"], cells["verdict"]))
            for index, epoch in enumerate(epochs):
                colour = VERDICT_COLOURS.get(verdicts.get(epoch, "not testable"), "#b0b0b0")
                ax.barh(row, edges[index + 1] - edges[index], left=edges[index], height=0.8, color=colour,
                        edgecolor="white", linewidth=0.5)
        ax.set_yticks(range(len(optimizers)), optimizers)
        ax.set_ylim(len(optimizers) - 0.4, -0.6)  # the first optimizer on top, as the tables list them
        ax.set_xlim(0, edges[-1])
        ax.set_title(f"({claim}) {texts.get(claim, '')}", fontsize=9, loc="left")
    axes[-1].set_xlabel("epoch")
    handles = [matplotlib.patches.Patch(color=c, label=v) for v, c in VERDICT_COLOURS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("Verdicts over epochs (95% intervals over seeds; overlap: inconclusive)")
    return fig
