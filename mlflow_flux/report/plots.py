"""The report's figures. Each function takes data and returns a matplotlib Figure; none fetches anything.

Figures are built with ``matplotlib.figure.Figure`` directly, so no pyplot state and no GUI backend is touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.patches
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = [
    "curves_by_group_figure",
    "stacked_images_figure",
    "verdict_timeline_figure",
    "VERDICT_COLOURS",
]

_LEGEND_ROWS = 16  # legend entries per column that fit beside a 4-inch-high axes at font size 7


def curves_by_group_figure(curves: Mapping[str, Sequence[pd.Series]], title: str, ylabel: str,
                           log_y: bool = False, xlabel: str = "epoch", log_x: bool = False) -> Figure:
    """One line per group (the mean of its series) with a band from the min to the max series.

    A fixed layout, and the legend in a fixed place beside the axes (a column per 16 groups, the figure widening
    with them): constrained layout's solver and ``loc="best"``, which tests every candidate place against every
    line and band drawn, were most of the report's figure time (with PNG level 1, 30 runs' seven figures went
    from 4.1 s to 1.8 s under a profiler)."""
    columns = max(1, math.ceil(len(curves) / _LEGEND_ROWS))  # a legend column beside the axes per 16 groups
    longest = max((len(str(label)) for label in curves), default=0)
    width = 1.1 + 5.3 + columns * (0.6 + 0.06 * longest)  # inches: tick labels, axes, legend (~0.06 in a character)
    fig = Figure(figsize=(width, 4))
    ax = fig.subplots()
    fig.subplots_adjust(left=1.1 / width, right=6.4 / width, bottom=0.13, top=0.9)
    positive_x = positive_y = False  # a log axis needs one positive value, or it cannot be drawn at all
    for label, series in curves.items():
        frame = pd.concat(list(series), axis=1)
        positive_x |= bool((np.asarray(frame.index, dtype=float) > 0).any())
        positive_y |= bool((frame.to_numpy(dtype=float) > 0).any())
        mean = frame.mean(axis=1)
        line = ax.plot(mean.index, mean.to_numpy(), label=label)[0]
        if frame.shape[1] > 1:
            ax.fill_between(mean.index, frame.min(axis=1), frame.max(axis=1), color=line.get_color(), alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log_y and positive_y:
        ax.set_yscale("log")
    if log_x and positive_x:
        ax.set_xscale("log")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, ncols=columns)
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


VERDICT_COLOURS = {"agrees": "#2e8b57", "disagrees": "#c0392b", "inconclusive": "#e0a526", "not testable": "#b0b0b0",
                   "not applicable": "#d9d9d9"}


def verdict_timeline_figure(table: pd.DataFrame, texts: Mapping[str, str], facet: str = "facet") -> Figure:
    """One panel per claim: epochs across, one band per value of the ``facet`` column, each verdict epoch a cell
    coloured by verdict (agrees / disagrees / inconclusive), reaching to the next verdict epoch."""
    claims = list(dict.fromkeys(table["claim"]))
    optimizers = list(dict.fromkeys(table[facet]))
    fig = Figure(figsize=(9.5, 1.1 + 0.45 * len(optimizers) * len(claims) + 0.5 * len(claims)), layout="constrained")
    axes = fig.subplots(len(claims), 1, squeeze=False)[:, 0]
    epochs = sorted(set(table["epoch"]))
    edges = [0, *[e + 1 for e in epochs]]  # the cell of epoch e spans the epochs since the previous verdict
    for ax, claim in zip(axes, claims):
        for row, optimizer in enumerate(optimizers):
            cells = table[(table["claim"] == claim) & (table[facet] == optimizer)]
            verdicts = dict(zip(cells["epoch"], cells["verdict"]))
            for index, epoch in enumerate(epochs):
                colour = VERDICT_COLOURS.get(verdicts.get(epoch, "not testable").split(" (")[0], "#b0b0b0")
                ax.barh(row, edges[index + 1] - edges[index], left=edges[index], height=0.8, color=colour,
                        edgecolor="white", linewidth=0.5)
        ax.set_yticks(range(len(optimizers)), optimizers)
        ax.set_ylim(len(optimizers) - 0.4, -0.6)  # the first value on top, as the tables list them
        ax.set_xlim(0, edges[-1])
        ax.set_title(f"({claim}) {texts.get(claim, '')}", fontsize=9, loc="left")
    axes[-1].set_xlabel("epoch")
    handles = [matplotlib.patches.Patch(color=c, label=v) for v, c in VERDICT_COLOURS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("Verdicts over epochs (95% t-interval of the paired differences; holds 0: inconclusive)")
    return fig
