"""Figures. Each function takes data and returns a matplotlib Figure; none fetches anything.

Figures are built with ``matplotlib.figure.Figure`` directly, so no pyplot state and no GUI backend is touched.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import matplotlib.patches
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .figure_data import RunFigureData

__all__ = [
    "run_figures",
    "save_png",
    "neuron_bands_figure",
    "participation_figure",
    "w_step_heatmap_figure",
    "curves_by_group_figure",
    "stacked_images_figure",
    "verdict_timeline_figure",
    "VERDICT_COLOURS",
]


def run_figures(data: RunFigureData) -> dict[str, Callable[[], Figure]]:
    """How to draw each figure of a watched run, keyed by file stem (none before the first snapshot): one figure
    that cannot be drawn then costs only itself."""
    if not data.epochs:
        return {}
    figures: dict[str, Callable[[], Figure]] = {
        "weight_fluctuations": lambda: neuron_bands_figure(
            data, "w_std", "Weight fluctuations: spread of each neuron's incoming weights", "w_std (log)", log_y=True),
        "bias_fluctuations": lambda: neuron_bands_figure(data, "bias", "Bias fluctuations", "bias"),
        "w_step_heatmap": lambda: w_step_heatmap_figure(data),
    }
    if data.participation:
        series = {name: pd.Series(values).sort_index() for name, values in data.participation.items()}
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
