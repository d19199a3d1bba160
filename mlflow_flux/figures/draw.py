"""A watched run's own figures, drawn at ``close()`` from what :class:`~.data.RunFigureData` gathered: the spread and
bias of every layer's neurons over epochs, the participating fractions, and the weight-step heatmap. Each function
takes data and returns a matplotlib Figure; none fetches anything. Imported only by a run that draws figures
(matplotlib costs ~0.3 s of imports).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .data import RunFigureData

__all__ = ["run_figures", "save_png", "neuron_bands_figure", "participation_figure", "w_step_heatmap_figure"]


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


def save_png(figure: Figure, path, dpi: int = 100) -> None:
    """Write ``figure`` as PNG to ``path`` (a file name or a binary file) quickly: zlib level 1 writes several
    times faster than the default for ~10% more bytes. The report's figures are written by it too."""
    figure.savefig(path, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})


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
