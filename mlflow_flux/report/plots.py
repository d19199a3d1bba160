"""Figures. Each function takes data and returns a matplotlib Figure; none fetches anything.

Figures are built with ``matplotlib.figure.Figure`` directly, so no pyplot state and no GUI backend is touched.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = [
    "trace_figures",
    "neuron_lines_figure",
    "participation_figure",
    "w_step_heatmap_figure",
    "curves_by_group_figure",
    "stacked_images_figure",
]

_MAX_LINES = 48  # neurons drawn per panel: enough to see the spread, few enough to see anything
_MAX_COLUMNS = 400  # heatmap epochs: longer runs are averaged into this many bins


def _layers(trace: pd.DataFrame) -> list[str]:
    return list(pd.unique(trace["layer"].astype(str)))


def _panels(count: int, title: str) -> tuple[Figure, list]:
    cols = min(3, count)
    rows = -(-count // cols)
    fig = Figure(figsize=(4.2 * cols, 2.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[count:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes[:count]


def neuron_lines_figure(trace: pd.DataFrame, column: str, title: str, ylabel: str) -> Figure:
    """Per layer, ``column`` of a sample of neurons over epochs (thin) and the layer median (thick)."""
    layers = _layers(trace)
    fig, axes = _panels(len(layers), title)
    for ax, name in zip(axes, layers):
        wide = trace[trace["layer"].astype(str) == name].pivot(index="epoch", columns="neuron", values=column)
        step = max(1, wide.shape[1] // _MAX_LINES)
        ax.plot(wide.index, wide.iloc[:, ::step].to_numpy(), lw=0.5, alpha=0.5)
        ax.plot(wide.index, wide.median(axis=1).to_numpy(), color="black", lw=1.8, label="median")
        ax.set_title(f"{name} ({wide.shape[1]} neurons)", fontsize=9)
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


def w_step_heatmap_figure(trace: pd.DataFrame) -> Figure:
    """Per layer, a neuron x epoch heatmap of log10 ``w_step`` (epochs binned to at most 400 columns)."""
    layers = _layers(trace)
    fig, axes = _panels(len(layers), "Weight step per neuron and epoch (log10 of the L2 norm)")
    for ax, name in zip(axes, layers):
        wide = trace[trace["layer"].astype(str) == name].pivot(index="neuron", columns="epoch", values="w_step")
        values = wide.to_numpy(dtype=np.float64)
        epochs = wide.columns.to_numpy()
        if values.shape[1] > _MAX_COLUMNS:
            bins = np.array_split(np.arange(values.shape[1]), _MAX_COLUMNS)
            values = np.stack([np.nanmean(values[:, b], axis=1) for b in bins], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            logged = np.log10(values)
        logged[~np.isfinite(logged)] = np.nan
        image = ax.imshow(
            logged, aspect="auto", interpolation="nearest", cmap="viridis",
            extent=(float(epochs[0]), float(epochs[-1]) + 1, values.shape[0], 0),
        )
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("neuron")
    return fig


def trace_figures(trace: pd.DataFrame, summaries: pd.DataFrame) -> dict[str, Figure]:
    """The figures of one watched run, keyed by file stem."""
    figures = {
        "weight_fluctuations": neuron_lines_figure(
            trace, "w_std", "Weight fluctuations: spread (std of incoming weights) per neuron", "w_std"
        ),
        "bias_fluctuations": neuron_lines_figure(trace, "bias", "Bias fluctuations per neuron", "bias"),
        "w_step_heatmap": w_step_heatmap_figure(trace),
    }
    if not summaries.empty:
        columns = [c for c in summaries.columns if c.endswith("/participating_frac")]
        series = {c.rsplit("/", 1)[0]: summaries[c] for c in columns}
        figures["participation"] = participation_figure(series, "Participating neurons over epochs")
    return figures


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
